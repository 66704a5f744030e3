"""Time one SecAgg+ round in pure Python: `python -m privacy.secagg.bench --nodes 100`.

Reports client work per stage (summed over nodes and per node; in deployment nodes run in
parallel) and server work per stage, next to a plain weighted FedAvg of the same vectors.
`--table 10,30,100` prints instead the (k, t) derived for each cohort size under the threat
model (`--corrupt-fraction`, `--dropout-rate`, `--sigma`, `--eta`) and their failure bounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from privacy.secagg.bounds import ThreatModel, derive_graph, failure_bounds, min_survivors_floor
from privacy.secagg.client import SecAggClient
from privacy.secagg.errors import SecAggConfigError, SecAggError
from privacy.secagg.messages import decode, encode
from privacy.secagg.params import resolve_params
from privacy.secagg.server import SecAggServer
from privacy.secagg.weighting import pack_weighted, unpack_weighted


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def print_table(sizes: list[int], model: ThreatModel) -> None:
    """Derived (k, t), the survivors floor and the three failure bounds per cohort size."""
    print(f"corrupt_fraction={model.corrupt_fraction:.3g} dropout_rate={model.dropout_rate:.3g} "
          f"sigma={model.sigma} eta={model.eta}")
    print(f"{'n':>6} {'k':>5} {'t':>5} {'min surv':>8} {'P(exposure)':>12} "
          f"{'P(disconnect)':>13} {'P(abort)':>9}")
    for n in sizes:
        k, t = derive_graph(n, model)
        b = failure_bounds(n, k, t, model)
        floor = min_survivors_floor(n, k, t, model)
        print(f"{n:>6} {k:>5} {t:>5} {floor:>8} {b.exposure:>12.2e} {b.disconnection:>13.2e} "
              f"{b.shortfall:>9.2e}")


def run(nodes: int, length: int, neighbours: int | None, roundtrip: bool) -> dict[str, float]:
    """One measured round; returns seconds per phase and the max error vs plain FedAvg."""
    rng = np.random.default_rng(0)
    ids = sorted({int(x) for x in rng.integers(1, 2**64 - 1, nodes, dtype=np.uint64)})
    updates = {i: rng.normal(0, 0.01, length).astype(np.float32) for i in ids}
    weights = {i: float(rng.integers(50, 500)) for i in ids}
    params = resolve_params(len(ids), length + 1, num_neighbours=neighbours)
    times: dict[str, float] = {}

    plain, times["plain_fedavg"] = _timed(
        lambda: np.average(
            np.stack([updates[i] for i in ids]), axis=0, weights=[weights[i] for i in ids]
        )
    )
    clients = {i: SecAggClient(i) for i in ids}
    states = {i: c.to_state() for i, c in clients.items()}

    def clients_do(stage: str, call: str, msgs: dict[int, Any], *extra: Any) -> dict[int, Any]:
        out: dict[int, Any] = {}
        total = 0.0
        for nid, msg in msgs.items():
            start = time.perf_counter()
            if roundtrip:
                client = SecAggClient.from_state(states[nid])
                reply = getattr(client, call)(decode(encode(msg)), *(x(nid) for x in extra))
                states[nid] = client.to_state()
                out[nid] = decode(encode(reply))
            else:
                out[nid] = getattr(clients[nid], call)(msg, *(x(nid) for x in extra))
            total += time.perf_counter() - start
        times[f"clients.{stage}"] = total
        return out

    server, times["server.init"] = _timed(
        lambda: SecAggServer(ids, params, run_id="bench", round_id=1)
    )
    setup, times["server.setup"] = _timed(server.setup)
    adv = clients_do("setup", "setup", dict.fromkeys(ids, setup))
    keys, times["server.keys"] = _timed(lambda: server.collect_keys(adv))
    shares = clients_do("share_keys", "share_keys", keys)
    fwd, times["server.shares"] = _timed(lambda: server.collect_shares(shares))
    vec = {i: pack_weighted(updates[i], weights[i], 1000.0) for i in ids}
    masked = clients_do("masked_input", "masked_input", fwd, vec.__getitem__)
    req, times["server.masked"] = _timed(lambda: server.collect_masked(masked))
    unmask = clients_do("unmask", "unmask", req)
    result, times["server.unmask"] = _timed(lambda: server.collect_unmask(unmask))
    avg, _ = unpack_weighted(result.total, 1000.0)
    times["max_abs_error"] = float(np.abs(avg - plain).max())
    times["threshold"] = params.threshold
    times["neighbours"] = params.num_neighbours
    return times


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--params", type=int, default=20_000)
    ap.add_argument("--neighbours", type=int, default=None)
    ap.add_argument("--roundtrip", action="store_true", help="encode/decode + state per call")
    ap.add_argument("--table", help="comma-separated cohort sizes: print derived (k, t) only")
    ap.add_argument("--corrupt-fraction", type=float, default=ThreatModel.corrupt_fraction)
    ap.add_argument("--dropout-rate", type=float, default=ThreatModel.dropout_rate)
    ap.add_argument("--sigma", type=int, default=ThreatModel.sigma)
    ap.add_argument("--eta", type=int, default=ThreatModel.eta)
    args = ap.parse_args(argv)
    try:
        if args.table:
            model = ThreatModel(args.corrupt_fraction, args.dropout_rate, args.sigma, args.eta)
            sizes = [int(x) for x in args.table.split(",") if x.strip().isdigit()]
            if len(sizes) != len(args.table.split(",")):
                raise SecAggConfigError(f"--table {args.table!r}: give node counts like 10,100")
            print_table(sizes, model.validate())
            return 0
        t = run(args.nodes, args.params, args.neighbours, args.roundtrip)
    except SecAggError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    client_total = sum(v for k, v in t.items() if k.startswith("clients."))
    server_total = sum(v for k, v in t.items() if k.startswith("server."))
    k, thr = int(t["neighbours"]), int(t["threshold"])
    print(f"{args.nodes} nodes x {args.params} params, neighbours={k}, threshold={thr}")
    for k, v in t.items():
        if k.startswith(("clients.", "server.")):
            print(f"  {k:22s} {v:8.3f} s")
    per_node = client_total / args.nodes * 1e3
    print(f"  clients total          {client_total:8.3f} s ({per_node:.1f} ms/node)")
    print(f"  server total           {server_total:8.3f} s")
    print(f"  plain FedAvg (numpy)   {t['plain_fedavg']:8.3f} s")
    print(f"  max |secure - plain|   {t['max_abs_error']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
