"""Who may train: the admission gate.

Before a node may train it answers an admission query: its data manifest (never data) and
whether its data fits the task. Nodes are asked lazily, as rounds sample them (before round 1
only until min-nodes are eligible), so a federation of 50,000 nodes is not queried up front.
The policy packs check the run and each manifest. A run-level `fail` blocks the run before any
training; a node that fails is excluded with one line naming the rule, what it checks and the
fix. Nodes that connect later are checked the same way before they may train. At the end the
final model gets an Ed25519-signed provenance record.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from clients.task import wire
from privacy.compliance.audit import AuditLog
from privacy.compliance.manifest import Manifest, ManifestError, loads_manifest, manifest_sha256
from privacy.compliance.policy import run_policy_gate
from privacy.compliance.policy.errors import PolicyError
from privacy.compliance.policy.report import PolicyReport, Verdict
from privacy.files import atomic_write
from server.rounds.sampling import sampling_order
from server.run import FederatedRun
from server.store.records import VerdictRecord

GATE_OFF = "none"
REPORT_EVERY_S = 30.0  # simulations: the longest the report files lag behind new verdicts
RETRY_UNAVAILABLE_S = 2.0  # a node the SuperLink reported unreachable is asked again after this
# Errors the SuperLink itself returns for a query (the node missed its heartbeats, the query
# or its reply expired): the node was not reached, so this says nothing about its data.
UNREACHED = {ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE,
             ErrorCode.REPLY_MESSAGE_UNAVAILABLE}


class GateFailed(Exception):
    """The run may not start: a run-level policy failure or too few admissible nodes."""


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def _rule_line(report: PolicyReport | None, rule: str, node: str | None) -> str:
    """A rule id, what it checks and the fix (the first sentence of its explanation)."""
    v = report.find(rule, node) if report else None
    if v is None:
        return rule
    return f"{rule} ({v.title.get('en', '')}): {_first_sentence(v.explain.get('en', ''))}"


def exclusion_line(report: PolicyReport | None, node: str, rules: list[str]) -> str:
    """One line per excluded node: id, rule, what it checks, the fix."""
    return f"node {node}: " + "; ".join(_rule_line(report, r, node) for r in rules)


def run_block_lines(report: PolicyReport) -> list[str]:
    """The failing run-level rules, each with what it checks and the fix."""
    return [f"run: {_rule_line(report, r, None)}" for r in report.failing_run_rules]


def verdict_records(report: PolicyReport) -> list[VerdictRecord]:
    """A policy report as the run store keeps it (what the UI and the assistant read)."""
    return [VerdictRecord(rule_id=v.rule_id, pack=v.pack, node_id=v.node or "",
                          verdict=v.status, severity=v.severity, citation=v.citation,
                          pid=v.pid, title=dict(v.title), explain=dict(v.explain),
                          evidence=v.evidence, note=v.note, verified=v.verified)
            for v in report.verdicts]


def admission_queries(node_ids: Iterable[int]) -> list[Message]:
    """The admission query: each node answers with its manifest and its data check.

    Each query carries a nonce so no two share an object. A SuperNode's object store keeps
    objects by content hash across runs, and when it drops a message of a run that has ended
    (one queued before a SuperLink restart) it leaves that message's objects registered but
    empty (Flower 1.41). An identical query of the resumed run would then wait for ever for
    content the node never pulls. This was seen in the crash-recovery test.
    """
    return [Message(content=RecordDict({wire.CONFIG: ConfigRecord(
        {"query": secrets.token_hex(8)})}), dst_node_id=nid,
        message_type=wire.ADMISSION_QUERY) for nid in node_ids]


def read_answer(reply: Message) -> dict[str, Any]:
    """One admission answer; an error reply becomes {"error": [last line of the reason]}, or
    {"unreached": reason} when the SuperLink answered because the node could not be reached."""
    if reply.has_error():
        last = (reply.error.reason or "").strip().splitlines()[-1:] or [""]
        if reply.error.code in UNREACHED:
            return {"unreached": last[0]}
        return {"error": last}
    rec = reply.content.config_records.get(wire.ADMISSION)
    return dict(rec) if rec is not None else {}


class AdmissionGate:
    """Decides which nodes may train: their data fits the task and their manifest passes the
    policy packs. Runs before round 1 (fail fast) and for every node that connects later."""

    def __init__(self, run: FederatedRun, policy: Mapping[str, Any], data_dir: Path,
                 audit: AuditLog, timeout: float, min_nodes: int, mode: str,
                 metric_names: list[str] | None = None) -> None:
        self.min_nodes = min_nodes
        self.run = run
        self.config = dict(policy)
        self.data_dir = data_dir
        self.audit = audit
        self.timeout = timeout
        self.mode = mode
        self.enabled = str(self.config.get("policy-packs", "")).strip().lower() != GATE_OFF
        self.allowed: set[int] = set()
        self.checked: set[int] = set()
        self.excluded: dict[str, str] = {}  # node -> one line: rule, check, fix
        # Nodes that did not answer within the timeout (a node still starting its ClientApp,
        # a busy machine): their query stays out, and they join the round after they answer.
        self.silent: dict[str, str] = {}  # node -> one line
        # Nodes the SuperLink could not reach (a SuperNode reconnecting after a SuperLink
        # restart, a network blip): not judged, asked again once they are listed after a pause.
        self.unreached: dict[int, float] = {}  # node -> when it may be asked again
        self._pending: dict[str, int] = {}  # admission message id -> node
        self._queued: set[int] = set()  # prefetched, not pushed yet
        self.manifest_sha: dict[str, str] = {}
        # every manifest seen so far: facts across nodes (who receives the model, foreign
        # parties) are judged over the whole federation, not one batch of newcomers
        self.manifests: dict[str, Manifest | None] = {}
        # the run's task's metrics (server's own task), else the first answer's
        self.metric_names: list[str] | None = metric_names
        # the verdicts so far: run-level ones, and each judged node's own
        self._run_verdicts: list[Verdict] = []
        self._node_verdicts: dict[str, list[Verdict]] = {}
        self._report: PolicyReport | None = None  # what the report files hold
        self._stale = False  # verdicts arrived since the report files were written
        self._written_at = 0.0
        self._packs: list[dict[str, Any]] = []
        self._evaluated_on = ""
        self._received: list[tuple[str, str, int, int, dict[str, Any]]] = []

    def check_run(self) -> None:
        """Run-level rules, before waiting for any node: a failure means no training at all."""
        if not self.enabled:
            self.run.event("policy-gate-off", "policy-packs='none': no policy checks for this run")
            return
        self._evaluate({})
        self._write_report()

    def open(self, grid: Grid, wait: float) -> None:
        """Before round 1: admit connected nodes in round 1's sampling order (so they are the
        ones round 1 samples first), only as many as are still missing, until min-nodes are
        eligible. Blocks the run at once when every connected node has been checked and too
        few pass, and after `wait` seconds otherwise - never a silent wait."""
        deadline = time.monotonic() + wait
        next_log = 0.0
        first = self.run.global_round(1)
        while True:
            if self._pending:  # a silent node's late answer
                self.admit(grid, [])
            connected = sorted(grid.get_node_ids())
            eligible = self.allowed & set(connected)
            unchecked = [n for n in sampling_order(connected, self.run.ctx.seed, first)
                         if n not in self.checked and self._may_ask(n)]
            if len(eligible) < self.min_nodes and unchecked:
                self.admit(grid, unchecked[:self.min_nodes - len(eligible)])
                continue
            if len(eligible) >= self.min_nodes:
                return
            all_present = self.mode == "simulation" or len(connected) >= self.min_nodes
            # a silent or unreached node may still answer before the deadline
            decided = not self.silent and not (self.unreached.keys() & set(connected))
            now = time.monotonic()
            if (all_present and decided and self.excluded) or now >= deadline:
                raise GateFailed(self._shortfall(len(eligible), len(connected), now >= deadline,
                                                 wait))
            if now >= next_log:
                log(INFO, "fedguard: waiting for nodes: %d eligible of %d connected, "
                    "min-nodes=%d", len(eligible), len(connected), self.min_nodes)
                next_log = now + 10.0
            time.sleep(0.5)

    def _shortfall(self, eligible: int, connected: int, timed_out: bool, wait: float) -> str:
        head = (f"only {eligible} of {connected} connected node(s) are eligible; "
                f"min-nodes={self.min_nodes}")
        if timed_out and not self.excluded:
            head += f" (waited {wait:.0f} s for nodes to connect; raise node-wait-timeout)"
        lines = [self.excluded[n] for n in sorted(self.excluded)]
        lines += [self.silent[n] for n in sorted(self.silent)]
        lines += [f"node {n}: the SuperLink could not reach it (no heartbeat)"
                  for n in sorted(self.unreached)]
        return "; ".join([head, *lines])

    def admit(self, grid: Grid, node_ids: Iterable[int]) -> set[int]:
        """Check nodes not seen before; return the ones allowed to train."""
        ids = set(node_ids)
        if self._queued and hasattr(grid, "flush_riders"):
            grid.flush_riders()
        if self._pending:  # late answers, without waiting for them
            self._judge(self._collect(grid, 0.0), late=True)
        asked = {n for n in self._pending.values() if n in ids and str(n) not in self.silent}
        if asked:  # prefetched for this round: wait for those answers as for new ones
            self._await(grid, asked)
        new = sorted(n for n in ids - self.checked if self._may_ask(n))
        if new:
            self._check(grid, new)
        return self.allowed & ids

    def _may_ask(self, nid: int) -> bool:
        """False while a node the SuperLink could not reach is in its pause."""
        return time.monotonic() >= self.unreached.get(nid, 0.0)

    def prefetch(self, grid: Grid, node_ids: Iterable[int]) -> None:
        """Ask nodes a later round will sample, with the next exchange (the grid's riders):
        their answers are judged when that round admits them, so the round does not wait for
        an admission exchange of its own. Nothing changes which nodes are chosen, and no node
        trains before it was admitted."""
        if not hasattr(grid, "ride_along"):
            return
        new = [n for n in node_ids
               if n not in self.checked and n not in self._queued and self._may_ask(n)]
        if not new:
            return
        self._queued.update(new)

        def pushed(pairs: list[tuple[str, Message]]) -> None:
            for mid, msg in pairs:
                nid = msg.metadata.dst_node_id
                self._queued.discard(nid)
                self.checked.add(nid)
                self._pending[mid] = nid

        grid.ride_along(admission_queries(new), pushed)

    def _exclude(self, nid: int, line: str, rules: list[str]) -> None:
        self.excluded[str(nid)] = line
        self.run.node_result(0, nid, "admission", "excluded", {"reason": line, "rules": rules})
        self.run.event("node-excluded", line, 0, nid, {"rules": rules})

    def _collect(self, grid: Grid, timeout: float, want: set[int] | None = None
                 ) -> dict[str, dict[str, Any]]:
        """Answers to pending admission queries by node, polling up to `timeout` seconds
        (until the nodes in `want` answered, when given). A reply is matched by the query it
        answers: the SuperLink answers for a dead node from its own id."""
        deadline = time.monotonic() + timeout
        answers: dict[str, dict[str, Any]] = {}
        delay = 0.02
        while self._pending:
            for reply in grid.pull_messages(list(self._pending)):
                nid = self._pending.pop(reply.metadata.reply_to_message_id, None)
                if nid is not None:
                    answers[str(nid)] = read_answer(reply)
            waiting = (set(self._pending.values()) & want) if want is not None else self._pending
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(0.5, delay * 2)
        return answers

    def _check(self, grid: Grid, node_ids: list[int]) -> None:
        self.checked.update(node_ids)
        mids = list(grid.push_messages(admission_queries(node_ids)))
        self._pending.update(zip(mids, node_ids, strict=False))
        self._await(grid, set(node_ids))

    def _await(self, grid: Grid, node_ids: set[int]) -> None:
        """Wait up to the timeout for these nodes' answers (and take any other that came);
        a node that stays silent joins a round after it answers."""
        answers = self._collect(grid, self.timeout, node_ids)
        still = set(self._pending.values())
        for nid in sorted(node_ids):
            if nid in still:
                line = (f"node {nid}: did not answer the admission query within "
                        f"{self.timeout:g} s; it joins the round after it answers")
                self.silent[str(nid)] = line
                self.run.event("node-silent", line, 0, nid)
        self._judge(answers)

    def _judge(self, answers: Mapping[str, Any], late: bool = False) -> None:
        """Admit or exclude the nodes that answered."""
        data_ok: list[int] = []
        for key, answer in sorted(answers.items()):
            nid = int(key)
            was_silent = self.silent.pop(key, None) is not None
            if "unreached" in answer:  # not judged: asked again when it is back
                self.checked.discard(nid)
                if nid not in self.unreached:
                    self.run.event("node-unreached", f"node {nid}: the SuperLink could not "
                                   f"reach it ({answer['unreached']}); it is asked again when "
                                   "it reconnects", 0, nid)
                self.unreached[nid] = time.monotonic() + RETRY_UNAVAILABLE_S
                continue
            self.unreached.pop(nid, None)
            if was_silent and late:
                self.run.event("node-answered", f"node {nid} answered the admission query "
                               "late", 0, nid)
            if "error" in answer:
                self._exclude(nid, f"node {nid}: failed the admission query: "
                              f"{answer['error'][0]}", ["admission"])
                continue
            if answer.get("data-error"):
                self._exclude(nid, f"node {nid}: data does not fit the run's task: "
                              f"{answer['data-error']}", ["task-data"])
                continue
            names = sorted(str(n) for n in answer.get("metric-names", []))
            if self.metric_names is None:
                self.metric_names = names
            elif names != self.metric_names:
                self._exclude(nid, f"node {nid}: its task reports metrics {names}, the run's "
                              f"nodes {self.metric_names}; run the same task version",
                              ["task-data"])
                continue
            data_ok.append(nid)
            if not self.enabled:
                continue
            self.manifests[key] = self._manifest(nid, answer)
        if self._received:  # one audit write for the batch, before its verdicts
            self.run.events(self._received)
            self._received = []
        if not self.enabled:
            self.allowed.update(data_ok)
            return
        if not data_ok:
            return
        # A simulation has no cross-border facts (facts.node_facts: transfers need a
        # deployment), so a node's verdicts depend on its own manifest only and only the
        # newcomers are judged; a deployment judges every manifest known so far, as the facts
        # across nodes (who receives the model, foreign parties) need the whole federation.
        judged = ({str(n): self.manifests[str(n)] for n in data_ok} if self.mode == "simulation"
                  else self.manifests)
        report = self._evaluate(judged)
        failing = report.failing_nodes
        for nid in data_ok:
            rules = failing.get(str(nid), [])
            if rules:
                self._exclude(nid, exclusion_line(report, str(nid), rules), rules)
            else:
                self.allowed.add(nid)
        if failing or self.mode != "simulation" or (
                time.monotonic() - self._written_at >= REPORT_EVERY_S):
            self._write_report()

    def _manifest(self, nid: int, answer: Mapping[str, Any]) -> Manifest | None:
        data = answer.get("manifest")
        if not isinstance(data, bytes):
            why = answer.get("manifest-error") or "sent no data manifest"
            self.run.event("manifest-missing", f"node {nid}: {why}", 0, nid)
            return None
        sha = manifest_sha256(data)
        try:
            manifest = loads_manifest(data, source=f"node {nid} manifest")
        except ManifestError as err:
            self.run.event("manifest-invalid", str(err), 0, nid, {"sha256": sha})
            return None
        self.manifest_sha[str(nid)] = sha
        self.run.store.record_manifest(self.run.run_id, nid, sha, manifest.to_dict())
        self._received.append(("manifest-received", f"node {nid} manifest {sha[:12]}", 0, nid,
                               {"sha256": sha}))
        if manifest.records:
            self.run.declared_records[str(nid)] = int(manifest.records)
        return manifest

    def _evaluate(self, manifests: Mapping[str, Manifest | None]) -> PolicyReport:
        """Judge the run and `manifests`; their verdicts join the run's (store and report)."""
        try:
            report = run_policy_gate(self.config, manifests, self.data_dir, self.audit,
                                     self.run.run_id)
        except PolicyError as err:
            raise GateFailed(f"policy packs could not be evaluated: {err}") from None
        self.run.store.record_verdicts(self.run.run_id, verdict_records(report))
        self._run_verdicts = [v for v in report.verdicts if v.node is None]
        for node in {v.node for v in report.verdicts if v.node is not None}:
            self._node_verdicts[node] = [v for v in report.verdicts if v.node == node]
        self._packs, self._evaluated_on = report.packs, report.evaluated_on
        self._stale = True
        if report.failing_run_rules:
            self._write_report()
            raise GateFailed("; ".join(run_block_lines(report)))
        return report

    @property
    def report(self) -> PolicyReport | None:
        """Every verdict of the run so far (None before the first evaluation). Reading it
        brings the report files up to date, so a provenance record built from it always
        matches the stored report."""
        if self._stale:
            self._write_report()
        return self._report

    def _write_report(self) -> None:
        """Write the compliance report (Markdown and JSON) with every verdict so far. At scale
        a simulation rewrites it at most every REPORT_EVERY_S seconds while nodes join (and at
        once when one fails); reading `report` catches up."""
        verdicts = self._run_verdicts + [v for node in sorted(self._node_verdicts)
                                         for v in self._node_verdicts[node]]
        report = PolicyReport(verdicts, self._packs, self._evaluated_on)
        lang = str(self.config.get("report-lang", "en"))
        lang = lang if lang in ("en", "zh") else "en"
        for kind, name, text in (
            ("report-md", "compliance-report.md", report.to_markdown(lang)),
            ("report-json", "compliance-report.json", report.to_json(lang)),
        ):
            path = self.run.run_dir / name
            sha = atomic_write(path, text.encode("utf-8"))
            self.run.store.set_artifact(self.run.run_id, kind, path, sha)
        self._report, self._stale, self._written_at = report, False, time.monotonic()
