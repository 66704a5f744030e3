"""Sample-level DP-SGD for one node, built on Opacus, with ledger-backed accounting.

The one entry point for a ClientApp is :class:`DPSGDSession`::

    cfg = DPSGDConfig.from_run_config(context.run_config)
    check_private_model(model)                 # one-line DPConfigError naming the layer
    session = DPSGDSession(ledger, cfg, run_id, source="hospital-a/ehr-2026",
                           fingerprint=dataset_fingerprint(x, y), num_examples=len(x),
                           batch_size=32, epochs_per_round=2, rounds=10, metrics=spec)
    decision = session.reserve(round)          # before spending compute
    if not decision.allowed: ...               # reply with decision.message
    training = session.make_private(model, optimizer, loader, criterion)
    ...train with training.model / .optimizer / .loader / .criterion...
    session.settle(decision, training)         # BEFORE the update leaves the node
    noisy = session.release_metrics(decision, losses, {"correct": hits})  # or cancel_metrics
    weights = training.finish().state_dict()   # plain module, Opacus hooks removed

The budget is the node's own, read from its ledger for the data source; the run's target
``(dp-epsilon, dp-delta)`` only sets the noise. The noise multiplier is calibrated once per run
(cached in the ledger) for the run's whole planned length, so every round of the run uses the
same noise even though each Flower message runs in a fresh process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import secrets
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from privacy.dp.accounting import ACCOUNTANTS, AccountingError, Release, calibrate_noise
from privacy.dp.ledger import Budget, BudgetDecision, PrivacyLedger, no_budget_message
from privacy.dp.metrics import MetricsSpec, NoisyMetrics, noise_sums, release_metrics

__all__ = [
    "GRAD_SAMPLE_MODES",
    "ClipMonitor",
    "DPConfigError",
    "DPSGDConfig",
    "DPSGDSession",
    "PrivateTraining",
    "check_private_model",
    "make_private",
    "plan_release",
]

#: Opacus per-sample-gradient engines: "ew" (torch's expanded weights: per-sample gradients
#: inside autograd, no summed gradient computed and thrown away) was the fastest on CPU for the
#: bundled MLP and CNN (scripts/bench_privacy.py); "hooks" supports the most layer types;
#: "ghost" (fast gradient clipping) saves memory at the cost of a second backward pass.
#: "auto" takes "ew" when every trainable layer of the model is one expanded weights cover,
#: "hooks" otherwise, so a task's own layers work without the user choosing an engine.
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "hooks", "ghost", "ew")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class DPConfigError(ValueError):
    """A DP-SGD setting is invalid or cannot be honoured (message is one line)."""


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise DPConfigError(f"run config {key}={value!r}: must be true or false")


def _parse_float(key: str, value: Any, hint: str) -> float:
    if isinstance(value, bool):
        raise DPConfigError(f"run config {key}={value!r}: must be a number; {hint}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DPConfigError(f"run config {key}={value!r}: must be a number; {hint}") from None
    if not math.isfinite(out):
        raise DPConfigError(f"run config {key}={value!r}: must be finite; {hint}")
    return out


@dataclass
class DPSGDConfig:
    """DP-SGD settings of a run. ``target_epsilon`` is what the run's noise is calibrated to.

    ``poisson_sampling=False`` breaks the assumption behind the accounting; keep it True
    for any release whose epsilon you intend to report.
    """

    enabled: bool = False
    target_epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"
    secure_mode: bool = False
    poisson_sampling: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise DPConfigError(
                f"run config dp-epsilon={self.target_epsilon}: must be > 0; e.g. 3.0"
            )
        if not 0 < self.delta < 1:
            raise DPConfigError(f"run config dp-delta={self.delta}: must be in (0, 1); e.g. 1e-5")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise DPConfigError(
                f"run config dp-max-grad-norm={self.max_grad_norm}: must be > 0; e.g. 1.0"
            )
        if self.accountant not in ACCOUNTANTS:
            raise DPConfigError(
                f"run config dp-accountant={self.accountant!r}: use one of "
                f"{', '.join(ACCOUNTANTS)}"
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise DPConfigError(
                f"run config dp-grad-mode={self.grad_sample_mode!r}: use one of "
                f"{', '.join(GRAD_SAMPLE_MODES)}"
            )
        if self.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            # Opacus' secure mode draws noise from torchcsprng; without it the noise would
            # silently come from a seeded PRNG, so refuse rather than record a stronger claim.
            raise DPConfigError(
                "run config dp-secure-mode=true needs torchcsprng, which has no build for "
                "this torch: set dp-secure-mode=false (noise then comes from a torch "
                "generator seeded from the OS CSPRNG)"
            )

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> DPSGDConfig:
        """Read the kebab-case ``dp-*`` keys of a Flower run config; absent keys use defaults."""
        d = cls()
        kwargs: dict[str, Any] = {}
        if "dp" in cfg:
            kwargs["enabled"] = _parse_bool("dp", cfg["dp"])
        if "dp-epsilon" in cfg:
            kwargs["target_epsilon"] = _parse_float("dp-epsilon", cfg["dp-epsilon"], "e.g. 3.0")
        if "dp-delta" in cfg:
            kwargs["delta"] = _parse_float("dp-delta", cfg["dp-delta"], "e.g. 1e-5")
        if "dp-max-grad-norm" in cfg:
            kwargs["max_grad_norm"] = _parse_float(
                "dp-max-grad-norm", cfg["dp-max-grad-norm"], "e.g. 1.0"
            )
        for key, attr in (("dp-accountant", "accountant"), ("dp-grad-mode", "grad_sample_mode")):
            if key in cfg:
                value = cfg[key]
                if not isinstance(value, str):
                    raise DPConfigError(f"run config {key}={value!r}: must be a string")
                kwargs[attr] = value.strip().lower()
        if "dp-secure-mode" in cfg:
            kwargs["secure_mode"] = _parse_bool("dp-secure-mode", cfg["dp-secure-mode"])
        return cls(**{**d.__dict__, **kwargs})


def plan_release(
    num_examples: int, batch_size: int, epochs_per_round: int, rounds: int, cfg: DPSGDConfig
) -> tuple[float, int, int]:
    """``(sample_rate, steps_per_round, total_steps)`` exactly as Opacus will run them.

    Opacus' Poisson loader keeps the number of batches of the original loader,
    ``ceil(n / batch_size)``, and samples each record with probability ``1 / that``.
    """
    for name, value in (
        ("num_examples", num_examples),
        ("batch_size", batch_size),
        ("epochs_per_round", epochs_per_round),
        ("rounds", rounds),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DPConfigError(f"{name}={value!r}: must be an integer >= 1")
    batches = math.ceil(num_examples / batch_size)
    sample_rate = 1.0 / batches
    if not cfg.poisson_sampling:
        warnings.warn(
            "poisson_sampling=False: the reported epsilon assumes Poisson sampling",
            stacklevel=2,
        )
    steps_per_round = epochs_per_round * batches
    return sample_rate, steps_per_round, steps_per_round * rounds


@dataclass
class ClipMonitor:
    """Counts how many per-sample gradients Opacus clipped.

    It wraps the DP optimizer's ``pre_step`` (which runs once per optimizer step, just
    before clipping): in "hooks" and "ew" modes it recomputes each sample's flat L2 norm from
    ``p.grad_sample`` exactly as Opacus does; in "ghost" mode it reads the norms Opacus
    stored in ``model.per_sample_gradient_norms`` during the first backward pass. A sample
    counts as clipped when its norm exceeds ``max_grad_norm`` (Opacus scales it by
    ``max_grad_norm / (norm + 1e-6)`` then).

    Recomputing the norms costs about a tenth of a DP step on the CNN (Opacus computes them
    again and keeps none), so only every ``every``-th step is observed, the first one
    always: the fraction is a sample of the round's steps, a diagnostic that stays on the node.
    """

    max_grad_norm: float
    clipped: int = 0
    seen: int = 0
    norms_sum: float = 0.0
    every: int = 4
    steps: int = 0

    def due(self) -> bool:
        """Whether this optimizer step is one the monitor observes (counts the step)."""
        self.steps += 1
        return (self.steps - 1) % self.every == 0

    def observe(self, norms: torch.Tensor) -> None:
        norms = norms.detach().reshape(-1)
        self.clipped += int((norms > self.max_grad_norm).sum())
        self.seen += int(norms.numel())
        self.norms_sum += float(norms.sum())

    def reset(self) -> None:
        self.clipped, self.seen, self.norms_sum = 0, 0, 0.0

    @property
    def fraction(self) -> float | None:
        """Clipped / seen since the last reset, or None before any sample was seen."""
        return self.clipped / self.seen if self.seen else None

    @property
    def mean_norm(self) -> float | None:
        return self.norms_sum / self.seen if self.seen else None


def _hooks_norms(optimizer: Any) -> torch.Tensor | None:
    samples = optimizer.grad_samples
    if not samples or len(samples[0]) == 0:
        return None
    per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in samples]
    return torch.stack(per_param, dim=1).norm(2, dim=1)


def _attach_monitor(model: Any, optimizer: Any, mode: str, monitor: ClipMonitor) -> None:
    original: Callable[..., Any] = optimizer.pre_step

    def pre_step(closure: Callable[[], float] | None = None) -> Any:
        norms = None
        try:
            if monitor.due():
                norms = (model.per_sample_gradient_norms if mode == "ghost"
                         else _hooks_norms(optimizer))
        except (ValueError, AttributeError, TypeError):
            norms = None  # no backward happened yet; Opacus itself will complain
        if norms is not None:
            monitor.observe(norms)
        out = original(closure)
        if mode == "ew":  # clipped and noised: expanded weights refuse a forward while the
            for p in optimizer.params:  # last step's per-sample gradients are still attached
                p.grad_sample = None
        return out

    optimizer.pre_step = pre_step


@dataclass
class PrivateTraining:
    """The objects to train with (use these, not the originals) plus DP bookkeeping."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    criterion: Any
    engine: PrivacyEngine
    noise_multiplier: float
    sample_rate: float
    rng: str
    monitor: ClipMonitor = field(repr=False, default_factory=lambda: ClipMonitor(1.0))
    grad_sample_mode: str = "hooks"  # the engine used ("auto" resolved)

    def clipped_fraction(self) -> float | None:
        """Fraction of per-sample gradients clipped since the last reset (see ClipMonitor)."""
        return self.monitor.fraction

    @property
    def steps_taken(self) -> int:
        """Noisy optimizer steps Opacus' accountant has counted."""
        return sum(int(n) for _, _, n in self.engine.accountant.history)

    def finish(self) -> nn.Module:
        """Remove Opacus' hooks and return the plain trained module (the caller's original).

        Use it to read weights (``state_dict`` keys then lack Opacus' ``_module.`` prefix)
        or to evaluate without per-sample-gradient overhead.
        """
        if hasattr(self.model, "to_standard_module"):
            return self.model.to_standard_module()
        return self.model

    def release(self, min_steps: int = 0) -> Release | None:
        """The mechanism actually run: Opacus' history, at least ``min_steps`` steps.

        ``min_steps`` lets the caller count planned steps the loop skipped (e.g. empty
        Poisson batches); counting more steps only over-states epsilon, which is safe.
        """
        steps = max(self.steps_taken, int(min_steps))
        if steps == 0:
            return None
        return Release(self.noise_multiplier, self.sample_rate, steps)


def _secret_generator() -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG, independent of any run-config seed.

    Nodes seed torch's global RNG from the run config for reproducibility, and the server
    knows that seed: noise or Poisson batches drawn from the global RNG could be replayed
    and subtracted. So DP randomness never comes from the global RNG.
    """
    return torch.Generator().manual_seed(secrets.randbits(63))


def _engine(
    accountant: str, secure_mode: bool
) -> tuple[PrivacyEngine, torch.Generator | None, str]:
    """PrivacyEngine whose noise and Poisson sampling use unpredictable randomness.

    Returns ``(engine, noise_generator to pass to make_private, description)``. Secure mode is
    Opacus' own (torchcsprng; DPSGDConfig refuses it when torchcsprng is missing); otherwise
    a torch generator seeded from the OS CSPRNG: unpredictable to the server, but a Mersenne
    Twister, not a CSPRNG, and the description says so.
    """
    if secure_mode:
        engine = PrivacyEngine(accountant=accountant, secure_mode=True)
        return engine, None, "torchcsprng /dev/urandom (Opacus secure mode)"
    engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    generator = _secret_generator()
    engine.secure_rng = generator  # Opacus' Poisson loader takes its generator from here
    return engine, generator, "torch.Generator seeded from secrets"


_FIXES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "replace with GroupNorm (opacus ModuleValidator.fix)"),
    (nn.LSTM, "replace with opacus DPLSTM (opacus ModuleValidator.fix)"),
    (nn.GRU, "replace with opacus DPGRU (opacus ModuleValidator.fix)"),
    (nn.RNN, "replace with opacus DPRNN (opacus ModuleValidator.fix)"),
    (nn.MultiheadAttention, "replace with opacus DPMultiheadAttention (ModuleValidator.fix)"),
)


def check_private_model(model: nn.Module) -> None:
    """Refuse a model DP-SGD cannot train privately, naming its first offending layer.

    Looks at every module, not only trainable ones (Opacus' validator skips a BatchNorm
    without affine parameters, yet it still mixes the examples of a batch and its running
    statistics are sent with the weights without noise). Also refuses any other module with
    persistent buffers: they travel in the state dict unnoised.
    """
    for name, module in model.named_modules():
        where = f"{type(module).__name__} at {name or '<root>'!r}"
        for cls, fix in _FIXES:
            if isinstance(module, cls):
                raise DPConfigError(f"model cannot be trained with DP-SGD: {where}: {fix}")
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (
            module.track_running_stats
        ):
            raise DPConfigError(
                f"model cannot be trained with DP-SGD: {where}: set track_running_stats=False "
                "(opacus ModuleValidator.fix)"
            )
        persistent = [
            b for b, _ in module.named_buffers(recurse=False)
            if b not in module._non_persistent_buffers_set
        ]
        if persistent:
            raise DPConfigError(
                f"model cannot be trained with DP-SGD: {where} has buffer {persistent[0]!r}, "
                "sent with the weights without noise: remove it or register it with "
                "persistent=False"
            )


_EW_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.GroupNorm,
              nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _first_non_ew_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first trainable layer torch's expanded weights cannot expand, if any."""
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)) and not isinstance(
                module, _EW_LAYERS):
            return name, module
    return None


def _check_expanded_weights(model: nn.Module) -> None:
    """Expanded weights cover fewer layer types than hooks: refuse early, naming the layer."""
    found = _first_non_ew_layer(model)
    if found is not None:
        name, module = found
        raise DPConfigError(
            f"dp-grad-mode='ew' does not support {type(module).__name__} at "
            f"{name or '<root>'!r}: set dp-grad-mode='hooks' (or 'auto')")


def resolve_grad_sample_mode(mode: str, model: nn.Module) -> str:
    """The engine to use: "auto" is "ew" (the fastest on CPU) when the model allows it."""
    if mode != "auto":
        return mode
    return "ew" if _first_non_ew_layer(model) is None else "hooks"


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    noise_multiplier: float,
    cfg: DPSGDConfig,
    criterion: nn.Module | None = None,
) -> PrivateTraining:
    """Wrap model/optimizer/loader (and, in ghost mode, the criterion) with Opacus."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise DPConfigError(f"noise_multiplier={noise_multiplier}: must be > 0; calibrate it")
    check_private_model(model)
    errors = ModuleValidator.validate(model, strict=False)  # e.g. a model in eval mode
    if errors:
        raise DPConfigError(
            f"model cannot be trained with DP-SGD: {str(errors[0]).splitlines()[0]}"
        )
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    mode = resolve_grad_sample_mode(cfg.grad_sample_mode, model)
    if mode in ("hooks", "ghost"):
        # Opacus' hooks read the gradients at each layer's output; torch warns on every
        # backward of a model whose input needs no gradient (token ids, data), which is
        # exactly how Opacus means them to be used: say nothing.
        warnings.filterwarnings("ignore", message="Full backward hook is firing",
                                category=UserWarning)
    if mode == "ew":
        _check_expanded_weights(model)
    with warnings.catch_warnings():
        # Opacus warns about its RNG on every engine; PrivateTraining.rng reports it instead.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine, noise_generator, rng = _engine(cfg.accountant, cfg.secure_mode)
        out = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=cfg.poisson_sampling,
            noise_generator=noise_generator,
            grad_sample_mode=mode,
        )
    if mode == "ghost":
        p_model, p_optimizer, p_criterion, p_loader = out
    else:
        p_model, p_optimizer, p_loader = out
        p_criterion = criterion
    monitor = ClipMonitor(cfg.max_grad_norm)
    _attach_monitor(p_model, p_optimizer, mode, monitor)
    return PrivateTraining(
        model=p_model,
        optimizer=p_optimizer,
        loader=p_loader,
        criterion=p_criterion,
        engine=engine,
        noise_multiplier=float(noise_multiplier),
        sample_rate=1.0 / len(p_loader),
        rng=rng,
        monitor=monitor,
        grad_sample_mode=mode,
    )


#: Calibrations made in this process, by calibration key (run, accountant, target, delta,
#: sample rate, steps, metric releases): a simulation process serving many virtual nodes of one
#: run calibrates once per sample rate, not once per node (0.1-5 s each). The node's ledger
#: still records the value, so its later rounds and processes use the same noise.
_CALIBRATIONS: dict[str, float] = {}


class DPSGDSession:
    """One node's DP-SGD for one run on one data source: calibrate, reserve, wrap, settle.

    The budget is the node's lifetime ``(epsilon, delta)`` for ``source``, set in the ledger
    by the node operator; a source without one is refused at :meth:`reserve`. The run's noise
    is calibrated to the run's target epsilon at ``min(run delta, node delta)``, so the run's
    guarantee holds at the delta the server asked for and at the node's own. With ``metrics``
    the calibration also composes the run's ``metric_releases`` planned metric releases (e.g.
    one federated evaluation of the final model), so DP-SGD noise plus the noisy metrics meet
    the run's target together.
    """

    def __init__(
        self,
        ledger: PrivacyLedger,
        cfg: DPSGDConfig,
        run_id: str | int,
        source: str,
        fingerprint: str,
        *,
        num_examples: int,
        batch_size: int,
        epochs_per_round: int,
        rounds: int,
        metrics: MetricsSpec | None = None,
        metric_releases: int = 1,
    ) -> None:
        if not cfg.enabled:
            raise DPConfigError("run config dp=false: DP-SGD is off, so train without a session")
        if isinstance(metric_releases, bool) or not isinstance(
            metric_releases, int
        ) or metric_releases < (1 if metrics else 0):
            raise DPConfigError(
                f"metric_releases={metric_releases!r}: must be an integer >= 1 with metrics"
            )
        self.ledger = ledger
        self.cfg = cfg
        self.run_id = str(run_id)
        self.source = source
        self.fingerprint = fingerprint
        self.num_examples = num_examples
        self.rounds = rounds
        self.metrics = metrics
        self.metric_releases = metric_releases if metrics else 0
        self.budget: Budget | None = ledger.budget(source)
        self.sample_rate, self.steps_per_round, self.total_steps = plan_release(
            num_examples, batch_size, epochs_per_round, rounds, cfg
        )
        self._noise: float | None = None

    @property
    def calibration_delta(self) -> float:
        """The delta the run's target is calibrated at: the stricter of run and node."""
        if self.budget is None:
            raise DPConfigError(no_budget_message(self.source, "DP-SGD"))
        return min(self.cfg.delta, self.budget.delta)

    def _fixed(self) -> list[Release]:
        if self.metrics is None:
            return []
        return [self.metrics.release()] * self.metric_releases

    @property
    def calibration_key(self) -> str:
        """Everything the calibrated noise depends on; a change means a new calibration."""
        c = self.cfg
        m = self.metrics
        parts = (
            "dp-sgd/2", self.run_id, c.accountant, repr(c.target_epsilon),
            repr(self.calibration_delta), repr(self.sample_rate), str(self.total_steps),
            repr(m.noise_multiplier) if m else "-",
            str(self.metric_releases),
        )
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @property
    def noise_multiplier(self) -> float:
        """Noise reaching the run's target over the whole run; calibrated once per run."""
        if self._noise is None:
            key = self.calibration_key
            cached = self.ledger.cached_noise(key)
            recorded = cached is not None
            if cached is None:
                cached = _CALIBRATIONS.get(key)
            if cached is None:
                try:
                    cached = calibrate_noise(
                        self.cfg.target_epsilon,
                        self.calibration_delta,
                        self.sample_rate,
                        self.total_steps,
                        self.cfg.accountant,
                        fixed=self._fixed(),
                    )
                except AccountingError as exc:
                    raise DPConfigError(f"cannot calibrate DP-SGD noise: {exc}") from exc
                if len(_CALIBRATIONS) >= 256:
                    _CALIBRATIONS.clear()
                _CALIBRATIONS[key] = cached
            if not recorded:
                self.ledger.store_noise(key, cached)
                cached = self.ledger.cached_noise(key) or cached  # first writer wins
            self._noise = cached
        return self._noise

    def planned_release(self) -> Release:
        """The DP-SGD release one round of this run makes."""
        return Release(self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def _reserve(self, round: int, releases: list[tuple[str, Release]]) -> BudgetDecision:
        return self.ledger.reserve(
            self.source, self.run_id, round, releases, num_records=self.num_examples,
            fingerprint=self.fingerprint, accountant=self.cfg.accountant,
        )

    def _refusal(self, round: int) -> BudgetDecision | None:
        if self.budget is not None:
            return None
        return BudgetDecision(False, 0.0, 0.0, None, None, no_budget_message(
            self.source, f"round {round}"))

    def reserve(self, round: int, with_metrics: bool = False) -> BudgetDecision:
        """Reserve one round's DP-SGD release (and, `with_metrics`, one metric release).

        Atomic against concurrent runs on the same node. On success
        ``decision.reservations`` is ``(dp-sgd id[, metrics id])``.
        """
        if (refusal := self._refusal(round)) is not None:
            return refusal
        releases = [("dp-sgd", self.planned_release())]
        if with_metrics:
            if self.metrics is None:
                raise DPConfigError("this session has no metrics spec: pass metrics=...")
            releases.append(("metrics", self.metrics.release()))
        return self._reserve(round, releases)

    def reserve_metrics(self, round: int) -> BudgetDecision:
        """Reserve one more metric release (e.g. federated evaluation) for ``round``."""
        if self.metrics is None:
            raise DPConfigError("this session has no metrics spec: pass metrics=MetricsSpec(...)")
        if (refusal := self._refusal(round)) is not None:
            return refusal
        return self._reserve(round, [("metrics", self.metrics.release())])

    def make_private(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader,
        criterion: nn.Module | None = None,
    ) -> PrivateTraining:
        """:func:`make_private` with this run's calibrated noise; checks the loader's size."""
        training = make_private(
            model, optimizer, loader, self.noise_multiplier, self.cfg, criterion
        )
        if not math.isclose(training.sample_rate, self.sample_rate, rel_tol=1e-12):
            raise DPConfigError(
                f"loader gives sample rate {training.sample_rate:.6g} but the run was planned "
                f"with {self.sample_rate:.6g}: build the loader with the planned batch size"
            )
        return training

    @staticmethod
    def _reservation(decision: BudgetDecision, index: int, what: str) -> int:
        if not decision.allowed or len(decision.reservations) <= index:
            raise DPConfigError(f"no {what} reservation in this decision: reserve it first")
        return decision.reservations[index]

    def settle(self, decision: BudgetDecision, training: PrivateTraining) -> Release:
        """Durably record the DP-SGD release actually made; call before the update is sent.

        Settles at least the planned steps of a round, so skipped (empty) batches never lead
        to under-counting; more steps than reserved is refused by the ledger.
        """
        release = training.release(min_steps=self.steps_per_round)
        assert release is not None  # min_steps >= 1
        self.ledger.settle(self._reservation(decision, 0, "DP-SGD"), release)
        return release

    def _metrics_index(self, decision: BudgetDecision) -> int:
        return len(decision.reservations) - 1  # the last one: after dp-sgd, or alone

    def release_metrics(
        self,
        decision: BudgetDecision,
        losses: Any,
        values: Mapping[str, Any],
        rng: Any = None,
    ) -> NoisyMetrics:
        """Noisy metric sums for this round's metrics reservation, settled before returning."""
        if self.metrics is None:
            raise DPConfigError("this session has no metrics spec: pass metrics=MetricsSpec(...)")
        rid = self._reservation(decision, self._metrics_index(decision), "metrics")
        noisy = release_metrics(losses, values, self.metrics, rng)
        self.ledger.settle(rid, noisy.release)
        return noisy

    def release_metric_sums(self, decision: BudgetDecision,
                            exact: Mapping[str, float]) -> NoisyMetrics:
        """Noisy versions of sums the caller bounded (see `metrics.noise_sums`), settled in
        the ledger before they are returned (so before they can leave the node)."""
        if self.metrics is None:
            raise DPConfigError("this session has no metrics spec: pass metrics=MetricsSpec(...)")
        rid = self._reservation(decision, self._metrics_index(decision), "metrics")
        noisy = noise_sums(exact, self.metrics)
        self.ledger.settle(rid, noisy.release)
        return noisy

    def cancel_metrics(self, decision: BudgetDecision) -> None:
        """Give back a metrics reservation whose sums were never computed nor sent."""
        self.ledger.cancel(self._reservation(decision, self._metrics_index(decision), "metrics"))

    def round_metrics(self) -> dict[str, float]:
        """The node's own accounting to report after settling (no data-dependent counts).

        The sample rate, step count and clipped fraction stay on the node: they reveal the
        size of the data (issue 12, item 4).
        """
        if self.budget is None:
            raise DPConfigError(no_budget_message(self.source, "DP-SGD"))
        return {
            "dp-epsilon-spent": self.spent(),
            "dp-epsilon-budget": self.budget.epsilon,
            "dp-delta": self.budget.delta,
        }

    def spent(self) -> float:
        """Lifetime epsilon of the data source at the node's delta, settled + outstanding."""
        return self.ledger.spent(self.source, self.cfg.accountant)
