"""Check a node's data against the task before round 1 (the node is excluded if it fails).

Nothing about the data leaves the node: the server only learns "matches" or the one-line
reason, e.g. a wrong feature count or a label outside the task's classes.
"""

from __future__ import annotations

from typing import Any

import torch

from clients.task.contract import NodeData, TaskError, TensorSchema


def _pair(item: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise TaskError(f"{where}: each item must be a (features, target) pair, got "
                        f"{type(item).__name__}")
    x, y = (torch.as_tensor(v) for v in item)
    return x, y


def check_node_data(data: NodeData, schema: TensorSchema | None, kind: str) -> int:
    """Raise TaskError unless every example fits the schema; return the training-set size."""
    for name, ds in (("training set", data.train), ("validation set", data.val)):
        if ds is None:
            continue
        for i in range(len(ds)):
            x, y = _pair(ds[i], f"{name} item {i}")
            _check_dtype(x, schema, f"{name} item {i}")
            if torch.is_floating_point(x) and not torch.isfinite(x).all():
                raise TaskError(f"{name} item {i}: features contain NaN or infinite values; "
                                "clean or impute them")
            if schema is None:
                continue
            if tuple(x.shape) != tuple(schema.input_shape) and x.numel() != _numel(schema):
                raise TaskError(f"{name} item {i}: features have shape {tuple(x.shape)}, the "
                                f"task expects {tuple(schema.input_shape)}; export the same "
                                "features as the other nodes")
            if kind == "classification":
                _check_label(y, schema, f"{name} item {i}")
            elif tuple(y.shape) != tuple(schema.target_shape):
                raise TaskError(f"{name} item {i}: target has shape {tuple(y.shape)}, the task "
                                f"expects {tuple(schema.target_shape)}")
    return len(data.train)


def _check_dtype(x: torch.Tensor, schema: TensorSchema | None, where: str) -> None:
    """Floats, or whole numbers >= 0 where the schema declares integer inputs (token ids,
    category codes); without a schema, floats or integers (the model decides)."""
    whole = not torch.is_floating_point(x) and not torch.is_complex(x) and x.dtype != torch.bool
    if schema is not None and schema.input_dtype == "int":
        if not whole:
            raise TaskError(f"{where}: features are {x.dtype}, the task expects whole numbers "
                            "(token ids or codes); convert with .long()")
        if x.numel() and int(x.min()) < 0:
            raise TaskError(f"{where}: features contain {int(x.min())}; token ids and codes "
                            "must be >= 0")
        return
    if torch.is_floating_point(x) or (schema is None and whole):
        return
    raise TaskError(f"{where}: features are {x.dtype}, need floats; convert with .float() "
                    "(token ids or category codes: declare TensorSchema(..., input_dtype='int'))")


def _numel(schema: TensorSchema) -> int:
    n = 1
    for d in schema.input_shape:
        n *= int(d)
    return n


def _check_label(y: torch.Tensor, schema: TensorSchema, where: str) -> None:
    if y.numel() != 1 or torch.is_floating_point(y) and float(y) != int(float(y)):
        raise TaskError(f"{where}: a class label must be one whole number, got {y.tolist()}")
    label = int(y)
    if schema.num_classes is not None and not 0 <= label < schema.num_classes:
        raise TaskError(f"{where}: label {label} is outside 0..{schema.num_classes - 1}; "
                        "relabel to the task's classes")


#: torch layers Opacus cannot privatise, and its drop-in replacement for each.
DP_DROP_INS = {"LSTM": "DPLSTM", "GRU": "DPGRU", "RNN": "DPRNN",
               "MultiheadAttention": "DPMultiheadAttention"}


def check_private_model(model: torch.nn.Module) -> None:
    """Refuse, in one line, a model Opacus cannot give per-sample gradients for, naming the
    first unsupported layer and the fix (before round 1, so no node trains a run it can't)."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    model.train()
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator else []
        if errors:
            kind = type(module).__name__
            if "BatchNorm" in kind:
                fix = "replace it with GroupNorm (opacus ModuleValidator.fix does this)"
            elif kind in DP_DROP_INS:
                fix = f"use opacus.layers.{DP_DROP_INS[kind]}, a drop-in with the same arguments"
            else:
                fix = "replace it with a layer Opacus supports"
            why = str(errors[0]).splitlines()[0].split(". ")[0][:120]
            raise TaskError(f"the task's model cannot be trained with DP-SGD: {kind} at "
                            f"{name or 'the top level'!r} is not supported ({why}); {fix}")
    if ModuleValidator.validate(model, strict=False):  # anything the per-layer pass missed
        raise TaskError("the task's model cannot be trained with DP-SGD: "
                        f"{str(ModuleValidator.validate(model)[0]).splitlines()[0][:160]}")


def expected_metric_names(task: Any, ctx: Any) -> list[str] | None:
    """The metric names the task reports, from a zero example of its schema: the server's
    reference for "same task version", so the first node asked does not define it. None when
    the task declares no schema or its metrics need real data (then the first answer does)."""
    try:
        schema = task.data_schema(ctx)
        if schema is None:
            return None
        x = schema.zeros(1)
        y = (torch.zeros(1, dtype=torch.long) if schema.num_classes is not None
             else torch.zeros((1, *schema.target_shape)))
        model = task.build_model(ctx).eval()
        with torch.no_grad():
            out = model(x)
        return sorted(str(n) for n in task.metric_fn()(out, y))
    except Exception:  # noqa: BLE001 - a task's metrics may need real data: no reference
        return None
