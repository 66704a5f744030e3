"""The task contract from a user's side: a task the core has never seen trains through the real
round code with DP and secure aggregation, and every broken task gets its one-line error.

The runs here are in process: `server.driver.drive_run` (the ServerApp's whole run) over a Grid
that hands each Message, serialised as on the wire, to the real ClientApp.
"""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.supercore.task_identity import TaskIdentity
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from clients.client_app import app as client_app
from clients.node.manifest import ManifestMissing, manifest_bytes
from clients.task import (
    NodeData,
    Task,
    TaskContext,
    TaskError,
    TensorSchema,
    check_node_data,
    check_private_model,
    load_task,
)
from clients.task.checks import expected_metric_names
from clients.task.loading import _import
from clients.task.run_config import defaults
from clients.task.scaffold import MANIFEST_TOML, pyproject
from clients.training.node import NodeRuntime
from privacy.compliance.audit import AuditLog
from privacy.compliance.provenance import load_record, verify_record
from privacy.compliance.signing import read_public_key
from privacy.dp.ledger import PrivacyLedger
from server.compliance.gate import AdmissionGate, GateFailed
from server.compliance.policy_view import policy_config
from server.driver import RunRefused, drive_run
from server.store import RunStore
from server.store.records import BLOCKED, COMPLETED
from tests.conftest import ROOT
from tests.helpers.grids import InProcessGrid
from tests.helpers.rounds import make_run

NODE_IDS = [11, 12, 13, 14]
_names = (f"user_task_{i}" for i in itertools.count())

# A task no part of fedguard knows: 7 features, 5 classes, the user's own nn.Module. Real nodes
# read an .npz file; virtual nodes draw Gaussian blobs, each node slightly shifted.
NOVEL_TASK = '''
"""Five kinds of sample from seven measurements."""
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clients.task import NodeData, Task, TensorSchema

HERE = Path(__file__).parent
FEATURES, CLASSES = 7, 5
CENTRES = np.random.default_rng(7).normal(0.0, 1.0, (CLASSES, FEATURES))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 24), nn.Tanh(), nn.Linear(24, CLASSES))

    def forward(self, x):
        return self.body(x)


def blobs(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = CENTRES[y] + shift + rng.normal(0.0, 1.0, (n, FEATURES))
    return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


def load_data(ctx):
    if ctx.data_path is not None:
        with np.load(ctx.data_path) as f:
            ds = TensorDataset(torch.tensor(f["x"], dtype=torch.float32), torch.tensor(f["y"]))
        return NodeData(train=ds)
    pid = ctx.partition_id
    return NodeData(train=blobs(150, 10 + pid, 0.1 * pid), val=blobs(40, 50 + pid, 0.1 * pid))


task = Task(model=Net, load_data=load_data, server_data=lambda ctx: blobs(300, 99),
            schema=TensorSchema((FEATURES,), num_classes=CLASSES),
            demo_manifest=HERE / "manifest.toml", name="novel")
'''


class AppGrid(InProcessGrid):
    """Every node runs fedguard's real ClientApp (Flower's own dispatch by message type)."""

    def deliver(self, msg: Message, context: Context) -> Message | None:
        return client_app(msg, context)


@pytest.fixture(autouse=True)
def _identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield


@pytest.fixture
def user_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`write(source)` puts a task module in a new app directory on sys.path (as Flower does
    for the installed FAB) and returns its run-config key; the modules are forgotten after."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(pyproject("user-app"), encoding="utf-8")
    (app / "manifest.toml").write_text(MANIFEST_TOML.format(name="user-app"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(app))
    written: list[str] = []

    def write(source: str, attr: str = "task") -> str:
        name = next(_names)
        (app / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(name)
        return f"{name}:{attr}"

    write.app = app  # type: ignore[attr-defined]
    yield write
    for name in written:
        sys.modules.pop(name, None)
    _import.cache_clear()


def run_config(tmp_path: Path, task: str, **overrides: Any) -> dict[str, Any]:
    """A complete run config (what Flower hands the apps: every declared key)."""
    return {**defaults(), "task": task, "data-dir": str(tmp_path / "store"),
            "min-nodes": 3, **{k.replace("_", "-"): v for k, v in overrides.items()}}


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --- a new task, end to end ------------------------------------------------------------------
@pytest.mark.slow
def test_unseen_task_trains_with_dp_and_secagg_and_a_mismatched_node_is_left_out(
        tmp_path: Path, user_app: Any) -> None:
    key = user_app(NOVEL_TASK)
    cfg = run_config(tmp_path, key, dp=True, secagg=True, num_server_rounds=4, local_epochs=1,
                     lr=0.1, batch_size=16)
    grid = AppGrid(NODE_IDS, cfg)
    # The fourth node exported six features instead of seven.
    bad = tmp_path / "node-4.npz"
    np.savez(bad, x=np.zeros((20, 6), dtype=np.float32), y=np.zeros(20, dtype=np.int64))
    grid.contexts[NODE_IDS[3]].node_config["data-path"] = str(bad)

    assert drive_run(grid, cfg, 1, "simulation") == COMPLETED
    store = RunStore.in_dir(cfg["data-dir"])
    (excluded,) = store.events("1", "node-excluded")
    assert excluded["message"] == (
        f"node {NODE_IDS[3]}: data does not fit the run's task: training set item 0: features "
        "have shape (6,), the task expects (7,); export the same features as the other nodes")
    trained = {r["node_id"] for r in store.node_results("1", "train") if r["status"] == "ok"}
    assert trained == {str(n) for n in NODE_IDS[:3]}
    acc = [m.value for m in store.round_metrics("1")
           if m.source == "server" and m.name == "accuracy"]
    # Chance is 0.2; four DP draws went from 0.56-0.64 after round 1 to 0.68-0.73.
    assert len(acc) == 4 and acc[-1] >= acc[0] + 0.05 and acc[-1] >= 0.6, acc
    data_dir = Path(cfg["data-dir"])
    for i in range(3):
        ledger = PrivacyLedger(data_dir / "nodes" / f"partition-{i}" / "privacy-ledger.sqlite",
                               create=False)
        rounds = [e.round for e in ledger.releases() if e.kind == "dp-sgd"]
        assert rounds == [1, 2, 3, 4]
        (source,) = ledger.sources()
        assert 0 < ledger.spent(source) <= 8.0 + 1e-6
    assert not (data_dir / "nodes" / "partition-3" / "privacy-ledger.sqlite").exists()
    signed = load_record(store.artifacts("1")["provenance"]["path"])
    assert verify_record(signed, read_public_key(data_dir / "signing-key.pub")).ok
    assert sorted(signed["record"]["privacy"]) == sorted(str(n) for n in NODE_IDS[:3])


# Token ids into an nn.Embedding, and a layer of the user's own (a learnt temperature, with its
# per-sample gradient registered for Opacus): integer features, and a model the default
# dp-grad-mode='auto' must train with Opacus hooks since expanded weights cannot expand it.
TOKEN_TASK = '''
from pathlib import Path

import numpy as np
import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.utils.data import TensorDataset

from clients.task import NodeData, Task, TensorSchema

HERE = Path(__file__).parent
VOCAB, LENGTH, TOPICS = 120, 10, 3


class Temperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.ones(TOPICS))

    def forward(self, x):
        return x * self.t


@register_grad_sampler(Temperature)
def _per_sample(layer, activations, backprops):
    return {layer.t: activations[0] * backprops}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 12)
        self.head = nn.Linear(12, TOPICS)
        self.temp = Temperature()

    def forward(self, x):
        return self.temp(self.head(self.emb(x).mean(1)))


def draw(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, TOPICS, n)
    own = y[:, None] * (VOCAB // TOPICS) + rng.integers(0, VOCAB // TOPICS, (n, LENGTH))
    x = np.where(rng.random((n, LENGTH)) < 0.6, own, rng.integers(0, VOCAB, (n, LENGTH)))
    return TensorDataset(torch.tensor(x, dtype=torch.long), torch.tensor(y))


def load_data(ctx):
    return NodeData(train=draw(200, 10 + ctx.partition_id), val=draw(40, 50 + ctx.partition_id))


task = Task(model=Net, load_data=load_data, server_data=lambda ctx: draw(300, 99),
            schema=TensorSchema((LENGTH,), num_classes=TOPICS, input_dtype="int"),
            demo_manifest=HERE / "manifest.toml", name="tokens")
'''


@pytest.mark.slow
def test_a_token_task_with_its_own_layer_trains_with_dp(tmp_path: Path, user_app: Any) -> None:
    key = user_app(TOKEN_TASK)
    cfg = run_config(tmp_path, key, dp=True, num_server_rounds=3, local_epochs=2, lr=0.5,
                     batch_size=32, federated_evaluation=False)
    grid = AppGrid(NODE_IDS[:3], cfg)
    assert drive_run(grid, cfg, 1, "simulation") == COMPLETED
    store = RunStore.in_dir(cfg["data-dir"])
    assert not store.events("1", "node-excluded")
    acc = [m.value for m in store.round_metrics("1")
           if m.source == "server" and m.name == "accuracy"]
    assert len(acc) == 3 and acc[-1] >= 0.6, acc  # chance is 1/3
    ledger = PrivacyLedger(Path(cfg["data-dir"]) / "nodes" / "partition-0" /
                           "privacy-ledger.sqlite", create=False)
    assert [e.round for e in ledger.releases() if e.kind == "dp-sgd"] == [1, 2, 3]


# numpy's float64 straight into TensorDataset, for features and a regression target, as many
# users write it: batches are cast to the model's float32, not refused by torch.
FLOAT64_TASK = '''
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from clients.task import NodeData, Task, TensorSchema

HERE = Path(__file__).parent
W = np.random.default_rng(3).normal(size=5)


def draw(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, 5))
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(x @ W))


def load_data(ctx):
    return NodeData(train=draw(120, ctx.partition_id), val=draw(30, 40 + ctx.partition_id))


task = Task(model=lambda: nn.Linear(5, 1), load_data=load_data, kind="regression",
            server_data=lambda ctx: draw(200, 99), schema=TensorSchema((5,)),
            demo_manifest=HERE / "manifest.toml", name="float64")
'''


@pytest.mark.parametrize("dp", [False, True])
def test_float64_data_trains_as_the_models_float32(tmp_path: Path, user_app: Any,
                                                   dp: bool) -> None:
    key = user_app(FLOAT64_TASK)
    cfg = run_config(tmp_path, key, dp=dp, num_server_rounds=3, local_epochs=2, lr=0.05,
                     batch_size=16)
    assert drive_run(AppGrid(NODE_IDS[:3], cfg), cfg, 1, "simulation") == COMPLETED
    store = RunStore.in_dir(cfg["data-dir"])
    mse = [m.value for m in store.round_metrics("1") if m.source == "server" and m.name == "mse"]
    assert len(mse) == 3 and all(np.isfinite(mse)), mse
    trained = [r for r in store.node_results("1", "train") if r["status"] == "ok"]
    assert len(trained) == 9  # 3 nodes x 3 rounds, none refused or failed
    if not dp:  # under DP, 120 examples a node at epsilon 8 are too few to learn from
        assert mse[-1] < 0.5 * mse[0], mse


FLOAT_LABELS_TASK = FLOAT64_TASK.replace(
    "torch.from_numpy(x @ W))", "torch.from_numpy((x @ W > 0).astype(np.float64)))").replace(
    'kind="regression"', 'kind="classification"').replace(
    "nn.Linear(5, 1)", "nn.Linear(5, 2)").replace("TensorSchema((5,))",
                                                  "TensorSchema((5,), num_classes=2)")


def test_whole_float_labels_train_as_classes(tmp_path: Path, user_app: Any) -> None:
    """Labels read from a numeric table are floats (0.0, 1.0): the default loss takes them as
    the class indices they are; soft labels ([batch, classes]) stay probabilities."""
    key = user_app(FLOAT_LABELS_TASK)
    cfg = run_config(tmp_path, key, num_server_rounds=3, local_epochs=2, lr=0.1, batch_size=16)
    assert drive_run(AppGrid(NODE_IDS[:3], cfg), cfg, 1, "simulation") == COMPLETED
    store = RunStore.in_dir(cfg["data-dir"])
    acc = [m.value for m in store.round_metrics("1")
           if m.source == "server" and m.name == "accuracy"]
    assert len(acc) == 3 and acc[-1] >= 0.9, acc  # a linear boundary: learnt
    loss = Task(model=nn.Linear, load_data=lambda: _ds()).criterion()
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    assert torch.equal(loss(logits, torch.tensor([1.0, 0.0])),
                       nn.CrossEntropyLoss()(logits, torch.tensor([1, 0])))
    soft = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    assert torch.equal(loss(logits, soft), nn.CrossEntropyLoss()(logits, soft))


BATCHNORM_TASK = '''
from torch import nn
from torch.utils.data import TensorDataset
import torch
from clients.task import Task

def model():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

def load_data(ctx):
    ds = TensorDataset(torch.rand(32, 4), torch.randint(0, 2, (32,)))
    return ds, ds

task = Task(model=model, load_data=load_data)
'''


def test_model_opacus_cannot_privatise_is_refused_before_round_1(tmp_path: Path,
                                                                 user_app: Any) -> None:
    cfg = run_config(tmp_path, user_app(BATCHNORM_TASK), dp=True, secagg=True)
    grid = AppGrid(NODE_IDS[:3], cfg)
    assert drive_run(grid, cfg, 1, "simulation") == BLOCKED
    store = RunStore.in_dir(cfg["data-dir"])
    error = store.get_run("1")["error"]
    assert error.startswith("the task's model cannot be trained with DP-SGD: BatchNorm1d at "
                            "'1' is not supported")
    assert "replace it with GroupNorm (opacus ModuleValidator.fix does this)" in error
    assert "\n" not in error
    assert store.node_results("1") == [] and store.rounds("1") == []  # nobody trained
    # The same task without DP is a valid task: BatchNorm is only a problem for DP-SGD.
    check_private_model(nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(2, 8)))


# --- a node whose data does not fit: excluded, the others go on --------------------------------
MISMATCH_TASK = '''
import torch
from torch.utils.data import TensorDataset
from torch import nn
from clients.task import Task, TensorSchema

def load_data(ctx):
    wide = ctx.node_config.get("wide", False)  # this node exported one column too many
    x = torch.rand(24, 6 if wide else 5)
    y = torch.randint(0, 3, (24,))
    if ctx.node_config.get("relabelled", False):
        y = y + 3  # classes 3..5 instead of 0..2
    return TensorDataset(x, y), TensorDataset(x, y)

def hits(out, y):
    return {"accuracy": (out.argmax(1) == y).float(), "hit": (out.argmax(1) == y).float()}

def task(ctx):  # a node given "old-version" runs a task version with another metric
    return Task(model=lambda: nn.Linear(5, 3), load_data=load_data,
                metrics=hits if ctx.node_config.get("old-version") else None,
                schema=TensorSchema((5,), num_classes=3))
'''


class SilentGrid(AppGrid):
    """Node `silent` holds its replies back until `release()` (a node still starting up)."""

    silent: int | None = None
    held: list[tuple[str, Message]] = []

    def deliver(self, msg: Message, context: Context) -> Message | None:
        reply = super().deliver(msg, context)
        if context.node_id == self.silent and reply is not None:
            self.held = [*self.held, (msg.metadata.message_id, reply)]
            return None
        return reply

    def release(self) -> None:
        for mid, reply in self.held:
            self._replies[mid] = reply
        self.held = []


def _gate(tmp_path: Path, user_app: Any, node_configs: dict[int, dict[str, Any]],
          min_nodes: int, silent: int | None = None,
          timeout: float = 10) -> tuple[AdmissionGate, SilentGrid]:
    cfg = run_config(tmp_path, user_app(MISMATCH_TASK), min_nodes=min_nodes,
                     policy_packs="none")
    run, parsed = make_run(tmp_path / "store", cfg)
    grid = SilentGrid(NODE_IDS, cfg)
    grid.silent = silent
    for nid, extra in node_configs.items():
        grid.contexts[nid].node_config.update(extra)
    gate = AdmissionGate(run, policy_config(cfg, "simulation"), tmp_path / "store",
                         AuditLog(tmp_path / "audit.jsonl"), timeout=timeout,
                         min_nodes=parsed.min_nodes, mode="simulation",
                         metric_names=expected_metric_names(run.task, run.ctx))
    return gate, grid


def test_schema_mismatch_excludes_that_node_and_admits_the_rest(tmp_path: Path,
                                                                user_app: Any) -> None:
    wide, relabelled = NODE_IDS[1], NODE_IDS[3]
    gate, grid = _gate(tmp_path, user_app, {wide: {"wide": True},
                                            relabelled: {"relabelled": True}}, min_nodes=2)
    gate.open(grid, wait=5)  # returns: enough nodes are eligible, the run goes on
    assert gate.allowed == {NODE_IDS[0], NODE_IDS[2]}
    assert gate.excluded[str(wide)] == (
        f"node {wide}: data does not fit the run's task: training set item 0: features have "
        "shape (6,), the task expects (5,); export the same features as the other nodes")
    assert re.fullmatch(
        rf"node {relabelled}: data does not fit the run's task: training set item \d+: label "
        r"[3-5] is outside 0\.\.2; relabel to the task's classes", gate.excluded[str(relabelled)])
    rows = gate.run.store.node_results(gate.run.run_id, "admission")
    assert {r["node_id"] for r in rows if r["status"] == "excluded"} == {str(wide),
                                                                         str(relabelled)}
    # Asking again (every round does) never re-admits an excluded node.
    assert gate.admit(grid, NODE_IDS) == {NODE_IDS[0], NODE_IDS[2]}


def test_a_silent_node_joins_when_it_answers_and_another_task_version_is_excluded(
        tmp_path: Path, user_app: Any) -> None:
    silent, old = NODE_IDS[1], NODE_IDS[2]
    gate, grid = _gate(tmp_path, user_app, {old: {"old-version": True}}, min_nodes=2,
                       silent=silent, timeout=0.5)
    gate.open(grid, wait=5)
    assert gate.allowed == {NODE_IDS[0], NODE_IDS[3]}
    assert gate.silent[str(silent)] == (
        f"node {silent}: did not answer the admission query within 0.5 s; it joins the round "
        "after it answers")
    assert str(silent) not in gate.excluded
    assert gate.excluded[str(old)] == (
        f"node {old}: its task reports metrics ['accuracy', 'hit'], the run's nodes "
        "['accuracy']; run the same task version")
    # A node busy starting up answers late: the next round admits it, without asking again.
    assert gate.admit(grid, NODE_IDS) == {NODE_IDS[0], NODE_IDS[3]}
    grid.release()
    assert gate.admit(grid, NODE_IDS) == {NODE_IDS[0], NODE_IDS[1], NODE_IDS[3]}
    assert not gate.silent
    kinds = [e["kind"] for e in gate.run.store.events(gate.run.run_id)]
    assert "node-silent" in kinds and "node-answered" in kinds


def test_too_few_nodes_with_a_silent_one_wait_for_it_then_name_it(
        tmp_path: Path, user_app: Any) -> None:
    silent = NODE_IDS[1]
    gate, grid = _gate(tmp_path, user_app, {n: {"old-version": True} for n in NODE_IDS[2:]},
                       min_nodes=2, silent=silent, timeout=0.2)
    with pytest.raises(GateFailed) as exc:
        gate.open(grid, wait=1.5)  # not at once: the silent node may still answer
    assert f"node {silent}: did not answer the admission query" in str(exc.value)


def test_a_node_without_a_manifest_is_told_how_to_make_one() -> None:
    with pytest.raises(ManifestMissing) as exc:
        manifest_bytes({"data-path": "site.csv"}, {}, demo_manifest=None)
    assert one_line(exc.value) == (
        "this node has no data manifest; start it with --manifest FILE (create one with "
        "`fedguard-node manifest init`)")


def test_too_few_fitting_nodes_block_the_run_naming_each_excluded_node(tmp_path: Path,
                                                                       user_app: Any) -> None:
    wide = NODE_IDS[1]
    gate, grid = _gate(tmp_path, user_app, {wide: {"wide": True}}, min_nodes=4)
    with pytest.raises(GateFailed) as exc:
        gate.open(grid, wait=5)
    msg = one_line(exc.value)
    assert msg.startswith("only 3 of 4 connected node(s) are eligible; min-nodes=4; "
                          f"node {wide}: data does not fit the run's task")


# --- every broken task: one line naming the attribute or file and the fix -------------------
GOOD_HEAD = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset
from clients.task import Task, TensorSchema

def data(ctx):
    ds = TensorDataset(torch.rand(8, 3), torch.randint(0, 2, (8,)))
    return ds, ds
'''

BAD_MODULES = {
    "missing load_data": (GOOD_HEAD + "task = Task(model=lambda: nn.Linear(3, 2))\n",
                          "failed to import: TypeError: Task.__init__() missing 1 required "
                          "positional argument: 'load_data'"),
    "load_data not callable": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data='a.csv')\n",
                               "Task.load_data must be a function or class, got str"),
    "model an instance": (GOOD_HEAD + "task = Task(model=nn.Linear(3, 2), load_data=data)\n",
                           "Task.model is a Linear instance; pass what builds a fresh one, e.g. "
                           "model=Net, not model=Net()"),
    "metrics not callable": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                             "metrics=['accuracy'])\n",
                             "Task.metrics must be a function or None, got list"),
    "unknown kind": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                     "kind='ranking')\n",
                     "Task.kind='ranking': use 'classification' or 'regression'"),
    "loss is a function": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                           "loss=torch.nn.functional.cross_entropy)\n",
                           "Task.loss must be a torch loss module, e.g. nn.CrossEntropyLoss() "
                           "(got function); DP-SGD needs a module"),
    "loss bound": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, loss_bound=0)\n",
                   "Task.loss_bound=0: must be > 0, e.g. 10.0"),
    "schema a tuple": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                       "schema=(3,))\n",
                       "Task.schema must be a TensorSchema, a function returning one, or None"),
    "schema shape": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                     "schema=TensorSchema(()))\n",
                     "TensorSchema input_shape=(): give the shape of one example, e.g. (13,)"),
    "schema classes": (GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data, "
                       "schema=TensorSchema((3,), num_classes=1))\n",
                       "TensorSchema num_classes=1: needs at least 2"),
    "syntax error": ("def broken(:\n    pass\n", "failed to import: SyntaxError: "),
    "missing dependency": ("import xgboost_is_not_installed_here\n",
                           "failed to import: it needs 'xgboost_is_not_installed_here', which is "
                           "not installed"),
    "exception at import": ("import json\nSETTINGS = json.loads('{bad json')\n",
                            "failed to import: JSONDecodeError: Expecting property name "
                            "enclosed in double quotes: line 1 column 2 (char 1) ("),
    "not a Task": (GOOD_HEAD + "task = {'model': nn.Linear}\n",
                   "is a dict, not a clients.task.Task; wrap your functions in Task(...)"),
    "function returns no Task": (GOOD_HEAD + "def task(ctx):\n    return None\n",
                                 "the function returned NoneType, not a clients.task.Task"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_broken_task_module_is_one_line_naming_the_fix(case: str, user_app: Any) -> None:
    source, expected = BAD_MODULES[case]
    key = user_app(source)
    with pytest.raises(TaskError) as exc:
        load_task(key, TaskContext({}, {}, 42, user_app.app))
    msg = one_line(exc.value)
    assert expected in msg, msg
    if case == "exception at import":  # names the user's file and line
        assert re.search(r"\(user_task_\d+\.py line 2\)$", msg), msg


@pytest.mark.parametrize(("spec", "expected"), [
    ("no_such_module_anywhere:task", "run config task='no_such_module_anywhere:task': no "
     "module 'no_such_module_anywhere' in the app directory or the environment; check the "
     "name (task.py -> 'task:task')"),
    ("task", "run config task='task': use 'module:attribute', e.g. task='task:task' for "
     "`task = Task(...)` in the app's task.py"),
    (":task", "run config task=':task': use 'module:attribute', e.g. task='task:task' for "
     "`task = Task(...)` in the app's task.py"),
])
def test_task_key_pointing_at_nothing(spec: str, expected: str) -> None:
    with pytest.raises(TaskError) as exc:
        load_task(spec, TaskContext())
    assert one_line(exc.value) == expected


def test_task_key_naming_a_missing_attribute(user_app: Any) -> None:
    key = user_app(GOOD_HEAD + "task = Task(model=nn.Linear, load_data=data)\n", attr="tsak")
    with pytest.raises(TaskError) as exc:
        load_task(key, TaskContext())
    module = key.split(":")[0]
    assert one_line(exc.value) == (
        f"run config task={key!r}: module {module!r} has no 'tsak'; define `tsak = "
        "Task(model=..., load_data=...)`")


def _ds(n: int = 4, features: int = 3) -> TensorDataset:
    return TensorDataset(torch.rand(n, features), torch.randint(0, 2, (n,)))


class _Stream(IterableDataset):
    def __iter__(self) -> Iterator[Any]:
        yield torch.rand(3), torch.tensor(0)


@pytest.mark.parametrize(("task", "call", "expected"), [
    (Task(model=lambda: "a model", load_data=lambda: _ds()), "model",
     "Task.model returned str, not a torch nn.Module"),
    (Task(model=nn.Linear, load_data=lambda: [1, 2, 3]), "data",
     "Task.load_data returned list; return NodeData(train, val) or a (train, val) pair"),
    (Task(model=nn.Linear, load_data=lambda: NodeData(_ds(0))), "data",
     "Task.load_data: the training set is empty; this node needs at least one example"),
    (Task(model=nn.Linear, load_data=lambda: NodeData(_Stream())), "data",
     "Task.load_data: the train set has no len(); return a map-style torch Dataset (e.g. "
     "TensorDataset)"),
    (Task(model=nn.Linear, load_data=lambda: _ds(), optimizer=lambda p, lr: "adam"),
     "optimizer", "Task.optimizer returned str, not a torch optimizer"),
    (Task(model=nn.Linear, load_data=lambda: _ds(), schema=lambda ctx: (3,)), "schema",
     "Task.schema returned tuple, not a TensorSchema"),
])
def test_task_functions_returning_the_wrong_thing(task: Task, call: str, expected: str) -> None:
    ctx = TaskContext()
    actions = {"model": lambda: task.build_model(ctx), "data": lambda: task.node_data(ctx),
               "optimizer": lambda: task.make_optimizer([nn.Parameter(torch.zeros(1))], 0.1),
               "schema": lambda: task.data_schema(ctx)}
    with pytest.raises(TaskError) as exc:
        actions[call]()
    assert one_line(exc.value) == expected


def test_a_task_key_of_the_wrong_type_names_the_key_and_an_example() -> None:
    ctx = TaskContext({"signal-length": "long", "signal-noise": float("nan")})
    with pytest.raises(TaskError) as exc:
        ctx.get("signal-length", 64)
    assert one_line(exc.value) == ("run config signal-length='long': expected int, e.g. "
                                   "signal-length=64")
    with pytest.raises(TaskError) as exc:
        ctx.get("signal-noise", 0.5)
    assert one_line(exc.value) == ("run config signal-noise=nan: must be a finite number, e.g. "
                                   "signal-noise=0.5")
    assert TaskContext({"lr-boost": 2}).get("lr-boost", 1.0) == 2.0  # ints count as floats


SCHEMA = TensorSchema((3,), num_classes=2)


def test_integer_features_pass_where_the_schema_or_the_model_takes_them() -> None:
    tokens = TensorDataset(torch.randint(0, 50, (4, 3)), torch.tensor([0, 1, 0, 1]))
    ids = TensorSchema((3,), num_classes=2, input_dtype="int")
    assert check_node_data(NodeData(tokens), ids, "classification") == 4
    assert check_node_data(NodeData(tokens), None, "classification") == 4  # no schema
    assert ids.zeros(2).dtype == torch.long and SCHEMA.zeros(2).dtype == torch.float32
    with pytest.raises(TaskError) as exc:
        TensorSchema((3,), input_dtype="text")
    assert one_line(exc.value) == ("TensorSchema input_dtype='text': use 'float', or 'int' for "
                                   "token ids or category codes")


@pytest.mark.parametrize(("data", "schema", "kind", "expected"), [
    (NodeData([torch.rand(3)]), SCHEMA, "classification",
     "training set item 0: each item must be a (features, target) pair, got Tensor"),
    (NodeData(TensorDataset(torch.ones(2, 3, dtype=torch.int64), torch.zeros(2))), SCHEMA,
     "classification", "training set item 0: features are torch.int64, need floats; convert "
     "with .float() (token ids or category codes: declare TensorSchema(..., "
     "input_dtype='int'))"),
    (NodeData(TensorDataset(torch.rand(2, 3), torch.zeros(2, dtype=torch.int64))),
     TensorSchema((3,), num_classes=2, input_dtype="int"), "classification",
     "training set item 0: features are torch.float32, the task expects whole numbers (token "
     "ids or codes); convert with .long()"),
    (NodeData(TensorDataset(torch.tensor([[1, -2, 0]]), torch.zeros(1, dtype=torch.int64))),
     TensorSchema((3,), num_classes=2, input_dtype="int"), "classification",
     "training set item 0: features contain -2; token ids and codes must be >= 0"),
    (NodeData(TensorDataset(torch.tensor([[1.0, float("nan"), 0.0]]), torch.zeros(1))),
     SCHEMA, "classification", "training set item 0: features contain NaN or infinite values; "
     "clean or impute them"),
    (NodeData(_ds(), TensorDataset(torch.rand(2, 4), torch.zeros(2, dtype=torch.int64))),
     SCHEMA, "classification", "validation set item 0: features have shape (4,), the task "
     "expects (3,); export the same features as the other nodes"),
    (NodeData(TensorDataset(torch.rand(2, 3), torch.tensor([0.5, 1.0]))), SCHEMA,
     "classification", "training set item 0: a class label must be one whole number, got 0.5"),
    (NodeData(TensorDataset(torch.rand(2, 3), torch.tensor([1, 2]))), SCHEMA, "classification",
     "training set item 1: label 2 is outside 0..1; relabel to the task's classes"),
    (NodeData(TensorDataset(torch.rand(2, 3), torch.rand(2, 2))), TensorSchema((3,)),
     "regression", "training set item 0: target has shape (2,), the task expects ()"),
])
def test_node_data_that_does_not_fit_the_schema(data: NodeData, schema: TensorSchema,
                                                kind: str, expected: str) -> None:
    with pytest.raises(TaskError) as exc:
        check_node_data(data, schema, kind)
    assert one_line(exc.value) == expected


def test_node_data_that_fits_reports_only_its_size() -> None:
    images = TensorDataset(torch.rand(5, 1, 2, 2), torch.randint(0, 3, (5,)))
    assert check_node_data(NodeData(images), TensorSchema((4,), num_classes=3),
                           "classification") == 5  # (1, 2, 2) has the schema's 4 values
    assert check_node_data(NodeData(_ds()), None, "classification") == 4


def test_a_node_running_another_task_version_is_told_so(tmp_path: Path, user_app: Any) -> None:
    key = user_app(GOOD_HEAD + "task = Task(model=lambda: nn.Linear(3, 2), load_data=data)\n")
    runtime = NodeRuntime(run_config(tmp_path, key), {"partition-id": 0, "num-partitions": 1},
                          1)
    with pytest.raises(TaskError) as exc:
        runtime.model({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)})
    msg = one_line(exc.value)
    assert msg.startswith("the global model does not fit this node's task: ")
    assert msg.endswith("; every node must run the same task version")


@pytest.mark.parametrize(("layer", "drop_in"), [
    (nn.LSTM(4, 8), "DPLSTM"), (nn.GRU(4, 8), "DPGRU"),
    (nn.MultiheadAttention(4, 2), "DPMultiheadAttention")])
def test_a_recurrent_or_attention_layer_is_told_its_opacus_drop_in(layer: nn.Module,
                                                                   drop_in: str) -> None:
    with pytest.raises(TaskError) as exc:
        check_private_model(nn.Sequential(nn.Linear(4, 4), layer))
    assert one_line(exc.value).endswith(
        f"; use opacus.layers.{drop_in}, a drop-in with the same arguments")


def test_a_model_that_fails_on_the_nodes_data_is_one_line_at_admission(
        tmp_path: Path, user_app: Any) -> None:
    # no schema, so only the model can tell: it takes 7 features, the node has 3
    key = user_app(GOOD_HEAD + "task = Task(model=lambda: nn.Linear(7, 2), load_data=data)\n")
    runtime = NodeRuntime(run_config(tmp_path, key), {"partition-id": 0, "num-partitions": 1},
                          1)
    assert runtime.check_data() == 8
    with pytest.raises(TaskError) as exc:
        runtime.metric_names  # noqa: B018 - what the admission answer computes
    assert one_line(exc.value) == (
        "the task's model or loss fails on this node's first training example (features (3,), "
        "torch.float32; target (), torch.int64): mat1 and mat2 shapes cannot be multiplied (1x3 "
        "and 7x2); check the data's shapes and types against the model and the loss")


def test_every_virtual_node_in_one_process_has_its_data_tried(tmp_path: Path,
                                                               user_app: Any) -> None:
    """Nodes of one run share a process (a simulation worker) and its probe model, but each
    node's own first example goes through it: the second node's wider data is caught at
    admission, not at training."""
    from clients.training.node import RunShared

    key = user_app(GOOD_HEAD.replace("torch.rand(8, 3)", "torch.rand(8, 3 + ctx.partition_id)")
                   + "task = Task(model=lambda: nn.Linear(3, 2), load_data=data)\n")
    cfg = run_config(tmp_path, key)
    shared = RunShared(cfg)
    first, second = (NodeRuntime(cfg, {"partition-id": i, "num-partitions": 2}, 1, shared)
                     for i in range(2))
    assert first.metric_names == ["accuracy"]
    with pytest.raises(TaskError) as exc:
        second.metric_names  # noqa: B018
    assert "(features (4,), torch.float32; target (), torch.int64): " in one_line(exc.value)


def test_a_loss_that_does_not_take_the_models_output_is_caught_at_admission(
        tmp_path: Path, user_app: Any) -> None:
    # one logit per example against [batch] targets: BCEWithLogitsLoss wants equal shapes
    key = user_app(GOOD_HEAD + "task = Task(model=lambda: nn.Linear(3, 1), load_data=data, "
                   "loss=nn.BCEWithLogitsLoss())\n")
    runtime = NodeRuntime(run_config(tmp_path, key), {"partition-id": 0, "num-partitions": 1},
                          1)
    with pytest.raises(TaskError) as exc:
        runtime.metric_names  # noqa: B018
    assert "(features (3,), torch.float32; target (), torch.int64): " in one_line(exc.value)


def test_default_accuracy_reads_a_single_logit_as_a_binary_decision() -> None:
    """A binary model with one output (trained with BCEWithLogitsLoss): class 1 when the logit
    is above 0. An arg-max over one column would call every example class 0."""
    acc = Task(model=nn.Linear, load_data=lambda: _ds()).metric_fn()
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])  # float labels, as BCE wants them
    assert acc(logits, labels)["accuracy"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert acc(logits.reshape(4), labels.reshape(4, 1))["accuracy"].tolist() == [
        1.0, 1.0, 0.0, 1.0]
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert acc(scores, torch.tensor([1, 1]))["accuracy"].tolist() == [1.0, 0.0]


def test_defaults_follow_the_kind() -> None:
    cls = Task(model=nn.Linear, load_data=lambda: _ds())
    reg = Task(model=nn.Linear, load_data=lambda: _ds(), kind="regression")
    own = Task(model=nn.Linear, load_data=lambda: _ds(),
               metrics=lambda out, y: {"f1": (out.argmax(1) == y).float()})
    assert isinstance(cls.criterion(), nn.CrossEntropyLoss) and cls.headline == "accuracy"
    assert isinstance(reg.criterion(), nn.MSELoss) and reg.headline == "loss"
    assert own.headline == "loss"  # own metrics: say which one leads with primary_metric
    opt = cls.make_optimizer(nn.Linear(3, 2).parameters(), 0.1)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert cls.metric_fn()(out, torch.tensor([0, 0]))["accuracy"].tolist() == [1.0, 0.0]
    assert reg.metric_fn()(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0]))[
        "mse"].tolist() == [0.0, 4.0]


def test_context_for_simulation_and_real_nodes(tmp_path: Path) -> None:
    sim = TaskContext({}, {"partition-id": 2, "num-partitions": 5}, 42, tmp_path)
    real = TaskContext({}, {"data-path": "~/site-a.csv"}, 42, tmp_path)
    assert (sim.partition_id, sim.num_partitions, sim.data_path) == (2, 5, None)
    assert (real.partition_id, real.data_path) == (None, Path("~/site-a.csv").expanduser())
    assert sim.resolve("schema.toml") == tmp_path / "schema.toml"
    assert sim.resolve("/abs/x.csv") == Path("/abs/x.csv")


# --- the docs: the complete example works; every listed error is raised and tested ----------
DOCS = ROOT / "docs" / "tasks.md"
SOURCES = [ROOT / "clients" / d for d in ("task", "tasks", "node", "training")] + [
    ROOT / "server" / d for d in ("compliance", "deploy")]
TESTS = [Path(__file__)] + [Path(__file__).with_name(f"test_{n}.py")
                            for n in ("tabular", "examples", "lazy_admission")]
PLACEHOLDER = r"\{[^{}]*\}"


def _flat(paths: list[Path]) -> str:
    """Source text with implicitly concatenated string literals joined and \\" unescaped."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in paths)
    return re.sub(r'"\s*\n\s*r?f?"', "", text).replace('\\"', '"')


def documented_errors() -> list[str]:
    """The first column of the error table in docs/tasks.md: message fragments, `{...}` for
    the parts that depend on the case."""
    section = DOCS.read_text(encoding="utf-8").split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `((?:[^`]|\\`)+)` \|", section, flags=re.M)
    return [r.replace("\\|", "|") for r in rows]


def test_every_documented_error_is_raised_by_the_code_and_tested() -> None:
    errors = documented_errors()
    assert len(errors) >= 60
    code = _flat([p for d in SOURCES for p in sorted(d.glob("*.py"))])
    tests = _flat(TESTS)
    for fragment in errors:
        parts = [re.escape(p) for p in re.split(PLACEHOLDER, fragment)]
        assert re.search(PLACEHOLDER.join(parts), code), (
            f"docs/tasks.md lists {fragment!r}, which the code never says")
        assert re.search(".+?".join(parts), tests), (
            f"docs/tasks.md lists {fragment!r}, which no test checks")


def test_the_complete_task_in_the_docs_trains_with_dp(tmp_path: Path, user_app: Any) -> None:
    text = DOCS.read_text(encoding="utf-8").split("## A complete task", 1)[1]
    source = text.split("```python\n", 1)[1].split("```", 1)[0]
    key = user_app(source)
    cfg = run_config(tmp_path, key, dp=True, local_epochs=1, num_server_rounds=2)
    cfg["hidden"] = 16
    cfg["dp-eval"] = "every"  # under DP the received model is evaluated (noisily) from round 2
    runtime = NodeRuntime(cfg, {"partition-id": 0, "num-partitions": 3}, 1)
    assert runtime.check_data() == 160  # fits its schema, and Opacus can privatise the model
    assert runtime.metric_names == ["accuracy", "top2-accuracy"]
    state = runtime.task.build_model(runtime.ctx).state_dict()
    out = runtime.train(state, 2, evaluate_first=True)
    assert not out.refusal and out.metrics["dp-epsilon-spent"] > 0
    assert sorted(out.evaluation.metrics) == ["accuracy", "top2-accuracy"]
    csv = tmp_path / "site.csv"
    rows = ["a,b,c,d,e,f,g,label"] + [",".join(["0.5"] * 7 + [str(i % 5)]) for i in range(10)]
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    real = NodeRuntime(cfg, {"data-path": str(csv)}, 1)
    assert real.check_data() == 8


def test_the_servers_task_defines_the_runs_metrics_not_the_first_node_asked() -> None:
    ctx = TaskContext({}, {}, 0, Path("."))
    cls = Task(model=lambda: nn.Linear(5, 3), load_data=lambda: None,
               schema=TensorSchema((5,), num_classes=3))
    assert expected_metric_names(cls, ctx) == ["accuracy"]
    reg = Task(model=lambda: nn.Linear(4, 1), load_data=lambda: None, kind="regression",
               schema=TensorSchema((4,)))
    assert expected_metric_names(reg, ctx) == ["mse"]
    custom = Task(model=lambda: nn.Linear(5, 3), load_data=lambda: None,
                  schema=TensorSchema((5,), num_classes=3),
                  metrics=lambda out, y: {"hit": (out.argmax(1) == y).float(), "n": y * 0.0})
    assert expected_metric_names(custom, ctx) == ["hit", "n"]
    # no schema: the server cannot build an example, so the first answer is the reference
    assert expected_metric_names(Task(model=lambda: nn.Linear(5, 3), load_data=lambda: None),
                                 ctx) is None


def test_a_run_refused_before_round_one_is_a_failed_run_in_the_store(tmp_path: Path) -> None:
    """Flower reports only "failed" (and `flwr run` exits 0): the store says why, at once, so
    the runner, the UI and whoever follows the store see it without asking Flower."""
    cfg = {"data-dir": str(tmp_path), "model": "cnn", "task": "clients.tasks.breast_cancer:task"}
    with pytest.raises(RunRefused, match="model='cnn' needs images"):
        drive_run(None, cfg, 77, "simulation")  # type: ignore[arg-type]
    run = RunStore.in_dir(tmp_path, readonly=True).get_run("77")
    assert run is not None and run["status"] == "failed"
    assert run["error"].startswith("not started: run config model='cnn' needs images")
