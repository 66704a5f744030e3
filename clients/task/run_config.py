"""The run-config schema: every key fedguard reads, with its default, type, range and help.

One schema for the server, the nodes, the policy facts and the docs: `RunConfig.parse` turns a
Flower run config into typed settings (one-line `ConfigError` naming the key and a valid value),
`defaults()` equals the app's `[tool.flwr.app.config]` (a test checks it), and
`python -m clients.task.run_config` prints the reference table of docs/configuration.md.
Keys the schema does not know belong to the task (e.g. the bundled tasks' `model`) and are
passed through untouched.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multikrum", "bulyan")
REPORT_LANGS = ("en", "zh")


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key and a valid value."""


def _key(default: Any, help: str, section: str, *, choices: tuple[str, ...] = (),
         lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, undecided: type | None = None) -> Any:
    """A schema entry. `undecided=bool` (or float) with default "" is a fact the coordinator
    must decide: "" means not declared, which a policy rule never treats as a pass."""
    meta = {"help": help, "section": section, "choices": choices, "lo": lo, "hi": hi,
            "lo_open": lo_open, "hi_open": hi_open, "undecided": undecided}
    return field(default=default, metadata=meta)


S_RUN, S_TRAIN, S_DP, S_UDP, S_SEC, S_AGG, S_POL, S_AIA, S_CN = (
    "run", "training", "dp", "user-level dp", "secure aggregation", "aggregation", "compliance",
    "compliance: EU AI Act", "compliance: China generative AI")


@dataclass(frozen=True)
class RunConfig:
    """Typed run settings; field `x_y` is run-config key `x-y`."""

    task: str = _key("clients.tasks.digits:task", "the task, 'module:attribute' (e.g. "
                     "'task:task' for a Task in the app's task.py)", S_RUN)
    num_server_rounds: int = _key(10, "federated rounds", S_RUN, lo=1)
    fraction_train: float = _key(1.0, "share of eligible nodes sampled to train each round",
                                 S_RUN, lo=0.0, hi=1.0, lo_open=True)
    federated_evaluation: bool = _key(True, "nodes evaluate the global model on their "
                                      "validation data inside the train exchange", S_RUN)
    min_nodes: int = _key(3, "nodes that must be eligible and take part in a round", S_RUN,
                          lo=1)
    node_wait_timeout: float = _key(120.0, "deployment: seconds to wait for min-nodes eligible "
                                    "nodes before the run is blocked", S_RUN, lo=0.0,
                                    lo_open=True)
    round_timeout: float = _key(600.0, "seconds to wait for replies; a silent node is left out "
                                "of that round", S_RUN, lo=0.0, lo_open=True)
    data_dir: str = _key("", "where the run store and checkpoints go (else $FEDGUARD_HOME, "
                         "else ./.fedguard)", S_RUN)
    resume: str = _key("", "a run id to continue from its last completed round", S_RUN)
    seed: int = _key(42, "initial weights, data split and partitions", S_RUN)
    local_epochs: int = _key(3, "local epochs per round", S_TRAIN, lo=1)
    lr: float = _key(0.1, "learning rate of the task's optimiser", S_TRAIN, lo=0.0, hi=10.0,
                     lo_open=True, hi_open=True)
    batch_size: int = _key(16, "local batch size (the expected batch under DP's Poisson "
                           "sampling)", S_TRAIN, lo=1)
    device: str = _key("auto", "where nodes train: auto (GPU when present), cpu or cuda",
                       S_TRAIN, choices=("auto", "cpu", "cuda"))
    dp: bool = _key(False, "sample-level DP-SGD (Opacus) on every node", S_DP)
    dp_epsilon: float = _key(8.0, "the run's target epsilon per node", S_DP, lo=0.0,
                             lo_open=True)
    dp_delta: float = _key(1e-5, "the run's target delta", S_DP, lo=0.0, hi=1.0, lo_open=True,
                           hi_open=True)
    dp_max_grad_norm: float = _key(1.0, "per-sample clipping norm", S_DP, lo=0.0, lo_open=True)
    dp_accountant: str = _key("rdp", "privacy accountant", S_DP, choices=("rdp", "prv"))
    dp_grad_mode: str = _key("auto", "Opacus per-sample gradients: auto (ew when the model's "
                             "layers allow it, else hooks), ew (expanded weights, the fastest "
                             "on CPU), hooks (the most layer types) or ghost", S_DP,
                             choices=("auto", "ew", "hooks", "ghost"))
    dp_secure_mode: bool = _key(False, "Opacus secure mode (needs torchcsprng)", S_DP)
    dp_privacy_unit: str = _key("record", "what DP protects (declared for policy P4)", S_DP,
                                choices=("record", "user"))
    dp_eval: str = _key("final", "federated evaluation under DP, as noisy sums: of the final "
                        "model only, after every round, or off (each release costs budget)",
                        S_DP, choices=("final", "every", "off"))
    dp_eval_noise: float = _key(10.0, "noise multiplier of each DP evaluation release", S_DP,
                                lo=0.0, lo_open=True)
    node_privacy_budget: float = _key(0.0, "simulation: every virtual node's lifetime epsilon "
                                      "across the data dir's runs (0 = new virtual nodes each "
                                      "run, budget dp-epsilon); real nodes set their own",
                                      S_DP, lo=0.0)
    central_dp: bool = _key(False, "user-level DP: nodes clip their whole update and add a "
                            "noise share (needs secagg)", S_UDP)
    central_dp_epsilon: float = _key(8.0, "user-level target epsilon", S_UDP, lo=0.0,
                                     lo_open=True)
    central_dp_clip: float = _key(1.0, "user-level L2 clip of a node's update", S_UDP, lo=0.0,
                                  lo_open=True)
    secagg: bool = _key(False, "secure aggregation (SecAgg+): the server learns only sums",
                        S_SEC)
    secagg_neighbours: int = _key(0, "share-graph degree (0 = derived from the node count)",
                                  S_SEC, lo=0)
    secagg_threshold: int = _key(0, "Shamir threshold (0 = derived)", S_SEC, lo=0)
    secagg_clip_range: float = _key(8.0, "per-coordinate clip of masked vectors", S_SEC,
                                    lo=0.0, lo_open=True)
    secagg_quant_bits: int = _key(32, "quantisation precision of masked vectors", S_SEC, lo=8,
                                  hi=48)
    secagg_max_weight: float = _key(10000.0, "public bound on a node's example count", S_SEC,
                                    lo=0.0, lo_open=True)
    aggregation: str = _key("fedavg", "aggregator (robust ones need individual updates)", S_AGG,
                            choices=AGGREGATIONS)
    aggregation_malicious: int = _key(0, "nodes assumed malicious (krum, multikrum, bulyan)",
                                      S_AGG, lo=0)
    trim_beta: float = _key(0.2, "fraction trimmed at each end (trimmed-mean)", S_AGG, lo=0.0,
                            hi=0.5, hi_open=True)
    update_norm_bound: float = _key(0.0, "reject updates further than this from the global "
                                    "model (0 = off)", S_AGG, lo=0.0)
    server_optimizer: str = _key("none", "server-side step on each round's aggregate, plain or "
                                 "secure (post-processing: free under DP): FedAvgM or FedAdam",
                                 S_AGG, choices=("none", "momentum", "adam"))
    server_lr: float = _key(1.0, "server optimiser's learning rate", S_AGG, lo=0.0,
                            lo_open=True)
    server_beta1: float = _key(0.9, "server momentum (momentum) or first-moment decay (adam)",
                               S_AGG, lo=0.0, hi=1.0, hi_open=True)
    server_beta2: float = _key(0.99, "adam: second-moment decay", S_AGG, lo=0.0, hi=1.0,
                               hi_open=True)
    server_eps: float = _key(1e-3, "adam: tau, bounds the step where the second moment is "
                             "small", S_AGG, lo=0.0, lo_open=True)
    policy_packs: str = _key("all", "comma-separated policy packs; 'all' (each pack applies "
                             "where its law does: a node in China, the EEA, a high-risk or "
                             "GenAI run), or 'none'", S_POL)
    policy_params: str = _key("", "threshold overrides, e.g. 'baseline.max-epsilon=8'", S_POL)
    purpose: str = _key("research", "research or commercial (licence checks)", S_POL,
                        choices=("research", "commercial"))
    report_lang: str = _key("en", "language of the stored compliance report", S_POL,
                            choices=REPORT_LANGS)
    manifest_dir: str = _key("", "simulation: <dir>/partition-<i>.toml per virtual node", S_POL)
    tls: bool = _key(False, "deployment uses TLS (set by fedguard-server run)", S_POL)
    node_auth: bool = _key(False, "deployment authenticates nodes (set by fedguard-server run)",
                           S_POL)
    server_country: str = _key("", "ISO country of the aggregation server", S_POL)
    server_dpf_certified: bool = _key(False, "a US server's operator is certified under the "
                                      "EU-US Data Privacy Framework", S_POL)
    aggregator_role: str = _key("", "who runs the aggregator for the nodes", S_POL,
                                choices=("", "processor", "joint-controller", "controller"))
    automated_decisions: bool = _key(False, "the model feeds automated decisions", S_POL)
    human_review: bool = _key(False, "those decisions have human review", S_POL)
    high_risk: bool = _key(False, "EU AI Act high-risk use (Annex III)", S_AIA)
    high_risk_category: str = _key("", "Annex III category, e.g. creditworthiness", S_AIA)
    ai_act_role: str = _key("", "provider or deployer of the AI system", S_AIA,
                            choices=("", "provider", "deployer", "both"))
    deployer_public_service: Any = _key("", "the deployer is a public body or provides a public "
                                        "service (Art. 27)", S_AIA, undecided=bool)
    data_governance_doc: str = _key("", "Art. 10 data governance documentation", S_AIA)
    risk_management_doc: str = _key("", "Art. 9 risk management system", S_AIA)
    technical_doc: str = _key("", "Art. 11 / Annex IV technical documentation", S_AIA)
    human_oversight_doc: str = _key("", "Art. 14 human oversight design", S_AIA)
    doc_retention_years: int = _key(0, "years the documentation is kept (Art. 18)", S_AIA, lo=0)
    system_logging: bool = _key(False, "the deployed system logs events (Art. 12)", S_AIA)
    log_retention_days: int = _key(0, "days the deployed system's logs are kept", S_AIA, lo=0)
    deployer_procedures: str = _key("", "Art. 26 deployer procedures", S_AIA)
    fria_ref: str = _key("", "Art. 27 fundamental-rights impact assessment", S_AIA)
    gpai_provider_eu: bool = _key(False, "an EU general-purpose AI model provider", S_AIA)
    copyright_policy: str = _key("", "Art. 53(1)(c) copyright policy", S_AIA)
    training_summary: str = _key("", "Art. 53(1)(d) public training-content summary", S_AIA)
    gpai_technical_doc: str = _key("", "Art. 53(1)(a) technical documentation", S_AIA)
    gpai_downstream_info: str = _key("", "Art. 53(1)(b) information for downstream providers",
                                     S_AIA)
    gpai_open_source: bool = _key(False, "released under a free and open-source licence",
                                  S_AIA)
    gpai_systemic_risk: Any = _key("", "the GPAI model has systemic risk (Art. 51)", S_AIA,
                                   undecided=bool)
    gpai_training_flop: Any = _key("", "training compute in FLOP (Art. 51(2))", S_AIA,
                                   undecided=float)
    gpai_systemic_risk_measures: str = _key("", "Art. 55 measures", S_AIA)
    genai_public_cn: bool = _key(False, "a public generative-AI service in China", S_CN)
    algorithm_filing: str = _key("", "algorithm filing number", S_CN)
    content_labels: bool = _key(False, "AI-generated content is labelled", S_CN)
    base_model: str = _key("", "the foundation model training starts from", S_CN)
    base_model_source: str = _key("", "where the base model was obtained", S_CN)
    base_model_licence: str = _key("", "the base model's licence (SPDX)", S_CN)

    # --- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, cfg: Mapping[str, Any]) -> RunConfig:
        """Typed, range-checked settings; absent keys take the schema's defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            values[f.name] = _coerce(key, cfg.get(key, f.default), f.default, f.metadata)
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        """Rules that span keys: a run that cannot give its guarantee is refused."""
        if self.central_dp and not self.secagg:
            raise ConfigError(
                "run config central-dp=true needs secagg=true: each node adds only a share of "
                "the noise, so without secure aggregation the server sees every update with too "
                "little noise; set secagg=true (or use dp=true for sample-level DP)")
        if self.central_dp and self.aggregation != "fedavg":
            raise ConfigError(f"run config central-dp=true needs aggregation='fedavg' (the noise "
                              f"is calibrated for a sum), not {self.aggregation!r}")
        f = self.aggregation_malicious
        need = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(
            self.aggregation)
        if need and self.min_nodes < need:
            raise ConfigError(f"run config aggregation={self.aggregation!r} with "
                              f"aggregation-malicious={f} needs min-nodes >= {need} (got "
                              f"{self.min_nodes}); lower aggregation-malicious or add nodes")
        if self.dp_secure_mode and self.dp:
            raise ConfigError(
                "run config dp-secure-mode=true: Opacus secure mode needs torchcsprng, which has "
                "no build for this torch, so fedguard would fall back to a seeded generator; set "
                "dp-secure-mode=false (noise is drawn from a secrets-seeded generator)")

    def to_mapping(self) -> dict[str, Any]:
        """The kebab-case run config with every default filled in."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @property
    def secagg_options(self) -> dict[str, float]:
        return {"neighbours": self.secagg_neighbours, "threshold": self.secagg_threshold,
                "clip_range": self.secagg_clip_range, "quant_bits": self.secagg_quant_bits,
                "max_weight": self.secagg_max_weight}


def typed(key: str, value: Any, default: Any, error: type[Exception]) -> Any:
    """`value` of the default's type (an int is accepted for a float; a bool is never a
    number), else `error` naming the key and an example."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"run config {key}={value!r}: expected {kind.__name__}, e.g. "
                    f"{key}={default!r}")
    if kind is float and not math.isfinite(value):
        raise error(f"run config {key}={value!r}: must be a finite number, e.g. "
                    f"{key}={default!r}")
    return value


def _coerce(key: str, value: Any, default: Any, meta: Mapping[str, Any]) -> Any:
    undecided = meta.get("undecided")
    if undecided is not None:
        if value == "" or value is None:
            return ""
        if undecided is bool and isinstance(value, bool):
            return value
        if undecided is float and isinstance(value, int | float) and not isinstance(
                value, bool) and math.isfinite(value):
            return float(value)
        what = "true or false" if undecided is bool else "a number"
        raise ConfigError(f"run config {key}={value!r}: expected {what}, or \"\" while "
                          "undecided")
    value = typed(key, value, default, ConfigError)
    kind = type(default)
    if kind is str:
        value = value.strip()
        if meta["choices"] and value.lower() not in meta["choices"]:
            raise ConfigError(f"run config {key}={value!r}: use one of "
                              f"{', '.join(meta['choices'])}")
        if meta["choices"]:
            value = value.lower()
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)):
        raise ConfigError(f"run config {key}={value}: must be {'>' if meta['lo_open'] else '>='}"
                          f" {lo:g}, e.g. {key}={default!r}")
    if hi is not None and (value > hi or (meta["hi_open"] and value == hi)):
        raise ConfigError(f"run config {key}={value}: must be {'<' if meta['hi_open'] else '<='}"
                          f" {hi:g}, e.g. {key}={default!r}")
    return value


def defaults() -> dict[str, Any]:
    """Every schema key with its default, kebab-case."""
    return {f.name.replace("_", "-"): f.default for f in fields(RunConfig)
            if f.default is not MISSING}


def markdown_table() -> str:
    """The configuration reference (docs/configuration.md is this output)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    section = ""
    for f in fields(RunConfig):
        meta = f.metadata
        if meta["section"] != section:
            section = meta["section"]
            lines.append(f"| **{section}** | | |")
        default = f.default
        shown = ("true" if default else "false") if isinstance(default, bool) else (
            f'"{default}"' if isinstance(default, str) else f"{default:g}"
            if isinstance(default, float) else str(default))
        extra = f" ({' / '.join(meta['choices'])})" if meta["choices"] else ""
        lines.append(f"| `{f.name.replace('_', '-')}` | `{shown}` | {meta['help']}{extra} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
