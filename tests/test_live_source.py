"""RunStoreLiveSource: the assistant's live answers come from the run store, or say why not."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.answering import Assistant
from assistant.live_intents import LiveSource
from assistant.live_source import LEDGER_FILE, RunStoreLiveSource, compliance_summary
from privacy.compliance.manifest import loads_manifest
from privacy.dp.accounting import Release
from privacy.dp.ledger import PrivacyLedger
from server.store import RunStore
from tests.ui_fixtures import BUDGET, LIVE_RUN_ID, MANIFEST_TOML, RUN_ID, build_recorded_run


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("store")
    build_recorded_run(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def assistant(recorded: Path) -> Assistant:
    return Assistant(live=RunStoreLiveSource(recorded), use_env_llm=False)


def test_implements_the_protocol(recorded: Path) -> None:
    assert isinstance(RunStoreLiveSource(recorded), LiveSource)


def test_latest_run_summary(recorded: Path) -> None:
    summary = RunStoreLiveSource(recorded).latest_run_summary()
    assert summary is not None
    assert summary["run_id"] == RUN_ID
    assert summary["status"] == "completed"
    assert (summary["round"], summary["num_rounds"]) == (3, 3)
    assert summary["accuracy"] == pytest.approx(0.87)  # server accuracy of round 3
    assert summary["loss"] == pytest.approx(0.6)
    assert summary["epsilon"] == pytest.approx(2.8)  # the largest per-node epsilon
    assert summary["delta"] == pytest.approx(1e-5)
    assert summary["nodes"] == 3


def test_node_privacy_by_store_id_and_by_partition(recorded: Path) -> None:
    source = RunStoreLiveSource(recorded)
    by_id = source.node_privacy("101")
    assert by_id is not None
    assert by_id["epsilon"] == pytest.approx(2.7)
    assert by_id["budget"] == pytest.approx(BUDGET)
    assert by_id["releases"] == 3
    assert by_id["accountant"] == "rdp"
    # "node 2" in a simulation means partition 2, which is node 103: it refused round 3, so its
    # spend stays at round 2's and only two releases count.
    by_partition = source.node_privacy("2")
    assert by_partition is not None
    assert by_partition["epsilon"] == pytest.approx(2.0)
    assert by_partition["releases"] == 2
    assert source.node_privacy("999") is None


def test_node_privacy_from_client_metric_names(recorded: Path) -> None:
    """Nodes 102/103 report `dp-epsilon-spent`, `dp-epsilon-budget`, `dp-delta`."""
    data = RunStoreLiveSource(recorded).node_privacy("102")
    assert data is not None
    assert data["epsilon"] == pytest.approx(2.8)
    assert data["budget"] == pytest.approx(BUDGET) and data["delta"] == pytest.approx(1e-5)


def test_node_privacy_falls_back_to_a_simulated_nodes_ledger(tmp_path: Path) -> None:
    """In a simulation the store knows Flower's random node ids; "node 3" is partition 3,
    whose ledger lives under <data dir>/nodes/partition-3/."""
    store = RunStore.in_dir(tmp_path)
    store.start_run("r1", {"dp": True, "dp-epsilon": 8.0, "node-privacy-budget": 6.0}, 2)
    store.close()
    ledger = PrivacyLedger(tmp_path / "nodes" / "partition-3" / LEDGER_FILE)
    ledger.set_budget("partition-3", 50.0, 1e-5)
    for rnd in (1, 2):
        (rid,) = ledger.reserve("partition-3", "r1", rnd, [("dp-sgd", Release(1.1, 0.1, 50))],
                                num_records=500, fingerprint="f" * 64).reservations
        ledger.settle(rid, Release(1.1, 0.1, 50))
    data = RunStoreLiveSource(tmp_path).node_privacy("3")
    assert data is not None
    assert data["releases"] == 2 and data["run_id"] == "r1"
    assert data["budget"] == 6.0  # what clients/node_privacy.py gives a simulated node
    assert data["epsilon"] == pytest.approx(
        ledger.spent("partition-3"), rel=1e-9
    )
    assert data["epsilon"] > 0
    assert RunStoreLiveSource(tmp_path).node_privacy("4") is None
    assert not (tmp_path / "nodes" / "partition-4").exists()  # looking creates nothing


def test_latest_compliance_from_stored_verdicts(recorded: Path) -> None:
    source = RunStoreLiveSource(recorded)
    overall = source.latest_compliance(None)
    assert overall is not None
    assert overall["run_id"] == RUN_ID
    assert overall["verdict"] == "warn"  # the fixture's simulation run has only warnings
    assert overall["warnings"] and not overall["failed"]
    assert overall["source"] == "recorded"
    gdpr = source.latest_compliance("gdpr")
    assert gdpr is not None and gdpr["pack"] == "gdpr"
    assert gdpr["verdict"] == "pass"  # the warnings are all baseline rules
    # A pack the run was not checked against is evaluated now on its stored manifests,
    # and the answer says so rather than passing it off as a recorded verdict.
    pipl = source.latest_compliance("pipl")
    assert pipl is not None and pipl["pack"] == "pipl" and pipl["source"] == "evaluated-now"


def test_compliance_evaluated_from_manifests_when_no_verdicts(tmp_path: Path) -> None:
    store = RunStore.in_dir(tmp_path)
    store.start_run("r1", {"dp": False, "mode": "deployment", "policy-packs": "baseline"}, 1)
    store.record_manifest("r1", "n1", "0" * 64, loads_manifest(MANIFEST_TOML).to_dict())
    store.close()
    result = RunStoreLiveSource(tmp_path).latest_compliance(None)
    assert result is not None
    assert result["source"] == "evaluated-now"
    assert result["verdict"] == "fail"
    assert "P1.dp-for-personal-data" in result["failed"]  # personal data without DP


def test_no_store_means_no_data(tmp_path: Path) -> None:
    source = RunStoreLiveSource(tmp_path / "nothing-here")
    assert source.latest_run_summary() is None
    assert source.node_privacy("1") is None
    assert source.latest_compliance(None) is None


def test_running_run_without_rounds(tmp_path: Path) -> None:
    build_recorded_run(tmp_path, with_live_run=True)
    summary = RunStoreLiveSource(tmp_path).latest_run_summary()
    assert summary is not None
    assert summary["run_id"] == LIVE_RUN_ID
    assert summary["status"] == "running"
    assert "accuracy" not in summary


def test_compliance_summary_precedence() -> None:
    rows = [{"rule_id": "a", "verdict": "warn"}, {"rule_id": "b", "verdict": "fail"},
            {"rule_id": "c", "verdict": "pass"}]
    assert compliance_summary(rows) == {"verdict": "fail", "failed": ["b"], "warnings": ["a"]}
    assert compliance_summary(rows[2:])["verdict"] == "pass"


def test_assistant_answers_live_questions_from_the_store(assistant: Assistant) -> None:
    answer = assistant.ask("How much privacy budget has node 101 spent?")
    assert not answer.abstained and answer.kind == "live"
    assert "2.70" in answer.answer and "90.0%" in answer.answer
    assert answer.sources[0].citation == f"run {RUN_ID}"
    zh = assistant.ask("最近一次运行符合GDPR吗？")
    assert zh.lang == "zh" and not zh.abstained
    assert "GDPR" in zh.answer and "结论：通过" in zh.answer  # the gdpr pack alone passes
    status = assistant.ask("What is the status of the latest run?")
    assert "completed" in status.answer and "3/3" in status.answer


def test_unreadable_store_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "runs.sqlite").write_bytes(b"this is not sqlite" * 100)
    answer = Assistant(live=RunStoreLiveSource(tmp_path), use_env_llm=False).ask(
        "What is the status of the latest run?"
    )
    assert answer.abstained
    assert "could not read the run store" in answer.answer
