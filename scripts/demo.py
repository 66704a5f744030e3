"""`make demo`: fedguard as it is meant to be used, on one machine.

Ten virtual nodes (hospitals in ten EU countries, each with its own data manifest, holding
parts of the bundled digits data) train together with DP-SGD (epsilon 8 per node) and secure
aggregation. The policy gate checks every manifest first; at the end the demo prints the policy
report, the epsilon each node's ledger recorded, verifies the audit log and the signed
provenance record against the server's published key, and names the command that opens the
dashboard on this run.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.tasks.bundled import MANIFESTS  # noqa: E402
from clients.training.privacy import LEDGER_FILE  # noqa: E402
from privacy.compliance.audit import AuditLog  # noqa: E402
from privacy.compliance.provenance import load_record, verify_record  # noqa: E402
from privacy.compliance.signing import PUBLIC_KEY_FILENAME, read_public_key  # noqa: E402
from privacy.console import OneLineParser  # noqa: E402
from privacy.dp.ledger import PrivacyLedger  # noqa: E402
from server.deploy.follow import print_summary  # noqa: E402
from server.deploy.simulation import simulate  # noqa: E402
from server.deploy.superlink import LaunchError  # noqa: E402
from server.store import RunStore, default_data_dir  # noqa: E402

console = Console()
COUNTRIES = ("DE", "FR", "NL", "IT", "ES", "AT", "BE", "SE", "DK", "FI")
# DP settings that work on this federation (README, "DP settings that work")
DEMO_CONFIG = {"num-server-rounds": 20, "dp": True, "dp-epsilon": 8.0, "secagg": True,
               "lr": 0.2, "batch-size": 64, "local-epochs": 5, "server-country": "DE"}


def write_manifests(directory: Path, nodes: int) -> Path:
    """One manifest per node: the bundled data's facts, the node's own name and country."""
    base = (MANIFESTS / "digits.toml").read_text(encoding="utf-8")
    name = tomllib.loads(base)["dataset"]["name"]
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(nodes):
        country = COUNTRIES[i % len(COUNTRIES)]
        text = base.replace(f'name = "{name}"', f'name = "clinic {i + 1} ({country}): {name}"')
        text = text.replace('country = "US"', f'country = "{country}"')
        (directory / f"partition-{i}.toml").write_text(
            f"# example manifest of demo node {i + 1}\n" + text, encoding="utf-8")
    return directory


def report(data_dir: Path, run_id: str) -> bool:
    """Policy report, privacy spent per node, audit and provenance verification."""
    store = RunStore.in_dir(data_dir, readonly=True)
    verdicts = store.verdicts(run_id)
    artifacts = store.artifacts(run_id)
    store.close()
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    shown = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    console.print(f"\n[bold]policy report[/]: {shown} "
                  f"({artifacts.get('report-md', {}).get('path', '')})")
    flagged: dict[tuple[str, str], list[str]] = {}
    titles = {}
    for v in verdicts:
        if v.verdict in ("fail", "warn"):
            flagged.setdefault((v.verdict, v.rule_id), []).append(v.node_id or "run")
            titles[v.rule_id] = v.title.get("en", "")
    for (verdict, rule), where in sorted(flagged.items()):
        scope = "the run" if where == ["run"] else f"{len(where)} node(s)"
        console.print(f"  {verdict} {rule} on {scope}: {titles[rule]}")
    table = Table(title="privacy spent per node (from each node's own ledger)")
    for col in ("node", "data source", "epsilon spent", "budget", "delta"):
        table.add_column(col, justify="right")
    for ledger_file in sorted((data_dir / "nodes").glob(f"*/{LEDGER_FILE}")):
        ledger = PrivacyLedger(ledger_file, create=False)
        for source in ledger.sources():
            if source.startswith("run-") and not source.startswith(f"run-{run_id}/"):
                continue  # an earlier demo's virtual node
            budget = ledger.budget(source)
            if budget is not None:
                table.add_row(ledger_file.parent.name, source, f"{ledger.spent(source):.3f}",
                              f"{budget.epsilon:g}", f"{budget.delta:g}")
    console.print(table)
    key = read_public_key(data_dir / PUBLIC_KEY_FILENAME)
    audit = AuditLog(Path(artifacts["audit-log"]["path"])).verify(key)
    why = "" if audit.ok else f": {audit.reason}"
    console.print(f"audit log: {'[green]verified[/]' if audit.ok else '[red]FAILED[/]'} "
                  f"({audit.count} entries, key {audit.key_id}){why}")
    record = Path(artifacts["provenance"]["path"])
    check = verify_record(load_record(record), key, audit_log=artifacts["audit-log"]["path"])
    console.print(f"provenance record: {'[green]verified[/]' if check.ok else '[red]FAILED[/]'} "
                  f"({record}){'' if check.ok else ': ' + '; '.join(check.reasons)}")
    console.print(f"\ndashboard on this run: [bold]make ui RUN={run_id}[/] (then open "
                  f"http://127.0.0.1:8501/?run={run_id})")
    return audit.ok and check.ok


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=DEMO_CONFIG["num-server-rounds"])
    p.add_argument("--data-dir", default="", help="default $FEDGUARD_HOME or ./.fedguard")
    args = p.parse_args(argv)
    data_dir = default_data_dir(args.data_dir)
    manifests = write_manifests(data_dir / "demo-manifests", args.nodes)
    config = {**DEMO_CONFIG, "num-server-rounds": args.rounds, "manifest-dir": str(manifests)}
    console.print(f"[bold]fedguard demo[/]: {args.nodes} nodes, DP-SGD at epsilon "
                  f"{config['dp-epsilon']:g} per node, secure aggregation, policy packs "
                  "checked on every manifest")
    try:
        out = simulate(ROOT, args.nodes, config, data_dir, 1800, console)
    except LaunchError as err:
        console.print(f"[red]error:[/] {err}")
        return 1
    print_summary(out, console)
    if not out.ok:
        console.print(f"[red]run {out.run_id} did not complete[/]: {out.reason()}")
        return 1
    return 0 if report(data_dir, out.run_id) else 1


if __name__ == "__main__":
    sys.exit(main())
