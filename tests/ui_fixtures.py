"""Build a small recorded run in a temporary run store, only through `RunStore`'s public API.

The run has what every UI page shows: 3 rounds with losses/accuracies, 3 nodes with DP epsilon
(node 103 refuses round 3 when its budget runs out), a secure-aggregation dropout, events,
manifests, policy verdicts with report artefacts, checkpoints and a signed provenance record.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.compliance.manifest import loads_manifest
from privacy.compliance.policy import evaluate, load_packs
from privacy.compliance.provenance import build_record, sign_record, write_record
from privacy.compliance.signing import load_or_create_key, public_key_b64
from server.compliance.gate import verdict_records
from server.store import RunStore

RUN_ID = "run-ui-demo"
LIVE_RUN_ID = "run-ui-live"
NODES = ("101", "102", "103")
BUDGET = 3.0

RUN_CONFIG: dict[str, Any] = {
    "num-server-rounds": 3,
    "min-nodes": 3,
    "batch-size": 16,
    "model": "mlp",
    "dataset": "digits",
    "purpose": "research",
    "mode": "simulation",
    "tls": False,
    "node-auth": False,
    "secagg": True,
    "dp": True,
    "dp-epsilon": BUDGET,
    "dp-delta": 1e-5,
    "dp-accountant": "rdp",
    "dp-clip-norm": 1.0,
    "dp-noise-multiplier": 1.1,
    "dp-privacy-unit": "record",
    "server-country": "DE",
    "policy-packs": "baseline,gdpr",
    "audit-log": True,
    "aggregator-role": "joint-controller",
    "high-risk": False,
    "automated-decisions": False,
    "genai-public-cn": False,
    "gpai-provider-eu": False,
}

RUN_TOML = """\
num-server-rounds = 3
min-nodes = 3
batch-size = 32
purpose = "research"
mode = "deployment"
tls = true
node-auth = true
secagg = true
dp = true
dp-epsilon = 1.0
dp-delta = 1e-7
dp-accountant = "rdp"
dp-clip-norm = 1.0
dp-noise-multiplier = 1.1
dp-privacy-unit = "record"
server-country = "DE"
audit-log = true
aggregator-role = "joint-controller"
high-risk = false
automated-decisions = false
genai-public-cn = false
gpai-provider-eu = false
"""

MANIFEST_TOML = """\
schema = 1

[dataset]
name = "clinic-a-ecg"
source = "collected at clinic A"
licence = "CC-BY-4.0"
acquisition = "own-collection"
tdm-opt-out-checked = true
records = 50000
country = "DE"
intended-use = "any"

[data]
personal = true
sensitive = false
minors = false

[legal-basis]
gdpr = "consent"
pipl = "consent"
separate-consent = true

[impact-assessment]
reference = "DPIA-2026-001"
date = 2026-06-01
kept-years = 3

[retention]
days = 365
deletion-plan = "delete raw data after the project"

[roles]
role = "joint-controller"
contract-ref = "JCA-2026-04"

[transfer]
mechanism = "none"
ciio = false
important-data = false
"""


@dataclass
class RecordedRun:
    """Where the fixture put things, for assertions."""

    data_dir: Path
    run_id: str
    provenance: Path
    model: Path
    public_key: str
    checkpoints: list[Path] = field(default_factory=list)
    failed_rules: list[str] = field(default_factory=list)


def _write_checkpoint(path: Path, rnd: int) -> str:
    """Stand-in checkpoint bytes: the UI only hashes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = f"fedguard test checkpoint, round {rnd}\n".encode() * 64
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _epsilon(node: str, rnd: int) -> float:
    return round(0.9 * rnd + 0.1 * NODES.index(node), 3)


def _dp_metrics(node: str, rnd: int) -> dict[str, Any]:
    """Node 101 uses the documented metric names, the others the `dp-*` names clients send."""
    if node == "101":
        return {"epsilon": _epsilon(node, rnd), "delta": 1e-5, "privacy-budget": BUDGET,
                "noise-multiplier": 1.1, "sample-rate": 0.16, "clipped-fraction": 0.4}
    return {"dp-epsilon-spent": _epsilon(node, rnd), "dp-delta": 1e-5,
            "dp-epsilon-budget": BUDGET, "dp-noise-multiplier": 1.1, "dp-sample-rate": 0.16,
            "dp-clipped-fraction": 0.4 if node == "102" else -1.0, "dp-steps": 7.0}


def build_recorded_run(data_dir: Path, with_live_run: bool = False) -> RecordedRun:
    """A completed 3-round run (and optionally a second, still running one) in `data_dir`."""
    store = RunStore.in_dir(data_dir)
    try:
        return _build(store, data_dir, with_live_run)
    finally:
        store.close()


def _build(store: RunStore, data_dir: Path, with_live_run: bool) -> RecordedRun:
    run_dir = data_dir / "runs" / RUN_ID
    store.start_run(RUN_ID, RUN_CONFIG, num_rounds=3, headline="accuracy")
    store.add_event(RUN_ID, "run-started", f"run {RUN_ID} started")
    manifest = loads_manifest(MANIFEST_TOML)
    for node in NODES:
        digest = hashlib.sha256(f"{node}:{MANIFEST_TOML}".encode()).hexdigest()
        store.record_manifest(RUN_ID, node, digest, manifest.to_dict())
    checkpoints: list[tuple[int, str]] = []
    paths: list[Path] = []
    for rnd in (1, 2, 3):
        started = time.time()
        trained = []
        for part, node in enumerate(NODES):
            if node == "103" and rnd == 3:
                store.record_node_result(  # what clients/local_update.py reports on refusal
                    RUN_ID, rnd, node, "train", "refused",
                    {"num-examples": 0.0, "dp-epsilon-spent": _epsilon(node, 2),
                     "dp-epsilon-budget": BUDGET, "partition-id": part},
                )
                store.add_event(
                    RUN_ID, "node-refused", "node 103 refused: privacy budget would be exceeded",
                    rnd, node, {"reason": "budget"},
                )
                continue
            trained.append(node)
            store.record_node_result(
                RUN_ID, rnd, node, "train", "ok",
                {
                    "num-examples": 100 + 10 * part, "loss": 2.0 / rnd + 0.1 * part,
                    "accuracy": 0.3 * rnd - 0.02 * part, "train-time": 0.5,
                    "partition-id": part, **_dp_metrics(node, rnd),
                },
            )
            store.record_node_result(
                RUN_ID, rnd, node, "evaluate", "ok",
                {"num-examples": 30, "loss": 1.9 / rnd, "accuracy": 0.28 * rnd,
                 "partition-id": part},
            )
        secagg: dict[str, Any] = {"masked": trained, "dropped": [], "recovered": []}
        if rnd == 2:
            secagg = {"masked": list(NODES), "dropped": ["102"], "recovered": ["102"]}
            store.add_event(
                RUN_ID, "node-excluded", "node 102 dropped out after masking; mask recovered",
                rnd, "102",
            )
        path = run_dir / f"round-{rnd:04d}.pt"
        sha = _write_checkpoint(path, rnd)
        checkpoints.append((rnd, sha))
        paths.append(path)
        store.record_round(
            RUN_ID, rnd, started, len(trained),
            {
                "train_loss": 2.0 / rnd, "train_accuracy": 0.3 * rnd, "fed_loss": 1.9 / rnd,
                "fed_accuracy": 0.28 * rnd, "server_loss": 1.8 / rnd,
                "server_accuracy": 0.29 * rnd,
            },
            str(path), sha, extra={"secagg": secagg},
        )
        # what FederatedRun writes: every named metric per source (the charts read these)
        store.record_round_metrics(RUN_ID, rnd, "server",
                                   {"loss": 1.8 / rnd, "accuracy": 0.29 * rnd})
        store.record_round_metrics(RUN_ID, rnd, "federated", {"loss": 1.9 / rnd,
                                                              "accuracy": 0.28 * rnd,
                                                              "recall-cancer": 0.3 * rnd,
                                                              "examples": 90.0})
        store.record_round_metrics(RUN_ID, rnd, "train", {"loss": 2.0 / rnd})

    packs = load_packs(RUN_CONFIG["policy-packs"])
    report = evaluate(RUN_CONFIG, dict.fromkeys(NODES, manifest), packs)
    store.record_verdicts(RUN_ID, verdict_records(report))  # the server's own writer
    md_path, json_path = run_dir / "policy-report.md", run_dir / "policy-report.json"
    md_path.write_text(report.to_markdown("en"), encoding="utf-8")
    json_path.write_text(report.to_json(), encoding="utf-8")
    store.set_artifact(RUN_ID, "report-md", md_path)
    store.set_artifact(RUN_ID, "report-json", json_path)

    key = load_or_create_key(data_dir)  # the server's key; publishes signing-key.pub
    record = build_record(
        checkpoints[-1][1], checkpoints,
        {n: hashlib.sha256(n.encode()).hexdigest() for n in NODES},
        {n: {"epsilon": _epsilon(n, 2 if n == "103" else 3), "delta": 1e-5, "accountant": "rdp"}
         for n in NODES},
        {"enabled": True}, {"report_sha256": report.sha256()}, {"fedguard": "0.1.0"},
    )
    prov = run_dir / "provenance.json"
    write_record(prov, sign_record(record, key))
    store.set_artifact(RUN_ID, "provenance", prov)
    store.finish_run(RUN_ID, "completed")
    store.add_event(RUN_ID, "run-completed", f"run {RUN_ID} completed after 3 rounds")

    if with_live_run:
        store.start_run(LIVE_RUN_ID, {**RUN_CONFIG, "num-server-rounds": 5}, num_rounds=5)
        store.add_event(LIVE_RUN_ID, "run-started", f"run {LIVE_RUN_ID} started")
    return RecordedRun(
        data_dir=data_dir, run_id=RUN_ID, provenance=prov, model=paths[-1],
        public_key=public_key_b64(key), checkpoints=paths,
        failed_rules=report.failing_run_rules,
    )


# --- a real `streamlit run` on loopback, for the browser test ---------------------------------

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def streamlit_server(data_dir: Path, log_path: Path, timeout: float = 90) -> Iterator[str]:
    """`streamlit run assistant/app.py` on 127.0.0.1 with FEDGUARD_HOME=data_dir; yields the URL.

    The server is stopped (terminate, then kill) when the block exits, also on failure.
    """
    port = free_port()
    env = {**os.environ, "FEDGUARD_HOME": str(data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("FEDGUARD_LLM_BASE_URL", None)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "assistant" / "app.py"),
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(proc, url, timeout, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not answer on {url} within {timeout:.0f} s")
