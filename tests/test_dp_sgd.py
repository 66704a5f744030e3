"""DP-SGD on a node: config parsing, Opacus wrapping, clip measurement, once-per-run calibration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
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
    check_private_model,
    make_private,
    plan_release,
)
from privacy.dp.ledger import LedgerError, PrivacyLedger
from privacy.dp.metrics import MetricsSpec

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
            "dp-secure-mode": False,
        }
    )
    assert cfg == DPSGDConfig(True, 8.0, 1e-6, 0.5, "prv", "ghost", False, True)


def test_secure_mode_without_torchcsprng_is_refused_not_faked() -> None:
    """Item 12: secure mode used to fall back silently to a seeded PRNG."""
    with pytest.raises(DPConfigError) as info:
        DPSGDConfig.from_run_config({"dp": True, "dp-secure-mode": True})
    assert str(info.value) == (
        "run config dp-secure-mode=true needs torchcsprng, which has no build for this torch: "
        "set dp-secure-mode=false (noise then comes from a torch generator seeded from the OS "
        "CSPRNG)"
    )


def test_secure_mode_is_accepted_where_torchcsprng_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    real = dp_sgd.importlib.util.find_spec
    monkeypatch.setattr(dp_sgd.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchcsprng" else real(name, *a))
    assert DPSGDConfig(enabled=True, secure_mode=True).secure_mode


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("dp-delta", 2.0, "run config dp-delta=2.0: must be in (0, 1); e.g. 1e-5"),
        ("dp-epsilon", 0, "run config dp-epsilon=0.0: must be > 0; e.g. 3.0"),
        ("dp-epsilon", "lots", "run config dp-epsilon='lots': must be a number; e.g. 3.0"),
        ("dp-max-grad-norm", -1, "run config dp-max-grad-norm=-1.0: must be > 0; e.g. 1.0"),
        ("dp-accountant", "gdp", "run config dp-accountant='gdp': use one of rdp, prv"),
        ("dp-grad-mode", "fast",
         "run config dp-grad-mode='fast': use one of auto, hooks, ghost, ew"),
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


@pytest.mark.parametrize("mode", ["hooks", "ghost", "ew"])
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


@pytest.mark.parametrize("mode", ["hooks", "ghost", "ew"])
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


def test_dp_noise_cannot_be_replayed_from_the_run_seed() -> None:
    """Same data, model and global seed (the server knows it) must still give new noise."""
    x, y = _data()
    results = []
    for _ in range(2):
        torch.manual_seed(42)  # what a node does with the run config's seed
        model = _model()
        cfg = DPSGDConfig(enabled=True, poisson_sampling=True)
        t = make_private(model, _sgd(model), _loader(16, x, y), 5.0, cfg)
        torch.manual_seed(42)
        _epoch(t)
        results.append(torch.cat([p.detach().ravel() for p in model.parameters()]))
    assert not torch.allclose(results[0], results[1])


class _Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, 8), norm, nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    "norm,message",
    [
        (nn.BatchNorm1d(8), "BatchNorm1d at 'net.1': replace with GroupNorm (opacus "
                            "ModuleValidator.fix)"),
        # Opacus' own validator misses this one: no trainable parameters, but it mixes the
        # batch and sends its running statistics with the weights.
        (nn.BatchNorm1d(8, affine=False), "BatchNorm1d at 'net.1': replace with GroupNorm"),
        (nn.InstanceNorm1d(8, track_running_stats=True),
         "InstanceNorm1d at 'net.1': set track_running_stats=False"),
    ],
)
def test_check_private_model_names_the_first_unsupported_layer(
    norm: nn.Module, message: str
) -> None:
    with pytest.raises(DPConfigError) as info:
        check_private_model(_Net(norm))
    assert str(info.value).startswith(f"model cannot be trained with DP-SGD: {message}")
    assert "\n" not in str(info.value)


def test_check_private_model_refuses_persistent_buffers_and_passes_plain_models() -> None:
    model = _model()
    check_private_model(model)  # nothing to say
    model.register_buffer("seen_mean", torch.zeros(FEATURES))
    with pytest.raises(DPConfigError, match="Sequential at '<root>' has buffer 'seen_mean', sent "
                                            "with the weights without noise"):
        check_private_model(model)
    model = _model()
    model.register_buffer("constant", torch.ones(2), persistent=False)
    check_private_model(model)
    lstm = nn.Sequential(nn.LSTM(4, 4))
    with pytest.raises(DPConfigError, match="LSTM at '0': replace with opacus DPLSTM"):
        check_private_model(lstm)


def test_make_private_refuses_an_unsupported_model() -> None:
    model = _Net(nn.BatchNorm1d(8))
    x, y = _data()
    with pytest.raises(DPConfigError, match="BatchNorm1d at 'net.1'"):
        make_private(model, _sgd(model), _loader(16, x, y), 1.0, DPSGDConfig(enabled=True))


# -- session: the node's budget, calibration, reserve and settle ---------------------------

SOURCE = "clinic-7/visits"


def _session(ledger: PrivacyLedger, run_id: str, cfg: DPSGDConfig | None = None,
             **kw: object) -> DPSGDSession:
    args: dict = {
        "num_examples": N, "batch_size": 16, "epochs_per_round": 1, "rounds": 3, **kw
    }
    cfg = cfg or DPSGDConfig(enabled=True, target_epsilon=2.0, delta=1e-5)
    return DPSGDSession(ledger, cfg, run_id, SOURCE, "f" * 64, **args)


def _ledger(tmp_path: Path, epsilon_budget: float = 2.0, delta: float = 1e-5) -> PrivacyLedger:
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget(SOURCE, epsilon_budget, delta)
    return ledger


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
    path = _ledger(tmp_path).path
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


def _train_round(session: DPSGDSession, round_no: int, epochs: int = 1,
                 with_metrics: bool = False):
    decision = session.reserve(round_no, with_metrics)
    assert decision.allowed, decision.message
    x, y = _data()
    model = _model()
    t = session.make_private(model, _sgd(model), _loader(16, x, y))
    for _ in range(epochs):
        _epoch(t)
    return decision, t


def test_session_spends_its_target_over_the_run_then_refuses(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    session = _session(ledger, "run-1")
    for round_no in (1, 2, 3):
        decision, t = _train_round(session, round_no)
        assert session.settle(decision, t) == session.planned_release()
        metrics = session.round_metrics()
        assert metrics == {"dp-epsilon-spent": pytest.approx(session.spent()),
                           "dp-epsilon-budget": 2.0, "dp-delta": 1e-5}
        plain = t.finish()
        assert set(plain.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert not any(hasattr(p, "grad_sample") for p in plain.parameters())
    spent = session.spent()
    assert 0.97 * 2.0 < spent <= 2.0  # calibration is tight and never overshoots
    refusal = session.reserve(4)
    assert not refusal.allowed
    assert refusal.message.startswith("node refuses round 4: epsilon would reach")
    # A second run on the same source sees the first run's spend, whatever it asks for.
    nxt = _session(PrivacyLedger(ledger.path), "run-2",
                   DPSGDConfig(enabled=True, target_epsilon=10.0, delta=1e-5))
    assert not nxt.reserve(1).allowed


def test_a_node_without_a_budget_refuses_and_never_adopts_the_runs(tmp_path: Path) -> None:
    """Item 6: a node started without a budget used to adopt the server's dp-epsilon."""
    session = _session(PrivacyLedger(tmp_path / "ledger.sqlite"), "run-1")
    decision = session.reserve(1)
    assert not decision.allowed
    assert decision.message == (
        f"node refuses round 1: it has no privacy budget for data source {SOURCE!r}; set one "
        f"with `fedguard-node budget set --source {SOURCE} --epsilon E --delta D`"
    )
    assert session.ledger.releases() == []
    with pytest.raises(TypeError):
        _session(session.ledger, "run-1", budget=8.0)  # no way to pass one from the run


@pytest.mark.parametrize("node_delta,expected", [(1e-7, 1e-7), (1e-3, 1e-5)])
def test_run_target_is_calibrated_at_the_stricter_delta(
    tmp_path: Path, node_delta: float, expected: float
) -> None:
    ledger = _ledger(tmp_path, 50.0, node_delta)
    session = _session(ledger, "run-1", num_examples=N)
    assert session.calibration_delta == expected
    run = Release(session.noise_multiplier, session.sample_rate, session.total_steps)
    # The run's target holds at the delta the server asked for and at the node's own.
    assert epsilon([run], 1e-5) <= 2.0 and epsilon([run], node_delta) <= 2.0 + 1e-9


def test_settle_refuses_more_than_was_reserved(tmp_path: Path) -> None:
    session = _session(_ledger(tmp_path, 20.0), "run-1")
    decision, t = _train_round(session, 1, epochs=2)  # trained twice what was planned
    with pytest.raises(LedgerError, match="reserve the difference first, then settle"):
        session.settle(decision, t)
    assert session.ledger.releases(SOURCE)[0].status == "reserved"  # still counted


def test_two_runs_interleaved_on_one_node_share_one_budget(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, 2.0)
    a, b = _session(ledger, "run-a"), _session(PrivacyLedger(ledger.path), "run-b")
    grants = [a.reserve(1).allowed, b.reserve(1).allowed, a.reserve(2).allowed,
              b.reserve(2).allowed]
    assert grants == [True, True, True, False]  # both reserved before either trained
    assert ledger.spent(SOURCE) <= 2.0


def test_metric_releases_are_reserved_and_fit_in_the_run_target(tmp_path: Path) -> None:
    spec = MetricsSpec(noise_multiplier=6.0, loss_bound=5.0)
    ledger = _ledger(tmp_path, 2.0)
    with_metrics = _session(ledger, "run-1", metrics=spec, metric_releases=3)
    alone = _session(ledger, "run-0")
    assert with_metrics.noise_multiplier > alone.noise_multiplier
    x, y = _data()
    for round_no in (1, 2, 3):
        decision, t = _train_round(with_metrics, round_no, with_metrics=True)
        assert len(decision.reservations) == 2
        with_metrics.settle(decision, t)
        hits = (t.model(x).argmax(1) == y).float().numpy()
        noisy = with_metrics.release_metrics(decision, np.full(N, 0.7), {"correct": hits})
        assert set(noisy.sums) == {"num-examples", "loss-sum", "correct-sum"}
    kinds = [e.kind for e in ledger.releases(SOURCE)]
    assert kinds == ["dp-sgd", "metrics"] * 3
    assert all(e.status == "settled" for e in ledger.releases(SOURCE))
    assert 0.97 * 2.0 < ledger.spent(SOURCE) <= 2.0  # DP-SGD + metrics meet the target
    spare = PrivacyLedger(tmp_path / "other.sqlite")
    spare.set_budget(SOURCE, 10.0, 1e-5)
    extra = _session(spare, "run-2", metrics=spec)
    decision = extra.reserve_metrics(1)
    extra.cancel_metrics(decision)  # nothing computed, nothing sent
    assert [e.status for e in spare.releases(SOURCE)] == ["cancelled"]


def test_settle_counts_planned_steps_even_if_the_loop_skipped_batches(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    session = _session(ledger, "run-1")
    decision = session.reserve(1)
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
    assert session.settle(decision, t).steps == session.steps_per_round == 6
    assert ledger.spent(SOURCE) == pytest.approx(epsilon([session.planned_release()], 1e-5))


def test_loader_with_other_batch_size_is_refused(tmp_path: Path) -> None:
    session = _session(_ledger(tmp_path), "run-1")
    x, y = _data()
    model = _model()
    with pytest.raises(DPConfigError, match="build the loader with the planned batch size"):
        session.make_private(model, _sgd(model), _loader(32, x, y))


def test_session_requires_dp_enabled(tmp_path: Path) -> None:
    with pytest.raises(DPConfigError, match="dp=false"):
        DPSGDSession(
            PrivacyLedger(tmp_path / "l.sqlite"), DPSGDConfig(), "r", SOURCE, "f" * 64,
            num_examples=10, batch_size=5, epochs_per_round=1, rounds=1,
        )


def test_unreachable_target_is_a_config_error(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    cfg = DPSGDConfig(enabled=True, target_epsilon=1e-9)
    session = DPSGDSession(
        ledger, cfg, "r", SOURCE, "f" * 64, num_examples=10, batch_size=10,
        epochs_per_round=100, rounds=100,
    )
    with pytest.raises(DPConfigError, match="cannot calibrate DP-SGD noise: target epsilon"):
        session.noise_multiplier  # noqa: B018


def test_expanded_weights_refuse_a_layer_they_cannot_expand_naming_the_fix() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

    x, y = _data()
    model = nn.Sequential(nn.Linear(FEATURES, 2), Scale())
    cfg = DPSGDConfig(enabled=True, grad_sample_mode="ew")
    with pytest.raises(DPConfigError) as info:
        make_private(model, _sgd(model), _loader(16, x, y), 1.0, cfg)
    assert str(info.value) == ("dp-grad-mode='ew' does not support Scale at '1': set "
                               "dp-grad-mode='hooks' (or 'auto')")


def test_auto_mode_takes_expanded_weights_when_the_layers_allow_and_hooks_otherwise() -> None:
    """The default engine works for a task's own layers: a model with a layer expanded weights
    cannot expand trains on hooks, one without trains on ew; both are clipped and noised."""

    class Scale(nn.Module):  # Opacus hooks have a per-sample gradient for it, ew has none
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

    from opacus.grad_sample import register_grad_sampler

    @register_grad_sampler(Scale)
    def _scale_grads(layer: Scale, activations: list[torch.Tensor], backprops: torch.Tensor):
        return {layer.w: torch.einsum("n...i,n...i->ni", activations[0], backprops)}

    x, y = _data()
    assert DPSGDConfig(enabled=True).grad_sample_mode == "auto"
    for model, expected in ((_model(), "ew"), (nn.Sequential(nn.Linear(FEATURES, 2), Scale()),
                                               "hooks")):
        before = [p.detach().clone() for p in model.parameters()]
        t = make_private(model, _sgd(model), _loader(16, x, y), 1.0, DPSGDConfig(enabled=True))
        assert t.grad_sample_mode == expected
        _epoch(t)
        after = list(t.finish().parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert t.steps_taken > 0


def test_expanded_weights_give_the_same_step_as_hooks() -> None:
    """Same noise seed, same data: the two engines compute the same clipped, noised step."""
    x, y = _data()
    steps = []
    for mode in ("hooks", "ew"):
        model = _model()
        cfg = DPSGDConfig(enabled=True, grad_sample_mode=mode, max_grad_norm=0.5,
                          poisson_sampling=False)
        t = make_private(model, _sgd(model), _loader(N, x, y), 1e-9, cfg)
        _epoch(t)
        steps.append([p.detach().clone() for p in t.finish().parameters()])
        assert t.clipped_fraction() is not None
    for a, b in zip(*steps, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_process_calibrates_once_per_run_and_sample_rate(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Many virtual nodes of one run in one process: one calibration, every ledger records it."""
    calls: list[tuple[float, int]] = []
    real = dp_sgd.calibrate_noise

    def counting(eps: float, delta: float, q: float, steps: int, *a: object, **k: object) -> float:
        calls.append((q, steps))
        return real(eps, delta, q, steps, *a, **k)

    monkeypatch.setattr(dp_sgd, "calibrate_noise", counting)
    monkeypatch.setattr(dp_sgd, "_CALIBRATIONS", {})
    noises = []
    for node in range(3):
        (tmp_path / f"node-{node}").mkdir()
        ledger = _ledger(tmp_path / f"node-{node}")
        noises.append(_session(ledger, run_id="run-c").noise_multiplier)
        assert ledger.cached_noise(_session(ledger, run_id="run-c").calibration_key) == noises[0]
    assert len(calls) == 1 and noises == [noises[0]] * 3
    for name in ("other-rate", "other-run"):
        (tmp_path / name).mkdir()
    _session(_ledger(tmp_path / "other-rate"), "run-c", batch_size=32).noise_multiplier  # noqa: B018
    _session(_ledger(tmp_path / "other-run"), "run-d").noise_multiplier  # noqa: B018
    assert len(calls) == 3  # another sample rate, another run: calibrated anew


def test_clip_monitor_observes_every_fourth_step_from_the_first() -> None:
    """The norms are recomputed on a sample of the steps (a tenth of a CNN step each)."""
    monitor = dp_sgd.ClipMonitor(1.0)
    assert [monitor.due() for _ in range(9)] == [True, False, False, False, True,
                                                 False, False, False, True]
    x, y = _data()
    model = _model()
    t = make_private(model, _sgd(model, 0.5), _loader(16, x, y), 0.3,
                     DPSGDConfig(enabled=True, grad_sample_mode="ew"), nn.CrossEntropyLoss())
    _epoch(t)
    assert t.steps_taken == 6 and t.monitor.steps == 6
    assert 0 < t.monitor.seen < N  # two of the six steps' samples, not all of them
