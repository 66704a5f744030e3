"""DP-SGD on digits: what Opacus costs per epoch, and how much accuracy each epsilon leaves.

    python scripts/bench_privacy.py            # full run (a few minutes on 2 shared cores)
    python scripts/bench_privacy.py --quick    # short smoke run
    python scripts/bench_privacy.py --part speed      # or: --part accuracy

(a) Speed: milliseconds per training epoch without DP and with Opacus DP-SGD ("hooks" and
    "ghost" clipping, through fedguard's own ``privacy.dp.dp_sgd.make_private``; "ew", Opacus'
    expanded-weights engine, directly) for the MLP and the CNN, on one node's worth of digits
    and on the whole training split, one torch thread by default. Every case is
    built once, warmed up, then all cases run in turn (interleaved) ``--repeats`` times, so
    machine noise hits them alike; the table gives medians and the DP / no-DP ratio. A second
    table explores the CNN: Opacus' other per-sample-gradient engines (functorch, expanded
    weights), batch size and ``torch.set_num_threads(1)``.

(b) Accuracy: a plain in-process FedAvg loop over 10 non-IID (Dirichlet 0.5) digits nodes that
    calls the real node code (``clients.local_update.local_train``, with its DP session and
    privacy ledger under a fresh temporary data-dir), averages the returned weights by number
    of examples and evaluates on the server's held-out split. Each hyper-parameter setting runs
    without DP and at every epsilon with the same rounds and seeds. Opacus' noise normally
    comes from a secret-seeded generator; here it is seeded from ``--noise-seed`` so reruns
    and settings are comparable (the noise *level* is untouched). A variant can swap the
    node's optimizer (e.g. SGD without momentum) to measure a proposed code change.
    Writes ``artifacts/privacy_accuracy.png`` (accuracy per round for each epsilon).
"""

from __future__ import annotations

import argparse
import itertools
import math
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

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clients.local_update as local_update  # noqa: E402
import privacy.dp.dp_sgd as dp_sgd  # noqa: E402
from clients.data import Split, load_builtin, partition_iid, train_test_split  # noqa: E402
from clients.models import build_model  # noqa: E402
from clients.task import TaskConfig, load_server_testset, new_model  # noqa: E402
from clients.training import evaluate, make_loader, make_optimizer, train_epochs  # noqa: E402
from privacy.dp.accounting import calibrate_noise  # noqa: E402
from privacy.dp.dp_sgd import DPSGDConfig, plan_release  # noqa: E402

console = Console(width=132)
ARTIFACTS = ROOT / "artifacts"
DATASET = "digits"
NOISE_FOR_TIMING = 1.0  # the noise level does not change the cost of a step
# Opacus engines the repo does not expose as dp-grad-mode, measured with Opacus directly.
OPACUS_ONLY_MODES = ("functorch", "ew")
DEFAULT_THREADS = torch.get_num_threads()

State = dict[str, torch.Tensor]
OptimizerFactory = Callable[[nn.Module, float, int], torch.optim.Optimizer]


# --------------------------------------------------------------------------- (a) speed


@dataclass(frozen=True)
class SpeedCase:
    """One timed configuration; ``mode`` is "none" (no DP) or an Opacus grad-sample mode."""

    model: str
    data: str  # "node" or "full"
    mode: str
    batch_size: int
    threads: int

    def baseline(self) -> SpeedCase:
        return SpeedCase(self.model, self.data, "none", self.batch_size, self.threads)


def timing_data(nodes: int = 10, seed: int = 42) -> dict[str, Split]:
    """The digits training split and one IID node's share of it (about 1/nodes)."""
    train, _ = train_test_split(load_builtin(DATASET), 0.2, seed)
    idx = partition_iid(len(train), nodes, seed)[0]
    return {"node": Split(train.x[idx], train.y[idx]), "full": train}


def epoch_runner(case: SpeedCase, data: Split) -> Callable[[], float]:
    """Build model, optimizer and loader for ``case`` once; the closure trains one epoch (ms).

    "hooks" and "ghost" go through fedguard's ``make_private`` (what nodes run, clip monitor
    included); other Opacus modes are wrapped by Opacus' PrivacyEngine directly.
    """
    task = TaskConfig(model=case.model, dataset=DATASET)
    model = build_model(case.model, task.spec, seed=0)
    optimizer = make_optimizer(model, 0.05)
    loader = make_loader(data, case.batch_size, shuffle=True, seed=0)
    criterion: Any = nn.CrossEntropyLoss()
    if case.mode in dp_sgd.GRAD_SAMPLE_MODES:
        cfg = DPSGDConfig(enabled=True, grad_sample_mode=case.mode)
        private = dp_sgd.make_private(model, optimizer, loader, NOISE_FOR_TIMING, cfg, criterion)
        model, optimizer, loader, criterion = (
            private.model, private.optimizer, private.loader, private.criterion
        )
    elif case.mode in OPACUS_ONLY_MODES:
        from opacus import PrivacyEngine

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, optimizer, loader = PrivacyEngine().make_private(
                module=model, optimizer=optimizer, data_loader=loader,
                noise_multiplier=NOISE_FOR_TIMING, max_grad_norm=1.0,
                grad_sample_mode=case.mode,
            )
    elif case.mode != "none":
        raise ValueError(f"unknown mode {case.mode!r}")

    def run() -> float:
        torch.set_num_threads(case.threads)
        start = time.perf_counter()
        train_epochs(model, loader, optimizer, 1, criterion)
        return (time.perf_counter() - start) * 1e3

    return run


def time_cases(cases: Sequence[SpeedCase], repeats: int) -> dict[SpeedCase, list[float]]:
    """ms per epoch of every case, interleaved: each repeat runs all cases once, in a rotated
    order, after one untimed warm-up epoch each. Cases that cannot be built are left out."""
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


def speed_cases(batch_size: int, threads: int) -> list[SpeedCase]:
    """Table (a): both models, node-sized and full data, no DP / hooks / ghost, plus Opacus'
    expanded-weights engine ("ew"), the fastest per-sample-gradient engine we measured."""
    return [
        SpeedCase(m, d, mode, batch_size, threads)
        for m, d, mode in itertools.product(("mlp", "cnn"), ("node", "full"),
                                            ("none", "hooks", "ghost", "ew"))
    ]


def cnn_explore_cases(batch_sizes: Sequence[int], threads: Sequence[int]) -> list[SpeedCase]:
    """CNN on the full split: every Opacus engine x batch size x thread count."""
    modes = ("none", "hooks", "ghost", *OPACUS_ONLY_MODES)
    return [
        SpeedCase("cnn", "full", mode, b, t)
        for t, b, mode in itertools.product(threads, batch_sizes, modes)
    ]


def speed_table(title: str, times: Mapping[SpeedCase, list[float]], show: str) -> Table:
    """Medians and DP/no-DP ratios; ``show`` picks the leading columns ("data" or "knobs")."""
    table = Table(title=title)
    lead = ("model", "data") if show == "data" else ("threads", "batch")
    for col in (*lead, "mode", "median ms/epoch", "min", "max", "DP/no-DP (medians)",
                "(mins)"):
        table.add_column(col, justify="right")
    for case, ms in times.items():
        med = statistics.median(ms)
        base = times.get(case.baseline())
        ratios = ["-", "-"]
        if case.mode != "none" and base:
            ratios = [f"{med / statistics.median(base):.2f}", f"{min(ms) / min(base):.2f}"]
        first = (case.model, case.data) if show == "data" else (case.threads, case.batch_size)
        table.add_row(*map(str, first), case.mode, f"{med:.1f}", f"{min(ms):.1f}",
                      f"{max(ms):.1f}", *ratios)
    return table


# ------------------------------------------------------------------------ (b) accuracy


@dataclass(frozen=True)
class Setting:
    """A named set of run-config keys, optionally with a replacement node optimizer."""

    name: str
    keys: Mapping[str, Any]
    optimizer: str = "sgd-momentum"  # or "sgd": what clients.training.make_optimizer builds

    def run_config(self, epsilon: float | None, delta: float) -> dict[str, Any]:
        cfg: dict[str, Any] = {"dataset": DATASET, "partition": "dirichlet",
                               "dirichlet-alpha": 0.5, "seed": 42, **self.keys}
        if epsilon is None:
            return {**cfg, "dp": False}
        return {**cfg, "dp": True, "dp-epsilon": float(epsilon), "dp-delta": delta}


#: What pyproject.toml's [tool.flwr.app.config] runs today (dp-max-grad-norm 1.0, hooks).
DEFAULTS = Setting("defaults", {
    "model": "mlp", "lr": 0.1, "batch-size": 16, "local-epochs": 3, "num-server-rounds": 10,
    "dp-max-grad-norm": 1.0, "dp-grad-mode": "hooks",
})
#: Best keys found with today's node code (momentum 0.9, constant lr).
TUNED = Setting("tuned", {
    "model": "mlp", "lr": 0.1, "batch-size": 64, "local-epochs": 5, "num-server-rounds": 20,
    "dp-max-grad-norm": 1.0, "dp-grad-mode": "hooks",
})
#: The recommended code change on top: the node's lr decays as lr / sqrt(server round).
DECAY = Setting("tuned+lr-decay", {**TUNED.keys, "lr": 0.2}, optimizer="sgd-momentum-decay")
#: Measured and rejected: no momentum (lr x10 keeps the effective step).
NO_MOMENTUM = Setting("tuned, no momentum", {**TUNED.keys, "lr": 1.0}, optimizer="sgd")
SETTINGS = {s.name: s for s in (DEFAULTS, TUNED, DECAY, NO_MOMENTUM)}

def _sgd_momentum(model: nn.Module, lr: float, rnd: int) -> torch.optim.Optimizer:
    return make_optimizer(model, lr)  # the node's own optimizer, unchanged


def _sgd(model: nn.Module, lr: float, rnd: int) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr)


def _sgd_momentum_decay(model: nn.Module, lr: float, rnd: int) -> torch.optim.Optimizer:
    """Momentum SGD with lr / sqrt(round): later rounds add less noise to a good model."""
    return make_optimizer(model, lr / math.sqrt(max(rnd, 1)))


#: Node optimizers, by name: (model, lr, server round) -> optimizer.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd-momentum": _sgd_momentum,
    "sgd": _sgd,
    "sgd-momentum-decay": _sgd_momentum_decay,
}


class PatchedNode:
    """Swaps the node's optimizer and seeds Opacus' noise while active; restores both.

    Seeding only makes runs repeatable; each node and round still gets its own stream.
    ``round`` is set by the FedAvg loop so a round-dependent optimizer can read it.
    """

    def __init__(self, optimizer: str, noise_seed: int | None) -> None:
        self.factory = OPTIMIZERS[optimizer]
        self.noise_seed = noise_seed
        self.round = 1
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> PatchedNode:
        self._saved = (local_update.make_optimizer, dp_sgd._secret_generator)
        local_update.make_optimizer = lambda model, lr: self.factory(model, lr, self.round)
        if self.noise_seed is not None:
            counter = itertools.count()
            seed = self.noise_seed
            dp_sgd._secret_generator = lambda: torch.Generator().manual_seed(
                seed * 1_000_003 + next(counter)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        local_update.make_optimizer, dp_sgd._secret_generator = self._saved


@dataclass
class FedResult:
    accuracy: list[float]  # server accuracy after each round
    noise_multiplier: float | None = None  # of the median-sized node
    clipped: list[float] = field(default_factory=list)  # mean clipped fraction per round
    seconds: float = 0.0


def federated_run(
    run_config: Mapping[str, Any], nodes: int, optimizer: str = "sgd-momentum",
    noise_seed: int | None = 0,
) -> FedResult:
    """FedAvg over ``nodes`` in-process nodes, calling the real ``local_train`` each round."""
    task = TaskConfig.from_run_config(run_config)
    testset = load_server_testset(task)
    model = new_model(task)
    state: State = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = FedResult([])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedguard-bench-dp-") as tmp, \
            PatchedNode(optimizer, noise_seed) as node, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' per-step backward-hook warnings
        rc = {**run_config, "data-dir": tmp}
        for rnd in range(1, int(run_config["num-server-rounds"]) + 1):
            node.round = rnd
            outs = [local_update.local_train(
                task, {"partition-id": i, "num-partitions": nodes}, state, rnd, rc, 1)
                for i in range(nodes)]
            done = [o for o in outs if o.state is not None]
            if not done:
                raise RuntimeError(f"round {rnd}: every node refused ({outs[0].refusal})")
            total = sum(o.metrics["num-examples"] for o in done)
            state = {k: sum(o.state[k] * (o.metrics["num-examples"] / total) for o in done)
                     for k in state}  # type: ignore[index]
            model.load_state_dict(state)
            result.accuracy.append(evaluate(model, testset)[1])
            clipped = [o.diagnostics["dp-clipped-fraction"] for o in done
                       if o.diagnostics.get("dp-clipped-fraction", -1) >= 0]
            if clipped:
                result.clipped.append(statistics.fmean(clipped))
            sigmas = sorted(o.diagnostics["dp-noise-multiplier"] for o in done
                            if "dp-noise-multiplier" in o.diagnostics)
            if sigmas:
                result.noise_multiplier = sigmas[len(sigmas) // 2]
    result.seconds = time.perf_counter() - start
    return result


def noise_per_step(keys: Mapping[str, Any], epsilon: float, delta: float, n: int) -> float:
    """Std of the noise on one averaged batch gradient, as a multiple of the clip norm
    (sigma / expected batch size) for a node of ``n`` examples: the number that matters."""
    cfg = DPSGDConfig(enabled=True, target_epsilon=epsilon, delta=delta)
    q, _, total = plan_release(n, int(keys["batch-size"]), int(keys["local-epochs"]),
                               int(keys["num-server-rounds"]), cfg)
    return calibrate_noise(epsilon, delta, q, total, "rdp") / (q * n)


def _one_thread() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


def accuracy_grid(
    settings: Sequence[Setting], epsilons: Sequence[float | None], delta: float, nodes: int,
    seeds: Sequence[int], jobs: int = 1,
) -> dict[tuple[str, float | None], list[FedResult]]:
    """Every setting at every epsilon (None = no DP), once per noise seed.

    Runs are independent and seeded, so ``jobs`` worker processes (one torch thread each)
    give the same numbers as one process, sooner.
    """
    plan = [(s, eps, seed) for s, eps, seed in itertools.product(settings, epsilons, seeds)
            if eps is not None or seed == seeds[0]]  # without DP a run is deterministic
    out: dict[tuple[str, float | None], list[FedResult]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, jobs), mp_context=ctx, initializer=_one_thread) as pool:
        futures = {pool.submit(federated_run, s.run_config(eps, delta), nodes, s.optimizer,
                               seed): (s, eps, seed) for s, eps, seed in plan}
        for fut in as_completed(futures):
            s, eps, seed = futures[fut]
            res = fut.result()
            out.setdefault((s.name, eps), []).append(res)
            console.print(f"  {s.name:>22} {eps_label(eps):>7} seed {seed}: final acc "
                          f"{res.accuracy[-1]:.3f} ({res.seconds:.0f} s)")
    return out


def eps_label(eps: float | None) -> str:
    return "no DP" if eps is None else f"eps {eps:g}"


def accuracy_table(
    results: Mapping[tuple[str, float | None], list[FedResult]], settings: Sequence[Setting],
    epsilons: Sequence[float | None], delta: float,
) -> Table:
    """Final server accuracy (mean over noise seeds, range when more than one)."""
    table = Table(title=f"final server accuracy, digits, 10 Dirichlet(0.5) nodes, delta={delta:g}")
    table.add_column("setting")
    table.add_column("keys")
    for eps in epsilons:
        table.add_column(eps_label(eps), justify="right")
    for s in settings:
        keys = " ".join(f"{k}={v}" for k, v in s.keys.items() if k != "dp-grad-mode")
        if s.optimizer != "sgd-momentum":
            keys += f" [optimizer={s.optimizer}]"
        cells = []
        for eps in epsilons:
            runs = results.get((s.name, eps), [])
            finals = [r.accuracy[-1] for r in runs]
            if not finals:
                cells.append("-")
            elif len(finals) == 1:
                cells.append(f"{finals[0]:.3f}")
            else:
                mean = statistics.fmean(finals)
                cells.append(f"{mean:.3f} ({min(finals):.2f}-{max(finals):.2f})")
        table.add_row(s.name, keys, *cells)
    return table


def plot_accuracy(
    results: Mapping[tuple[str, float | None], list[FedResult]], settings: Sequence[Setting],
    epsilons: Sequence[float | None], path: Path,
) -> Path:
    """One panel per setting: server accuracy per round, a line per epsilon (seed mean)."""
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
            curve = [statistics.fmean(v) for v in zip(*(r.accuracy for r in runs), strict=True)]
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=eps_label(eps),
                    color=colors.get(eps), linestyle="--" if eps is None else "-")
        k = s.keys
        ax.set_title(f"{s.name} ({s.optimizer})\nlr={k['lr']} batch={k['batch-size']} "
                     f"epochs={k['local-epochs']} rounds={k['num-server-rounds']} "
                     f"clip={k['dp-max-grad-norm']}", fontsize=9)
        ax.set_xlabel("server round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    axes[0][0].set_ylabel("server accuracy (held-out digits)")
    axes[0][0].set_ylim(0, 1)
    axes[0][-1].legend(loc="lower right")
    fig.suptitle("DP-SGD on 10 non-IID digits nodes (FedAvg, delta 1e-5)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, rounds and settings")
    p.add_argument("--part", choices=("all", "speed", "accuracy"), default="all")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default 7)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of table (a)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for table (a); 1 is steadiest on a shared machine")
    p.add_argument("--seeds", type=int, default=1, help="noise seeds per DP run")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                   default=["defaults", "tuned", "tuned+lr-decay"])
    p.add_argument("--epsilons", nargs="+", type=float, default=[0.0, 1.0, 3.0, 8.0],
                   help="0 = without DP")
    p.add_argument("--noise-seed", type=int, default=0, help="first noise seed")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2, help="processes for the accuracy runs")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--plot", type=Path, default=ARTIFACTS / "privacy_accuracy.png")
    return p.parse_args(argv)


def quick_setting(s: Setting, rounds: int) -> Setting:
    return Setting(s.name, {**s.keys, "num-server-rounds": rounds}, s.optimizer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Opacus' hooks warn on every backward of a model whose input needs no grad (harmless).
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    repeats = args.repeats or (3 if args.quick else 7)
    if args.part in ("all", "speed"):
        console.rule("(a) ms per epoch, interleaved")
        times = time_cases(speed_cases(args.batch_size, args.threads), repeats)
        console.print(speed_table(
            f"ms per epoch, digits, batch {args.batch_size}, {args.threads} torch thread(s), "
            f"median of {repeats}", times, "data"))
        batches = (64,) if args.quick else (16, 64, 256)
        threads = sorted({1, DEFAULT_THREADS})
        explore = time_cases(cnn_explore_cases(batches, threads), repeats)
        console.print(speed_table(
            f"CNN on the full split: Opacus engines x batch x threads, median of {repeats}",
            explore, "knobs"))
    if args.part in ("all", "accuracy"):
        console.rule("(b) server accuracy per epsilon, in-process FedAvg with local_train")
        epsilons: list[float | None] = [None if e == 0 else e for e in args.epsilons]
        settings = [SETTINGS[name] for name in args.settings]
        seeds = list(range(args.noise_seed, args.noise_seed + args.seeds))
        if args.quick:
            settings = [quick_setting(s, 2) for s in settings[:1] + settings[-1:]]
            epsilons = [None, max((e for e in epsilons if e), default=8.0)]
        results = accuracy_grid(settings, epsilons, args.delta, args.nodes, seeds, args.jobs)
        console.print(accuracy_table(results, settings, epsilons, args.delta))
        noise = Table(title="noise std per step / clip norm (sigma / batch) on a 144-example node")
        noise.add_column("setting")
        for eps in (e for e in epsilons if e is not None):
            noise.add_column(eps_label(eps), justify="right")
        dp_epsilons = [e for e in epsilons if e is not None]
        for s in settings:
            noise.add_row(s.name, *(f"{noise_per_step(s.keys, e, args.delta, 144):.3f}"
                                    for e in dp_epsilons))
        console.print(noise)
        path = plot_accuracy(results, settings, epsilons, args.plot)
        console.print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
