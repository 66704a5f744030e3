"""DP-SGD on digits: what Opacus costs per epoch, and how much accuracy each epsilon leaves.

    python scripts/bench_privacy.py                  # short run (~5 min on 2 shared cores)
    python scripts/bench_privacy.py --full --jobs 2  # eps 1, 3, 8 x 5 draws (~25 min)
    python scripts/bench_privacy.py --part speed     # or: --part accuracy

(a) Speed: CPU milliseconds per training epoch (process time, one torch thread: steady on a
    shared machine, where wall time is not) without DP and with Opacus DP-SGD in each per-sample-
    gradient mode fedguard exposes as `dp-grad-mode` ("hooks", "ghost", "ew"), through the
    node's own `privacy.dp.dp_sgd.make_private` (clip monitor included), plus Opacus'
    "functorch" engine directly, for the bundled MLP and CNN on one node's worth of digits and
    on the whole training split. Each case is built once and warmed up, then all run in turn
    (interleaved, rotated) `--repeats` times, so machine noise hits them alike; the table gives
    medians and the DP / no-DP ratio.

(b) Accuracy: an in-process federation of 10 non-IID (Dirichlet 0.5) digits nodes, each the
    real node code (`clients.training.node.NodeRuntime`: task, data, ledger, DP-SGD session),
    and the server's step: FedAvg weighted by what each node sends (under DP a node no longer
    sends its example count, so every node weighs 1), then the run's server optimiser
    (`server.rounds.server_opt`), then the server's held-out accuracy. After the last round every
    node makes the run's final federated-evaluation release, so the ledgers hold the whole run;
    the table shows, next to accuracy (mean and spread over noise draws), the largest epsilon a
    node's ledger recorded. Opacus' noise normally comes from a secret-seeded generator; here it
    is seeded from `--noise-seed` so draws are repeatable (the noise *level* is untouched).
    Writes `artifacts/privacy_accuracy.png` (accuracy per round for each epsilon).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import privacy.dp.dp_sgd as dp_sgd  # noqa: E402
from clients.task.evaluation import evaluate  # noqa: E402
from clients.task.run_config import RunConfig  # noqa: E402
from clients.tasks.datasets import load_digits, train_test_split  # noqa: E402
from clients.tasks.models import MLP, SmallCNN  # noqa: E402
from clients.tasks.partition import partition_iid  # noqa: E402
from clients.training.loop import make_loader, train_epochs  # noqa: E402
from clients.training.node import NodeRuntime  # noqa: E402
from privacy.dp.dp_sgd import DPSGDConfig  # noqa: E402
from server.rounds.server_opt import ServerOptimizer  # noqa: E402

console = Console(width=140)
ARTIFACTS = ROOT / "artifacts"
NOISE_FOR_TIMING = 1.0  # the noise level does not change the cost of a step
#: Opacus engines fedguard does not expose as dp-grad-mode, measured with Opacus directly.
OPACUS_ONLY_MODES = ("functorch",)
#: "auto" is not an engine of its own (it picks ew or hooks by the model's layers).
SPEED_MODES = ("none", *(m for m in dp_sgd.GRAD_SAMPLE_MODES if m != "auto"), *OPACUS_ONLY_MODES)
DEFAULT_THREADS = torch.get_num_threads()

State = dict[str, np.ndarray]


# --------------------------------------------------------------------------- (a) speed


@dataclass(frozen=True)
class SpeedCase:
    """One timed configuration; `mode` is "none" (no DP) or an Opacus grad-sample mode."""

    model: str  # "mlp" or "cnn"
    data: str  # "node" or "full"
    mode: str
    batch_size: int

    def baseline(self) -> SpeedCase:
        return SpeedCase(self.model, self.data, "none", self.batch_size)


def timing_data(nodes: int = 10, seed: int = 42) -> dict[str, Dataset[Any]]:
    """The digits training split and one IID node's share of it (about 1/nodes)."""
    train, _ = train_test_split(load_digits(), 0.2, seed)
    node = train.take(partition_iid(len(train), nodes, seed)[0])
    return {name: TensorDataset(torch.from_numpy(s.x), torch.from_numpy(s.y))
            for name, s in (("node", node), ("full", train))}


def build_model(kind: str) -> nn.Module:
    """The bundled digits task's model, seeded."""
    torch.manual_seed(0)
    return SmallCNN((1, 8, 8), 10) if kind == "cnn" else MLP(64, 10)


def epoch_runner(case: SpeedCase, data: Dataset[Any]) -> Callable[[], float]:
    """Build model, optimiser and loader for `case` once; the closure trains one epoch and
    returns its CPU milliseconds. fedguard's modes go through the node's `make_private`."""
    model = build_model(case.model)
    optimizer: Any = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader: Any = make_loader(data, case.batch_size, shuffle=True, seed=0)
    criterion: Any = nn.CrossEntropyLoss()
    if case.mode in dp_sgd.GRAD_SAMPLE_MODES:
        cfg = DPSGDConfig(enabled=True, grad_sample_mode=case.mode)
        private = dp_sgd.make_private(model, optimizer, loader, NOISE_FOR_TIMING, cfg, criterion)
        model, optimizer, loader, criterion = (
            private.model, private.optimizer, private.loader, private.criterion)
    elif case.mode in OPACUS_ONLY_MODES:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, optimizer, loader = PrivacyEngine().make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=NOISE_FOR_TIMING, max_grad_norm=1.0,
                grad_sample_mode=case.mode)
    elif case.mode != "none":
        raise ValueError(f"unknown mode {case.mode!r}")

    def run() -> float:
        start = time.process_time()
        train_epochs(model, loader, optimizer, criterion, 1)
        return (time.process_time() - start) * 1e3

    return run


def time_cases(cases: Sequence[SpeedCase], repeats: int) -> dict[SpeedCase, list[float]]:
    """CPU ms per epoch of every case on one torch thread, interleaved: each repeat runs all
    cases once, in a rotated order, after one untimed warm-up epoch each. Cases that cannot be
    built are reported and left out."""
    torch.set_num_threads(1)
    data = timing_data()
    runners: dict[SpeedCase, Callable[[], float]] = {}
    for case in dict.fromkeys(cases):
        try:
            runners[case] = epoch_runner(case, data[case.data])
            runners[case]()  # warm-up: first-call allocations, lazy imports
        except Exception as err:  # noqa: BLE001 - an unsupported Opacus mode is a result too
            console.print(f"[yellow]{case.model} {case.mode} B={case.batch_size}: "
                          f"cannot run ({str(err).splitlines()[0][:90]})[/]")
    order = list(runners)
    times: dict[SpeedCase, list[float]] = {c: [] for c in order}
    for r in range(repeats):
        shift = r % max(len(order), 1)
        for case in order[shift:] + order[:shift]:
            times[case].append(runners[case]())
    torch.set_num_threads(DEFAULT_THREADS)
    return times


def speed_cases(batch_sizes: Sequence[int], models: Sequence[str] = ("mlp", "cnn"),
                datas: Sequence[str] = ("node", "full")) -> list[SpeedCase]:
    """Every model x data x batch size, without DP and in every mode."""
    return [SpeedCase(m, d, mode, b)
            for m, d, b, mode in itertools.product(models, datas, batch_sizes, SPEED_MODES)]


def speed_table(title: str, times: Mapping[SpeedCase, list[float]]) -> Table:
    """Medians and DP / no-DP ratios, one row per case."""
    table = Table(title=title)
    for col in ("model", "data", "batch", "mode", "median CPU ms/epoch", "min", "max",
                "DP/no-DP"):
        table.add_column(col, justify="right")
    for case, ms in times.items():
        med = statistics.median(ms)
        base = times.get(case.baseline())
        ratio = f"{med / statistics.median(base):.2f}" if case.mode != "none" and base else "-"
        table.add_row(case.model, case.data, str(case.batch_size), case.mode, f"{med:.1f}",
                      f"{min(ms):.1f}", f"{max(ms):.1f}", ratio)
    return table


def fastest_modes(times: Mapping[SpeedCase, list[float]]) -> dict[tuple[str, str, int], str]:
    """The DP mode with the lowest median per (model, data, batch)."""
    best: dict[tuple[str, str, int], tuple[float, str]] = {}
    for case, ms in times.items():
        if case.mode == "none":
            continue
        key, med = (case.model, case.data, case.batch_size), statistics.median(ms)
        if key not in best or med < best[key][0]:
            best[key] = (med, case.mode)
    return {k: mode for k, (_, mode) in best.items()}


# ------------------------------------------------------------------------ (b) accuracy


@dataclass(frozen=True)
class Setting:
    """A named set of run-config keys (the task's own, `model` etc., included)."""

    name: str
    keys: Mapping[str, Any]

    def run_config(self, epsilon: float | None, delta: float) -> dict[str, Any]:
        cfg: dict[str, Any] = {"partition": "dirichlet", "dirichlet-alpha": 0.5, "seed": 42,
                               "policy-packs": "none", **self.keys}
        if epsilon is None:
            return {**cfg, "dp": False}
        return {**cfg, "dp": True, "dp-epsilon": float(epsilon), "dp-delta": delta}

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.keys.items())


#: The schema's defaults (pyproject.toml's [tool.flwr.app.config]) with dp=true.
DEFAULTS = Setting("defaults", {})
#: The issue's starting point (its "tuned keys"), on Opacus hooks.
START = Setting("issue-15 start", {
    "lr": 0.2, "batch-size": 64, "local-epochs": 5, "num-server-rounds": 20,
    "dp-grad-mode": "hooks",
})
#: The best keys found for the bundled MLP (README "DP settings that work").
TUNED = Setting("tuned mlp", {
    "lr": 0.2, "batch-size": 64, "local-epochs": 5, "num-server-rounds": 40,
})
#: The same federation with the linear model: fewer weights, less noise.
LINEAR = Setting("tuned linear", {
    "model": "linear", "lr": 0.5, "batch-size": 64, "local-epochs": 5,
    "num-server-rounds": 40, "dp-max-grad-norm": 0.3,
})
SETTINGS = {s.name: s for s in (DEFAULTS, START, TUNED, LINEAR)}


class SeededNoise:
    """Seeds Opacus' noise and Poisson sampling while active, restoring the node's secret
    generator after. Each node and round still gets its own stream; only reruns repeat."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._saved: Any = None

    def __enter__(self) -> SeededNoise:
        self._saved = dp_sgd._secret_generator
        if self.seed is not None:
            counter = itertools.count()
            seed = self.seed
            dp_sgd._secret_generator = lambda: torch.Generator().manual_seed(
                seed * 1_000_003 + next(counter))
        return self

    def __exit__(self, *exc: object) -> None:
        dp_sgd._secret_generator = self._saved


@dataclass
class FedResult:
    accuracy: list[float]  # server accuracy after each round
    ledger_epsilon: float | None = None  # largest epsilon a node's ledger recorded
    noise_multiplier: float | None = None  # of the median node
    clipped: list[float] = field(default_factory=list)  # mean clipped fraction per round
    seconds: float = 0.0


def fedavg(glob: State, states: Sequence[State], weights: Sequence[float]) -> State:
    """Flower's FedAvg: the weighted mean of the nodes' models."""
    total = float(sum(weights))
    return {k: sum(s[k].astype(np.float64) * (w / total) for s, w in zip(
        states, weights, strict=True)).astype(glob[k].dtype) for k in glob}


def federated_run(run_config: Mapping[str, Any], nodes: int, noise_seed: int | None = 0
                  ) -> FedResult:
    """The federation of the module docstring, (b): real nodes, the server's own step."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedguard-bench-dp-") as tmp, \
            SeededNoise(noise_seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' per-step backward-hook warnings
        rc = {**run_config, "data-dir": tmp}
        runtimes = [NodeRuntime(rc, {"partition-id": i, "num-partitions": nodes}, 1)
                    for i in range(nodes)]
        cfg = runtimes[0].cfg
        task, ctx = runtimes[0].task, runtimes[0].ctx
        model, testset = task.build_model(ctx), task.evaluation_set(ctx)
        opt = ServerOptimizer.from_config(cfg)
        glob: State = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        result = FedResult([])
        for rnd in range(1, cfg.num_server_rounds + 1):
            outs = [r.train({k: torch.from_numpy(v.copy()) for k, v in glob.items()}, rnd,
                            False) for r in runtimes]
            done = [o for o in outs if o.state is not None]
            if not done:
                raise RuntimeError(f"round {rnd}: every node refused ({outs[0].refusal})")
            weights = [1.0 if cfg.dp else o.metrics["num-examples"] for o in done]
            states = [{k: v.numpy() for k, v in o.state.items()} for o in done]  # type: ignore[union-attr]
            glob = opt.step(glob, fedavg(glob, states, weights))
            model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in glob.items()})
            sums = evaluate(model, testset, task.criterion(), task.metric_fn())
            result.accuracy.append(sums.metrics["accuracy"] / sums.examples)
            clipped = [o.diagnostics["dp-clipped-fraction"] for o in done
                       if o.diagnostics.get("dp-clipped-fraction", -1) >= 0]
            if clipped:
                result.clipped.append(statistics.fmean(clipped))
            sigmas = sorted(o.diagnostics["dp-noise-multiplier"] for o in done
                            if "dp-noise-multiplier" in o.diagnostics)
            if sigmas:
                result.noise_multiplier = sigmas[len(sigmas) // 2]
        if cfg.dp:
            final = {k: torch.from_numpy(v.copy()) for k, v in glob.items()}
            for r in runtimes:  # the run's planned final federated evaluation (noisy sums)
                r.evaluate(final, cfg.num_server_rounds)
            result.ledger_epsilon = max(r.session.spent() for r in runtimes)
    result.seconds = time.perf_counter() - start
    return result


def _one_thread() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


def accuracy_grid(
    settings: Sequence[Setting], epsilons: Sequence[float | None], delta: float, nodes: int,
    seeds: Sequence[int], jobs: int = 1,
) -> dict[tuple[str, float | None], list[FedResult]]:
    """Every setting at every epsilon (None = no DP), once per noise seed (once without DP:
    it is deterministic). Runs are independent and seeded, so `jobs` worker processes (one
    torch thread each) give the same numbers as one process, sooner."""
    plan = [(s, eps, seed) for s, eps, seed in itertools.product(settings, epsilons, seeds)
            if eps is not None or seed == seeds[0]]
    out: dict[tuple[str, float | None], list[FedResult]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, jobs), mp_context=ctx, initializer=_one_thread) as pool:
        futures = {pool.submit(federated_run, s.run_config(eps, delta), nodes, seed):
                   (s, eps, seed) for s, eps, seed in plan}
        for fut in as_completed(futures):
            s, eps, seed = futures[fut]
            res = fut.result()
            out.setdefault((s.name, eps), []).append(res)
            ledger = "" if res.ledger_epsilon is None else f", ledger eps {res.ledger_epsilon:.3f}"
            console.print(f"  {s.name:>16} {eps_label(eps):>7} seed {seed}: final acc "
                          f"{res.accuracy[-1]:.3f}{ledger} ({res.seconds:.0f} s)")
    return out


def eps_label(eps: float | None) -> str:
    return "no DP" if eps is None else f"eps {eps:g}"


def spread(values: Sequence[float]) -> str:
    """`mean ± std (min-max)` of the final accuracies, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} "
            f"({min(values):.2f}-{max(values):.2f})")


def accuracy_table(
    results: Mapping[tuple[str, float | None], list[FedResult]], settings: Sequence[Setting],
    epsilons: Sequence[float | None], delta: float, nodes: int,
) -> Table:
    """Final server accuracy (mean ± std, range over noise draws) and the ledgers' epsilon."""
    table = Table(title=f"final server accuracy, digits, {nodes} Dirichlet(0.5) nodes, "
                        f"delta={delta:g}: mean ± std (range) over noise draws "
                        "[largest epsilon a node's ledger recorded]")
    table.add_column("setting")
    table.add_column("keys (over the schema defaults)")
    for eps in epsilons:
        table.add_column(eps_label(eps), justify="right")
    for s in settings:
        cells = []
        for eps in epsilons:
            runs = results.get((s.name, eps), [])
            if not runs:
                cells.append("-")
                continue
            cell = f"{spread([r.accuracy[-1] for r in runs])}"
            ledgers = [r.ledger_epsilon for r in runs if r.ledger_epsilon is not None]
            if ledgers:
                cell += f" [{max(ledgers):.2f}]"
            cells.append(f"{cell} n={len(runs)}")
        table.add_row(s.name, s.describe() or "(none)", *cells)
    return table


def plot_accuracy(
    results: Mapping[tuple[str, float | None], list[FedResult]], settings: Sequence[Setting],
    epsilons: Sequence[float | None], path: Path,
) -> Path:
    """One panel per setting: server accuracy per round, a line per epsilon (mean over draws,
    shaded min-max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.2), sharey=True,
                             squeeze=False)
    colors = {None: "black", 1.0: "tab:red", 3.0: "tab:orange", 8.0: "tab:green"}
    for ax, s in zip(axes[0], settings, strict=True):
        for eps in epsilons:
            runs = results.get((s.name, eps))
            if not runs:
                continue
            curves = np.array([r.accuracy for r in runs])
            x = np.arange(1, curves.shape[1] + 1)
            ax.plot(x, curves.mean(0), marker=".", label=eps_label(eps), color=colors.get(eps),
                    linestyle="--" if eps is None else "-")
            if len(runs) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15,
                                color=colors.get(eps))
        ax.set_title(f"{s.name}\n{s.describe()[:70]}", fontsize=8)
        ax.set_xlabel("server round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].set_ylabel("server accuracy (held-out digits)")
    axes[0][0].set_ylim(0, 1)
    axes[0][-1].legend(loc="lower right")
    fig.suptitle("DP-SGD on 10 non-IID digits nodes (delta 1e-5)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dp_defaults_table() -> Table:
    """What dp=true runs with when no key is set (the schema's DP defaults)."""
    cfg = RunConfig.parse({"dp": True})
    table = Table(title="schema defaults a dp=true run uses")
    table.add_column("key")
    table.add_column("value", justify="right")
    for key in ("num-server-rounds", "local-epochs", "lr", "batch-size", "dp-max-grad-norm",
                "dp-grad-mode", "server-optimizer", "server-lr", "server-beta1"):
        table.add_row(key, str(cfg.to_mapping()[key]))
    return table


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--full", action="store_true",
                   help="eps 1, 3, 8 and no DP, 5 noise draws, every setting, 7 timing repeats")
    p.add_argument("--part", choices=("all", "speed", "accuracy"), default="all")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3; 7 full)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="batch sizes of the speed table (default 64; 16 64 full)")
    p.add_argument("--seeds", type=int, default=None, help="noise draws per DP run (default 2; "
                   "5 full)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None)
    p.add_argument("--epsilons", nargs="+", type=float, default=None,
                   help="0 = without DP (default 0 8; 0 1 3 8 full)")
    p.add_argument("--noise-seed", type=int, default=0, help="first noise seed")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="processes for the accuracy runs (the "
                   "machine is shared: 1 by default)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--plot", type=Path, default=ARTIFACTS / "privacy_accuracy.png")
    args = p.parse_args(argv)
    full = args.full
    args.repeats = args.repeats or (7 if full else 3)
    args.batch_sizes = args.batch_sizes or ([16, 64] if full else [64])
    args.seeds = args.seeds or (5 if full else 2)
    args.settings = args.settings or (list(SETTINGS) if full else ["defaults", "tuned mlp"])
    args.epsilons = args.epsilons or ([0.0, 1.0, 3.0, 8.0] if full else [0.0, 8.0])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Opacus' hooks warn on every backward of a model whose input needs no grad (harmless).
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.part in ("all", "speed"):
        console.rule("(a) CPU ms per epoch, one torch thread, interleaved")
        times = time_cases(speed_cases(args.batch_sizes), args.repeats)
        console.print(speed_table(f"CPU ms per epoch, digits, median of {args.repeats}", times))
        for (model, data, batch), mode in fastest_modes(times).items():
            ratio = (statistics.median(times[SpeedCase(model, data, mode, batch)])
                     / statistics.median(times[SpeedCase(model, data, "none", batch)]))
            console.print(f"fastest DP mode, {model} {data} batch {batch}: {mode} "
                          f"({ratio:.2f}x no DP)")
    if args.part in ("all", "accuracy"):
        console.rule("(b) server accuracy per epsilon: real nodes, the server's step")
        console.print(dp_defaults_table())
        epsilons: list[float | None] = [None if e == 0 else e for e in args.epsilons]
        settings = [SETTINGS[name] for name in args.settings]
        seeds = list(range(args.noise_seed, args.noise_seed + args.seeds))
        results = accuracy_grid(settings, epsilons, args.delta, args.nodes, seeds, args.jobs)
        console.print(accuracy_table(results, settings, epsilons, args.delta, args.nodes))
        path = plot_accuracy(results, settings, epsilons, args.plot)
        console.print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
