"""DP-SGD on a node: config parsing, Opacus wrapping, clip measurement, once-per-run calibration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy.dp import dp_sgd
from privacy.dp.accounting import Release, epsilon
from privacy.dp.dp_sgd import (
    DPConfigError,
    DPSGDConfig,
    DPSGDSession,
    PrivateTraining,
    make_private,
    plan_release,
)
from privacy.dp.ledger import PrivacyLedger

# Opacus' hooks trigger a harmless torch warning when the inputs need no grad.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")
N, FEATURES = 96, 6


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # linearly separable
    return x, y


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))


def _loader(batch_size: int, x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _epoch(t: PrivateTraining) -> None:
    t.model.train()
    for xb, yb in t.loader:
        t.optimizer.zero_grad()
        loss = t.criterion(t.model(xb), yb)
        loss.backward()
        t.optimizer.step()


def _sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


# -- configuration -------------------------------------------------------------------------


def test_run_config_defaults_and_parsing() -> None:
    assert DPSGDConfig.from_run_config({}) == DPSGDConfig()
    cfg = DPSGDConfig.from_run_config(
        {
            "dp": "true",
            "dp-epsilon": 8,
            "dp-delta": "1e-6",
            "dp-max-grad-norm": 0.5,
            "dp-accountant": "PRV",
            "dp-grad-mode": "ghost",
            "dp-secure-mode": True,
        }
    )
    assert cfg == DPSGDConfig(True, 8.0, 1e-6, 0.5, "prv", "ghost", True, True)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("dp-delta", 2.0, "run config dp-delta=2.0: must be in (0, 1); e.g. 1e-5"),
        ("dp-epsilon", 0, "run config dp-epsilon=0.0: must be > 0; e.g. 3.0"),
        ("dp-epsilon", "lots", "run config dp-epsilon='lots': must be a number; e.g. 3.0"),
        ("dp-max-grad-norm", -1, "run config dp-max-grad-norm=-1.0: must be > 0; e.g. 1.0"),
        ("dp-accountant", "gdp", "run config dp-accountant='gdp': use one of rdp, prv"),
        ("dp-grad-mode", "fast", "run config dp-grad-mode='fast': use one of hooks, ghost"),
        ("dp", "maybe", "run config dp='maybe': must be true or false"),
        ("dp-secure-mode", 2, "run config dp-secure-mode=2: must be true or false"),
    ],
)
def test_bad_run_config_gives_exact_one_line_error(key: str, value: object, message: str) -> None:
    with pytest.raises(DPConfigError) as info:
        DPSGDConfig.from_run_config({key: value})
    assert str(info.value) == message


def test_plan_release_matches_what_opacus_runs() -> None:
    x, y = _data()
    cfg = DPSGDConfig(enabled=True)
    q, per_round, total = plan_release(N, 20, 2, 5, cfg)
    assert (q, per_round, total) == (1 / 5, 10, 50)  # ceil(96 / 20) = 5 batches per epoch
    model = _model()
    t = make_private(model, _sgd(model), _loader(20, x, y), 1.0, cfg)
    assert t.sample_rate == q
    for _ in range(2):
        _epoch(t)
    assert t.engine.accountant.history == [(1.0, q, per_round)]
    assert t.release() == Release(1.0, q, per_round)


# -- training and clipping -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_tiny_model_trains_under_dp_and_reports_clipped_fraction(mode: str) -> None:
    x, y = _data()
    cfg = DPSGDConfig(enabled=True, max_grad_norm=1.0, grad_sample_mode=mode)
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(1)
    t = make_private(
        model, _sgd(model, 0.5), _loader(16, x, y), 0.3, cfg,
        nn.CrossEntropyLoss(),
    )
    _epoch(t)
    fraction = t.clipped_fraction()
    assert fraction is not None and 0.0 <= fraction <= 1.0
    assert t.monitor.seen > 0 and t.steps_taken == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for _ in range(5):
        _epoch(t)
    with torch.no_grad():
        accuracy = float((t.model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.8


def _true_per_sample_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradient norms by brute force (one backward per example)."""
    crit = nn.CrossEntropyLoss()
    norms = []
    for i in range(len(x)):
        model.zero_grad()
        crit(model(x[i : i + 1]), y[i : i + 1]).backward()
        norms.append(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())))
    model.zero_grad()
    return torch.stack(norms)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("quantile", [0.25, 0.75])
def test_clipped_fraction_matches_brute_force_norms(mode: str, quantile: float) -> None:
    """With one full, unsampled batch the monitor must count exactly the too-long gradients."""
    x, y = _data()
    model = _model()
    norms = _true_per_sample_norms(model, x, y).sort().values
    k = int(quantile * N)
    threshold = float((norms[k - 1] + norms[k]) / 2)  # k gradients below, N - k above
    cfg = DPSGDConfig(
        enabled=True, max_grad_norm=threshold, grad_sample_mode=mode, poisson_sampling=False
    )
    with pytest.warns(UserWarning, match="poisson_sampling=False"):
        plan_release(N, N, 1, 1, cfg)
    t = make_private(model, _sgd(model, 0.0), _loader(N, x, y), 1.0, cfg)
    _epoch(t)
    assert t.monitor.seen == N
    assert t.clipped_fraction() == pytest.approx((N - k) / N)
    assert t.monitor.mean_norm == pytest.approx(float(norms.mean()), rel=1e-4)


def test_clip_monitor_reset_and_empty_state() -> None:
    monitor = dp_sgd.ClipMonitor(1.0)
    assert monitor.fraction is None
    monitor.observe(torch.tensor([0.5, 2.0, 3.0, 1.0]))
    assert monitor.fraction == 0.5
    monitor.reset()
    assert monitor.fraction is None


def test_secure_mode_reports_its_generator_and_trains() -> None:
    x, y = _data()
    model = _model()
    cfg = DPSGDConfig(enabled=True, secure_mode=True)
    t = make_private(model, _sgd(model), _loader(16, x, y), 1.0, cfg)
    _epoch(t)
    assert t.engine.secure_mode is True
    assert "secure" in t.rng
    assert t.steps_taken == 6


@pytest.mark.parametrize("secure", [False, True])
def test_dp_noise_cannot_be_replayed_from_the_run_seed(secure: bool) -> None:
    """Same data, model and global seed (the server knows it) must still give new noise."""
    x, y = _data()
    results = []
    for _ in range(2):
        torch.manual_seed(42)  # what a node does with the run config's seed
        model = _model()
        cfg = DPSGDConfig(enabled=True, secure_mode=secure, poisson_sampling=True)
        t = make_private(model, _sgd(model), _loader(16, x, y), 5.0, cfg)
        torch.manual_seed(42)
        _epoch(t)
        results.append(torch.cat([p.detach().ravel() for p in model.parameters()]))
    assert not torch.allclose(results[0], results[1])


def test_model_with_batchnorm_is_refused_with_a_fix() -> None:
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    x, y = _data()
    with pytest.raises(DPConfigError, match="GroupNorm"):
        make_private(
            model, _sgd(model), _loader(16, x, y), 1.0,
            DPSGDConfig(enabled=True),
        )


# -- session: calibration cache, budget, recording -----------------------------------------


def _session(ledger: PrivacyLedger, run_id: str, **kw: object) -> DPSGDSession:
    args: dict = {
        "num_examples": N, "batch_size": 16, "epochs_per_round": 1, "rounds": 3, **kw
    }
    cfg = DPSGDConfig(enabled=True, target_epsilon=2.0, delta=1e-5)
    return DPSGDSession(ledger, cfg, run_id, "f" * 64, **args)


@pytest.fixture
def count_calibrations(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []
    real: Callable[..., float] = dp_sgd.calibrate_noise

    def counting(*args: object, **kwargs: object) -> float:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(dp_sgd, "calibrate_noise", counting)
    return calls


def test_noise_is_calibrated_once_per_run(tmp_path: Path, count_calibrations: list) -> None:
    path = tmp_path / "ledger.sqlite"
    sigmas = []
    for _ in range(3):  # three Flower messages of one run = three fresh processes
        session = _session(PrivacyLedger(path), "run-1")
        sigmas.append(session.noise_multiplier)
        sigmas.append(session.noise_multiplier)
    assert len(count_calibrations) == 1
    assert len(set(sigmas)) == 1
    assert _session(PrivacyLedger(path), "run-2").noise_multiplier == sigmas[0]
    assert len(count_calibrations) == 2  # a new run calibrates again (same plan, same noise)
    assert _session(PrivacyLedger(path), "run-2", rounds=6).noise_multiplier > sigmas[0]
    assert len(count_calibrations) == 3  # so does a changed plan


def test_session_spends_its_target_over_the_run_then_refuses(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    session = _session(ledger, "run-1")
    x, y = _data()
    for round_no in (1, 2, 3):
        decision = session.check(round_no)
        assert decision.allowed, decision.message
        model = _model()
        t = session.make_private(
            model, _sgd(model), _loader(16, x, y)
        )
        _epoch(t)
        entry = session.record(round_no, t)
        assert entry.release == session.planned_release()
        metrics = session.round_metrics(t)
        assert metrics["dp-epsilon-spent"] == pytest.approx(session.spent())
        assert 0.0 <= metrics["dp-clipped-fraction"] <= 1.0
        plain = t.finish()
        assert plain is model
        assert set(plain.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert not any(hasattr(p, "grad_sample") for p in plain.parameters())
    spent = session.spent()
    assert 0.97 * 2.0 < spent <= 2.0  # calibration is tight and never overshoots
    refusal = session.check(4)
    assert not refusal.allowed
    assert refusal.message.startswith("node refuses round 4: epsilon would reach")
    # A second run on the same dataset sees the first run's spend.
    nxt = _session(PrivacyLedger(ledger.path), "run-2", budget=10.0)
    assert nxt.check(1).spent_before == pytest.approx(spent)


def test_record_counts_planned_steps_even_if_the_loop_skipped_batches(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    session = _session(ledger, "run-1")
    x, y = _data()
    model = _model()
    t = session.make_private(model, _sgd(model), _loader(16, x, y))
    for i, (xb, yb) in enumerate(t.loader):
        if i % 2:
            continue  # e.g. a loop that skips empty Poisson batches
        t.optimizer.zero_grad()
        t.criterion(t.model(xb), yb).backward()
        t.optimizer.step()
    assert t.steps_taken == 3
    assert session.record(1, t).steps == session.steps_per_round == 6
    assert ledger.spent("f" * 64, 1e-5) == pytest.approx(
        epsilon([session.planned_release()], 1e-5)
    )


def test_loader_with_other_batch_size_is_refused(tmp_path: Path) -> None:
    session = _session(PrivacyLedger(tmp_path / "ledger.sqlite"), "run-1")
    x, y = _data()
    model = _model()
    with pytest.raises(DPConfigError, match="build the loader with the planned batch size"):
        session.make_private(model, _sgd(model), _loader(32, x, y))


def test_session_requires_dp_enabled(tmp_path: Path) -> None:
    with pytest.raises(DPConfigError, match="dp=false"):
        DPSGDSession(
            PrivacyLedger(tmp_path / "l.sqlite"), DPSGDConfig(), "r", "f" * 64,
            num_examples=10, batch_size=5, epochs_per_round=1, rounds=1,
        )


def test_unreachable_target_is_a_config_error(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    cfg = DPSGDConfig(enabled=True, target_epsilon=1e-9)
    session = DPSGDSession(
        ledger, cfg, "r", "f" * 64, num_examples=10, batch_size=10, epochs_per_round=100,
        rounds=100,
    )
    with pytest.raises(DPConfigError, match="cannot calibrate DP-SGD noise: target epsilon"):
        session.noise_multiplier  # noqa: B018
