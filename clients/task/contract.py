"""The task contract: what a fedguard user writes, in the shape Flower users know from `task.py`.

A task names the model, how a node loads its own data, the loss and the metrics, and optionally
the optimiser, a server-side evaluation set and the data schema every node must match. fedguard
wraps the user's model, optimiser and loaders: DP-SGD, the privacy ledger, secure aggregation,
update checks and the compliance record apply to every task unchanged, and the task contains none
of that code.

    task = Task(model=Net, load_data=load_data)               # classification, cross-entropy
    task = Task(model=Net, load_data=load_data, kind="regression", schema=TensorSchema((13,)))

Metrics are *per-example* values (shape [batch]); fedguard sums them with the example count so
that secure aggregation and DP release only sums. Under DP a per-example metric is clipped to
[0, 1] and the loss to [0, loss_bound] before noise is added, so use metrics in that range
(accuracy, errors on scaled targets) and scale them back for display with `metric_scale`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

TaskKind = Literal["classification", "regression"]
KINDS: tuple[str, ...] = ("classification", "regression")
Metrics = Callable[[torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]


class TaskError(ValueError):
    """The task or its data is unusable; one line naming the attribute or file and the fix."""


class DataError(TaskError):
    """A node's data file or dataset is unusable; one line naming the file and the fix."""


@dataclass(frozen=True)
class TaskContext:
    """What fedguard tells a task's functions: the run config (the task's own keys too), the
    node's config (empty on the server), the run's seed and the app's directory."""

    run_config: Mapping[str, Any] = field(default_factory=dict)
    node_config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    app_dir: Path | None = None

    def get(self, key: str, default: Any) -> Any:
        """`run_config[key]`, of the default's type (ints accepted for floats), else TaskError."""
        from clients.task.run_config import typed

        return typed(key, self.run_config.get(key, default), default, TaskError)

    @property
    def partition_id(self) -> int | None:
        """Simulation: which virtual node this is (Flower sets it); None on a real node."""
        raw = self.node_config.get("partition-id")
        return None if raw is None else int(raw)

    @property
    def num_partitions(self) -> int | None:
        raw = self.node_config.get("num-partitions")
        return None if raw is None else int(raw)

    @property
    def data_path(self) -> Path | None:
        """A real node's own data file (`fedguard-node start --data-path`)."""
        raw = self.node_config.get("data-path")
        return Path(str(raw)).expanduser() if raw else None

    def resolve(self, path: str | Path) -> Path:
        """A path from the run config, relative to the app's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() or self.app_dir is None else self.app_dir / p


@dataclass(frozen=True)
class NodeData:
    """A node's local data: a training set and, optionally, a validation set for federated
    evaluation. Items are `(features, target)` pairs of tensors."""

    train: Dataset[Any]
    val: Dataset[Any] | None = None


@dataclass(frozen=True)
class TensorSchema:
    """What every node's data must look like; checked on each node before round 1, and a node
    whose data does not match is excluded from the run with the reason."""

    input_shape: tuple[int, ...]
    num_classes: int | None = None  # classification: targets are integers 0..num_classes-1
    target_shape: tuple[int, ...] = ()  # regression: shape of one target (() = a scalar)
    # "float" (measurements), or "int": whole numbers >= 0 such as token ids or category
    # codes that the model looks up in an nn.Embedding
    input_dtype: str = "float"

    def __post_init__(self) -> None:
        if not self.input_shape or any(int(d) < 1 for d in self.input_shape):
            raise TaskError(f"TensorSchema input_shape={self.input_shape}: give the shape of "
                            "one example, e.g. (13,)")
        if self.input_dtype not in ("float", "int"):
            raise TaskError(f"TensorSchema input_dtype={self.input_dtype!r}: use 'float', or "
                            "'int' for token ids or category codes")
        if self.num_classes is not None and self.num_classes < 2:
            raise TaskError(f"TensorSchema num_classes={self.num_classes}: needs at least 2")

    def zeros(self, n: int = 1) -> torch.Tensor:
        """`n` all-zero examples of this schema (a valid input for either dtype)."""
        dtype = torch.long if self.input_dtype == "int" else torch.float32
        return torch.zeros((n, *self.input_shape), dtype=dtype)


class LabelCrossEntropyLoss(nn.CrossEntropyLoss):
    """The default classification loss: cross-entropy that takes class labels stored as whole
    floats ([batch] of 0.0, 1.0, ... as a table read with numpy gives them; the admission check
    has made sure they are whole) as the class indices they are. Soft labels ([batch, classes]
    probabilities) pass through unchanged."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if target.is_floating_point() and target.dim() == input.dim() - 1:
            target = target.long()
        return super().forward(input, target)


class ShapedMSELoss(nn.MSELoss):
    """The default regression loss: MSE with the output reshaped to the target's shape when
    they hold as many values ([batch, 1] against [batch]); plain MSELoss would broadcast
    them to [batch, batch] and train on the wrong loss without a word."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if input.shape != target.shape and input.numel() == target.numel():
            input = input.reshape(target.shape)
        return super().forward(input, target)


def predicted_class(out: torch.Tensor) -> torch.Tensor:
    """Class indices from a batch of outputs: the arg-max of per-class scores, or for one logit
    per example ([batch] or [batch, 1], a binary model trained with BCEWithLogitsLoss) whether
    it is above 0 (an arg-max over one column would always say class 0)."""
    if out.dim() == 1 or out.shape[1] == 1:
        return (out.reshape(len(out)) > 0).long()
    return out.argmax(1)


def _default_metrics(kind: str) -> Metrics:
    if kind == "classification":
        return lambda out, y: {"accuracy": (predicted_class(out) == y.reshape(len(y))).float()}
    return lambda out, y: {"mse": (out.reshape(y.shape) - y).pow(2).reshape(len(y), -1).mean(1)}


def call_with_context(fn: Callable[..., Any], ctx: TaskContext) -> Any:
    """Call `fn(ctx)`, or `fn()` when it takes no argument (e.g. a model class `Net`)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn(ctx)
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(ctx) if required else fn()


@dataclass(frozen=True)
class Task:
    """A federated learning task. Only `model` and `load_data` are required.

    - `model(ctx)` (or `model()`): a fresh `nn.Module`; fedguard seeds torch first, so every
      party builds the same initial weights.
    - `load_data(ctx)`: this node's `NodeData` (or a `(train, val)` pair); never called on the
      server.
    - `loss`: a torch loss module (default cross-entropy, or MSE for regression).
    - `metrics(outputs, targets)`: named per-example values (default accuracy, or MSE).
    - `optimizer(params, lr)`: default SGD with momentum 0.9.
    - `server_data(ctx)`: an optional held-out set the server evaluates on each round; without
      it federated evaluation is the headline.
    - `schema`: a `TensorSchema` (or `schema(ctx)`) every node's data must match.
    - `primary_metric`: the headline metric (default accuracy, or the loss); `loss_bound` and
      `metric_scale` see the module docstring.
    - `demo_manifest`: the data manifest virtual nodes send in simulations without a
      `manifest-dir` (a bundled dataset's own); real nodes always send their own.
    """

    model: Callable[..., nn.Module]
    load_data: Callable[..., Any]
    kind: str = "classification"
    loss: nn.Module | None = None
    metrics: Metrics | None = None
    optimizer: Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer] | None = None
    server_data: Callable[..., Dataset[Any] | None] | None = None
    schema: TensorSchema | Callable[..., TensorSchema | None] | None = None
    primary_metric: str = ""
    loss_bound: float = 10.0
    metric_scale: Mapping[str, float] = field(default_factory=dict)
    demo_manifest: str | Path | None = None
    name: str = ""

    def __post_init__(self) -> None:
        for attr in ("model", "load_data"):
            if not callable(getattr(self, attr)):
                raise TaskError(f"Task.{attr} must be a function or class, got "
                                f"{type(getattr(self, attr)).__name__}")
        if isinstance(self.model, nn.Module):  # callable, but one shared instance
            raise TaskError(f"Task.model is a {type(self.model).__name__} instance; pass what "
                            "builds a fresh one, e.g. model=Net, not model=Net()")
        for attr in ("metrics", "optimizer", "server_data"):
            value = getattr(self, attr)
            if value is not None and not callable(value):
                raise TaskError(f"Task.{attr} must be a function or None, got "
                                f"{type(value).__name__}")
        if self.kind not in KINDS:
            raise TaskError(f"Task.kind={self.kind!r}: use 'classification' or 'regression'")
        if self.loss is not None and not isinstance(self.loss, nn.Module):
            raise TaskError("Task.loss must be a torch loss module, e.g. nn.CrossEntropyLoss() "
                            f"(got {type(self.loss).__name__}); DP-SGD needs a module")
        if not (math.isfinite(self.loss_bound) and self.loss_bound > 0):
            raise TaskError(f"Task.loss_bound={self.loss_bound}: must be > 0, e.g. 10.0")
        if not (self.schema is None or isinstance(self.schema, TensorSchema)
                or callable(self.schema)):
            raise TaskError("Task.schema must be a TensorSchema, a function returning one, or "
                            "None")

    # --- what fedguard calls ------------------------------------------------------------------
    def build_model(self, ctx: TaskContext) -> nn.Module:
        """The model with seed-determined initial weights (the same on every party)."""
        # The CPU generator only: torch.manual_seed would also queue a lazy CUDA/XPU seeding
        # with a formatted stack trace (~0.1 ms) on every call. Models are built on the CPU.
        torch.default_generator.manual_seed(ctx.seed)
        if torch.cuda.is_initialized():
            torch.cuda.manual_seed_all(ctx.seed)
        model = call_with_context(self.model, ctx)
        if not isinstance(model, nn.Module):
            raise TaskError(f"Task.model returned {type(model).__name__}, not a torch "
                            "nn.Module")
        return model

    def node_data(self, ctx: TaskContext) -> NodeData:
        out = call_with_context(self.load_data, ctx)
        if isinstance(out, tuple) and len(out) == 2:
            out = NodeData(*out)
        if not isinstance(out, NodeData):
            raise TaskError(f"Task.load_data returned {type(out).__name__}; return "
                            "NodeData(train, val) or a (train, val) pair")
        for name, ds in (("train", out.train), ("val", out.val)):
            if ds is None and name == "val":
                continue
            if hasattr(ds, "dataset") and hasattr(ds, "batch_size"):  # a DataLoader
                ds = ds.dataset
                out = NodeData(ds, out.val) if name == "train" else NodeData(out.train, ds)
            try:
                size = len(ds)  # type: ignore[arg-type]
            except TypeError:
                raise TaskError(f"Task.load_data: the {name} set has no len(); return a map-"
                                "style torch Dataset (e.g. TensorDataset)") from None
            if name == "train" and size == 0:
                raise TaskError("Task.load_data: the training set is empty; this node needs at "
                                "least one example")
        return out

    def evaluation_set(self, ctx: TaskContext) -> Dataset[Any] | None:
        return None if self.server_data is None else call_with_context(self.server_data, ctx)

    def data_schema(self, ctx: TaskContext) -> TensorSchema | None:
        if self.schema is None or isinstance(self.schema, TensorSchema):
            return self.schema
        schema = call_with_context(self.schema, ctx)
        if schema is not None and not isinstance(schema, TensorSchema):
            raise TaskError(f"Task.schema returned {type(schema).__name__}, not a TensorSchema")
        return schema

    def criterion(self) -> nn.Module:
        if self.loss is not None:
            return self.loss
        return LabelCrossEntropyLoss() if self.kind == "classification" else ShapedMSELoss()

    def metric_fn(self) -> Metrics:
        return self.metrics or _default_metrics(self.kind)

    def make_optimizer(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if self.optimizer is None:
            return torch.optim.SGD(params, lr=lr, momentum=0.9)
        opt = self.optimizer(params, lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TaskError(f"Task.optimizer returned {type(opt).__name__}, not a torch "
                            "optimizer")
        return opt

    @property
    def headline(self) -> str:
        """The metric a run is judged by (the store, the CLI summary and the UI lead with it)."""
        if self.primary_metric:
            return self.primary_metric
        return "accuracy" if self.kind == "classification" and self.metrics is None else "loss"


def higher_is_better(metric: str) -> bool:
    """Losses and errors go down; anything else (accuracy, F1, AUC) goes up."""
    low = ("loss", "error", "mse", "mae", "rmse")
    return not any(part in metric.lower() for part in low)
