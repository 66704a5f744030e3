"""Sample-level DP-SGD for one node, built on Opacus, with ledger-backed accounting.

The one entry point for a ClientApp is :class:`DPSGDSession`::

    cfg = DPSGDConfig.from_run_config(context.run_config)
    session = DPSGDSession(ledger, cfg, run_id, dataset_fingerprint(x, y),
                           num_examples=len(x), batch_size=32, epochs_per_round=2,
                           rounds=10, budget=node_budget)
    decision = session.check(round)            # refuse before spending compute
    if not decision.allowed: ...               # reply with decision.message
    training = session.make_private(model, optimizer, loader, criterion)
    ...train with training.model / .optimizer / .loader / .criterion...
    session.record(round, training)            # BEFORE the update leaves the node
    metrics = session.round_metrics(training)  # epsilon spent, clipped fraction, ...
    weights = training.finish().state_dict()   # plain module, Opacus hooks removed

The noise multiplier is calibrated once per run (cached in the ledger) for the run's whole
planned length, so every round of the run uses the same noise even though each Flower
message runs in a fresh process.
"""

from __future__ import annotations

import hashlib
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
from privacy.dp.ledger import BudgetDecision, LedgerEntry, PrivacyLedger

__all__ = [
    "GRAD_SAMPLE_MODES",
    "ClipMonitor",
    "DPConfigError",
    "DPSGDConfig",
    "DPSGDSession",
    "PrivateTraining",
    "make_private",
    "plan_release",
]

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ghost")
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
    grad_sample_mode: str = "hooks"
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
    before clipping): in "hooks" mode it recomputes each sample's flat L2 norm from
    ``p.grad_sample`` exactly as Opacus does; in "ghost" mode it reads the norms Opacus
    stored in ``model.per_sample_gradient_norms`` during the first backward pass. A sample
    counts as clipped when its norm exceeds ``max_grad_norm`` (Opacus scales it by
    ``max_grad_norm / (norm + 1e-6)`` then).
    """

    max_grad_norm: float
    clipped: int = 0
    seen: int = 0
    norms_sum: float = 0.0

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
        try:
            norms = model.per_sample_gradient_norms if mode == "ghost" else _hooks_norms(optimizer)
        except (ValueError, AttributeError, TypeError):
            norms = None  # no backward happened yet; Opacus itself will complain
        if norms is not None:
            monitor.observe(norms)
        return original(closure)

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
    """PrivacyEngine whose noise and Poisson sampling use a secret-seeded generator.

    Returns ``(engine, noise_generator to pass to make_private, description)``.
    ``secure_mode`` uses torchcsprng when installed (Opacus' own secure mode). Without it we
    keep Opacus' floating-point-attack-resistant noise sampling (``engine.secure_mode``)
    with a secret-seeded torch generator: unpredictable, but a Mersenne Twister rather than
    a CSPRNG; the description says which one is used.
    """
    if secure_mode:
        try:
            engine = PrivacyEngine(accountant=accountant, secure_mode=True)
            return engine, None, "torchcsprng /dev/urandom (Opacus secure mode)"
        except ImportError:
            engine = PrivacyEngine(accountant=accountant, secure_mode=False)
            engine.secure_mode = True  # robust noise sampling; make_private reads the flag
            engine.secure_rng = _secret_generator()  # Opacus draws noise and batches from it
            return engine, None, "torch.Generator seeded from secrets, secure noise sampling"
    engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    generator = _secret_generator()
    engine.secure_rng = generator  # Opacus' Poisson loader takes its generator from here
    return engine, generator, "torch.Generator seeded from secrets"


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
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise DPConfigError(
            f"model cannot be trained with DP-SGD: {str(errors[0]).splitlines()[0]}; "
            "replace BatchNorm with GroupNorm (opacus ModuleValidator.fix does this)"
        )
    criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    mode = "ghost" if cfg.grad_sample_mode == "ghost" else "hooks"
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
    )


class DPSGDSession:
    """One node's DP-SGD for one run on one dataset: calibrate, check, wrap, record.

    ``budget`` is the node's *lifetime* epsilon for this dataset, composed over every run
    in the ledger. Without one, the run's ``target_epsilon`` is used: a node that sets no
    budget never lets a dataset exceed what a single run asked for.
    """

    def __init__(
        self,
        ledger: PrivacyLedger,
        cfg: DPSGDConfig,
        run_id: str | int,
        fingerprint: str,
        *,
        num_examples: int,
        batch_size: int,
        epochs_per_round: int,
        rounds: int,
        budget: float | None = None,
    ) -> None:
        if not cfg.enabled:
            raise DPConfigError("run config dp=false: DP-SGD is off, so train without a session")
        self.ledger = ledger
        self.cfg = cfg
        self.run_id = str(run_id)
        self.fingerprint = fingerprint
        self.budget = float(budget) if budget is not None else cfg.target_epsilon
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise DPConfigError(f"node privacy budget={budget}: must be > 0; e.g. 8.0")
        self.sample_rate, self.steps_per_round, self.total_steps = plan_release(
            num_examples, batch_size, epochs_per_round, rounds, cfg
        )
        self._noise: float | None = None

    @property
    def calibration_key(self) -> str:
        """Everything the calibrated noise depends on; a change means a new calibration."""
        c = self.cfg
        parts = (
            "dp-sgd/1", self.run_id, self.fingerprint, c.accountant, repr(c.target_epsilon),
            repr(c.delta), repr(self.sample_rate), str(self.total_steps),
        )
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @property
    def noise_multiplier(self) -> float:
        """Noise reaching ``target_epsilon`` over the whole run; calibrated once per run."""
        if self._noise is None:
            key = self.calibration_key
            cached = self.ledger.cached_noise(key)
            if cached is None:
                try:
                    cached = calibrate_noise(
                        self.cfg.target_epsilon,
                        self.cfg.delta,
                        self.sample_rate,
                        self.total_steps,
                        self.cfg.accountant,
                    )
                except AccountingError as exc:
                    raise DPConfigError(f"cannot calibrate DP-SGD noise: {exc}") from exc
                self.ledger.store_noise(key, cached)
                cached = self.ledger.cached_noise(key) or cached  # first writer wins
            self._noise = cached
        return self._noise

    def planned_release(self) -> Release:
        """The release one round of this run makes."""
        return Release(self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def check(self, round: int) -> BudgetDecision:
        """May this node train ``round``? Composes the ledger history with one more round."""
        return self.ledger.check(
            self.fingerprint,
            self.planned_release(),
            self.cfg.delta,
            self.budget,
            self.cfg.accountant,
            round=round,
        )

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

    def record(self, round: int, training: PrivateTraining) -> LedgerEntry:
        """Durably record what this round released; call before the update is sent.

        Records at least the planned steps of a round, so skipped (empty) batches never
        lead to under-counting.
        """
        release = training.release(min_steps=self.steps_per_round)
        assert release is not None  # min_steps >= 1
        return self.ledger.record(
            self.run_id, round, self.fingerprint, release, self.cfg.delta, self.cfg.accountant
        )

    def round_metrics(self, training: PrivateTraining) -> dict[str, float]:
        """Numbers a node can report to the server after recording a round (no data)."""
        clipped = training.clipped_fraction()
        return {
            "dp-epsilon-spent": self.spent(),
            "dp-epsilon-budget": self.budget,
            "dp-noise-multiplier": training.noise_multiplier,
            "dp-sample-rate": training.sample_rate,
            "dp-steps": float(training.steps_taken),
            "dp-clipped-fraction": -1.0 if clipped is None else clipped,
        }

    def spent(self) -> float:
        """Lifetime epsilon of this dataset at the run's delta, after what is recorded."""
        return self.ledger.spent(self.fingerprint, self.cfg.delta, self.cfg.accountant)
