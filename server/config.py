"""Server-side run settings, read and validated once from the Flower run config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.task import ConfigError, TaskConfig, _get
from server.strategy import AGGREGATORS


@dataclass(frozen=True)
class ServerConfig:
    """What the coordinator chose for this run (keys mirror `[tool.flwr.app.config]`)."""

    num_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    data_dir: str
    resume: str
    task: TaskConfig
    aggregation: str = "fedavg"
    num_malicious: int = 0
    trim_beta: float = 0.2
    update_norm_bound: float = 0.0
    round_timeout: float = 600.0
    secagg: bool = False
    secagg_options: dict[str, float] | None = None
    central_dp: bool = False
    central_dp_epsilon: float = 8.0
    central_dp_clip: float = 1.0
    dp_delta: float = 1e-5

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> ServerConfig:
        sc = cls(
            num_rounds=_get(cfg, "num-server-rounds", int, 10),
            fraction_train=_get(cfg, "fraction-train", float, 1.0),
            fraction_evaluate=_get(cfg, "fraction-evaluate", float, 0.5),
            min_nodes=_get(cfg, "min-nodes", int, 2),
            data_dir=_get(cfg, "data-dir", str, ""),
            resume=_get(cfg, "resume", str, ""),
            task=TaskConfig.from_run_config(cfg),
            aggregation=_get(cfg, "aggregation", str, "fedavg"),
            num_malicious=_get(cfg, "aggregation-malicious", int, 0),
            trim_beta=_get(cfg, "trim-beta", float, 0.2),
            update_norm_bound=_get(cfg, "update-norm-bound", float, 0.0),
            round_timeout=_get(cfg, "round-timeout", float, 600.0),
            secagg=_get(cfg, "secagg", bool, False),
            secagg_options={
                "neighbours": _get(cfg, "secagg-neighbours", int, 0),
                "threshold": _get(cfg, "secagg-threshold", int, 0),
                "clip_range": _get(cfg, "secagg-clip-range", float, 8.0),
                "quant_bits": _get(cfg, "secagg-quant-bits", int, 32),
                "max_weight": _get(cfg, "secagg-max-weight", float, 10000.0),
            },
            central_dp=_get(cfg, "central-dp", bool, False),
            central_dp_epsilon=_get(cfg, "central-dp-epsilon", float, 8.0),
            central_dp_clip=_get(cfg, "central-dp-clip", float, 1.0),
            dp_delta=_get(cfg, "dp-delta", float, 1e-5),
        )
        if sc.central_dp and (sc.central_dp_epsilon <= 0 or sc.central_dp_clip <= 0):
            raise ConfigError("run config central-dp-epsilon and central-dp-clip must be > 0, "
                              "e.g. central-dp-epsilon=8.0 central-dp-clip=1.0")
        if sc.central_dp and sc.aggregation != "fedavg":
            raise ConfigError(f"run config central-dp=true needs aggregation='fedavg' (the noise "
                              f"is calibrated for a mean), not {sc.aggregation!r}")
        if not 0 < sc.dp_delta < 1:
            raise ConfigError(f"run config dp-delta={sc.dp_delta}: must be in (0, 1), e.g. 1e-5")
        if sc.aggregation not in AGGREGATORS:
            raise ConfigError(f"run config aggregation={sc.aggregation!r}: use one of "
                              f"{', '.join(AGGREGATORS)}")
        if sc.num_malicious < 0:
            raise ConfigError(f"run config aggregation-malicious={sc.num_malicious}: must be >= 0")
        f = sc.num_malicious
        need = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(sc.aggregation)
        if need and sc.min_nodes < need:
            raise ConfigError(f"run config aggregation={sc.aggregation!r} with "
                              f"aggregation-malicious={f} needs min-nodes >= {need} "
                              f"(got {sc.min_nodes}); lower aggregation-malicious or add nodes")
        if not 0 <= sc.trim_beta < 0.5:
            raise ConfigError(f"run config trim-beta={sc.trim_beta}: must be in [0, 0.5), e.g. 0.2")
        if sc.update_norm_bound < 0:
            raise ConfigError(f"run config update-norm-bound={sc.update_norm_bound}: must be >= 0 "
                              "(0 = no bound)")
        o = sc.secagg_options or {}
        if sc.secagg and (o["clip_range"] <= 0 or o["max_weight"] <= 0):
            raise ConfigError("run config secagg-clip-range and secagg-max-weight must be > 0")
        if sc.secagg and not 8 <= o["quant_bits"] <= 48:
            raise ConfigError(f"run config secagg-quant-bits={o['quant_bits']}: use 8..48, e.g. 32")
        if sc.round_timeout <= 0:
            raise ConfigError(f"run config round-timeout={sc.round_timeout}: seconds, e.g. 600")
        if sc.num_rounds < 1:
            raise ConfigError(f"run config num-server-rounds={sc.num_rounds}: must be >= 1")
        for key, val in (
            ("fraction-train", sc.fraction_train),
            ("fraction-evaluate", sc.fraction_evaluate),
        ):
            if not 0.0 <= val <= 1.0:
                raise ConfigError(f"run config {key}={val}: must be in [0, 1], e.g. 0.5")
        if sc.fraction_train == 0.0:
            raise ConfigError("run config fraction-train=0.0: no node would train; use e.g. 1.0")
        if sc.min_nodes < 1:
            raise ConfigError(f"run config min-nodes={sc.min_nodes}: must be >= 1")
        return sc
