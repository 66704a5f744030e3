"""The Flower ClientApp: converts Messages to plain calls into the node's code and back.

Known node problems (bad data, bad config, a task that does not fit, an exhausted budget)
become a reply with a one-line reason, so the server records them and the node's log shows no
traceback. What leaves the node depends on the run: in clear only without secure aggregation,
and then only what DP allows; under secure aggregation every data-dependent number rides inside
the masked vector.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.task import wire
from privacy.secagg import SecAggError

app = ClientApp()

NODE_INPUT_ERROR = 4001  # error code for "this node's data or config is wrong"


def _node_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "this node's input is wrong" (imported lazily: they pull in torch)."""
    from clients.task.contract import TaskError
    from clients.task.run_config import ConfigError
    from privacy.dp.accounting import AccountingError
    from privacy.dp.ledger import LedgerError

    errors: list[type[Exception]] = [TaskError, ConfigError, LedgerError, AccountingError,
                                     SecAggError, OSError]
    import sys

    if "privacy.dp.dp_sgd" in sys.modules:  # only loaded (with Opacus) when the run uses DP
        errors.append(sys.modules["privacy.dp.dp_sgd"].DPConfigError)
    return tuple(errors)


def _error_reply(msg: Message, err: Exception) -> Message:
    reason = " ".join(str(err).split()) or type(err).__name__
    return Message(Error(code=NODE_INPUT_ERROR, reason=reason), reply_to=msg)


def _refusal(msg: Message, metrics: dict[str, float], reason: str) -> Message:
    content = RecordDict({
        wire.METRICS: MetricRecord({**metrics, wire.REFUSED_KEY: 1}),
        wire.REFUSAL: ConfigRecord({"reason": reason}),
    })
    return Message(content=content, reply_to=msg)


def _runtime(context: Context) -> Any:
    from clients.training.node import node_runtime

    return node_runtime(context.run_config, context.node_config, context.run_id)


def _guard(msg: Message, fn: Any) -> Message:
    """Run a handler; a known node problem becomes a one-line error reply."""
    try:
        return fn()
    except Exception as err:
        if isinstance(err, _node_errors()):
            return _error_reply(msg, err)
        raise


def _clear_metrics(runtime: Any, out: Any) -> dict[str, float]:
    """What a train reply may carry in clear (no secure aggregation)."""
    metrics = dict(out.metrics)
    if runtime.cfg.dp:  # DP protects the update; these would describe the data in clear
        for key in ("loss", "train-time", "num-examples"):
            metrics.pop(key, None)
        metrics["num-examples"] = 1.0
    if out.evaluation is not None:  # exact without DP; noisy, ledger-accounted sums under DP
        ev = out.evaluation
        metrics.update(wire.summary_metrics(wire.EVAL_PREFIX, ev.examples, ev.loss, ev.metrics))
    return metrics


@app.train()
def train(msg: Message, context: Context) -> Message:
    def run() -> Message:
        runtime = _runtime(context)
        state = msg.content[wire.ARRAYS].to_torch_state_dict()
        rnd = int(msg.content[wire.CONFIG].get("server-round", 0))
        out = runtime.train(state, rnd, runtime.cfg.federated_evaluation)
        if out.refusal:
            return _refusal(msg, out.metrics, out.refusal)
        metrics = _clear_metrics(runtime, out)
        metrics[wire.WEIGHT_KEY] = metrics["num-examples"]
        content = RecordDict({wire.ARRAYS: ArrayRecord(out.state),
                              wire.METRICS: MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    return _guard(msg, run)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation of the final model (rounds evaluate inside the train exchange)."""
    def run() -> Message:
        runtime = _runtime(context)
        rnd = int(msg.content[wire.CONFIG].get("server-round", 0))
        ev = runtime.evaluate(msg.content[wire.ARRAYS].to_torch_state_dict(), rnd)
        metrics = {wire.WEIGHT_KEY: 1.0}
        if ev is not None:
            metrics.update(wire.summary_metrics(wire.EVAL_PREFIX, ev.examples, ev.loss,
                                                ev.metrics))
        return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return _guard(msg, run)


@app.query("admission")
def admission(msg: Message, context: Context) -> Message:
    """Before round 1: the node's data manifest (its bytes, hashed by the server) and whether
    its data fits the run's task - never data."""
    from clients.node.manifest import ManifestMissing, manifest_bytes

    record = ConfigRecord({})
    try:
        runtime = _runtime(context)
        record["manifest"] = manifest_bytes(context.node_config, context.run_config,
                                            runtime.task.demo_manifest)
    except (ManifestMissing, OSError) as err:
        record["manifest-error"] = " ".join(str(err).split())
    except Exception as err:
        if not isinstance(err, _node_errors()):
            raise
        record["data-error"] = " ".join(str(err).split())
        return Message(content=RecordDict({wire.ADMISSION: record}), reply_to=msg)
    try:
        runtime.check_data()
        record["metric-names"] = runtime.metric_names
    except Exception as err:
        if not isinstance(err, _node_errors()):
            raise
        record["data-error"] = " ".join(str(err).split())
    return Message(content=RecordDict({wire.ADMISSION: record}), reply_to=msg)


# --- secure aggregation (see server/rounds/secure.py for the server's side) ---------------
# Pipelined: the train request of round r carries round r+1's setup ("secagg-next") and its
# reply the node's advertised keys; the unmask request of round r carries r+1's keys and its
# reply the node's encrypted shares. Bootstrap messages carry only "secagg".
def _next(msg: Message, context: Context, into: RecordDict) -> None:
    """Answer the pipelined next-round payload, if the message carries one."""
    from clients.secagg import handle

    if wire.has_payload(msg.content, wire.SECAGG_NEXT):
        reply = handle(context, wire.record_payload(msg.content, wire.SECAGG_NEXT))
        wire.payload_record(reply, wire.SECAGG_NEXT, into)


def _stage(msg: Message, context: Context) -> Message:
    from clients.secagg import handle

    try:
        content = RecordDict()
        if wire.has_payload(msg.content):
            content = wire.payload_record(handle(context, wire.record_payload(msg.content)))
        _next(msg, context, content)
    except SecAggError as err:
        return _error_reply(msg, err)
    return Message(content=content, reply_to=msg)


@app.train("secagg_setup")
def secagg_setup(msg: Message, context: Context) -> Message:
    return _stage(msg, context)


@app.train("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return _stage(msg, context)


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _stage(msg, context)


def summary_tail(runtime: Any, out: Any, names: list[str], with_eval: bool,
                 evaluate_only: bool) -> list[float]:
    """The summaries riding in the masked vector, in the layout the server announced:
    evaluation [examples, loss, names...] when `with_eval`, then (without DP) training
    [examples, loss]. A node without validation data contributes zeros."""
    cfg, bound = runtime.cfg, runtime.task.loss_bound
    tail: list[float] = []
    if with_eval:  # noisy, ledger-accounted sums under DP (clients/training/node.py)
        ev = out.evaluation
        if ev is not None and set(ev.metrics) != set(names):
            raise wire_error(f"the task's metrics {sorted(ev.metrics)} differ from the run's "
                             f"{names}; every node must run the same task version")
        tail += (wire.pack_summary(ev.examples, ev.loss, ev.metrics, names,
                                   cfg.secagg_max_weight, bound) if ev is not None
                 else [0.0] * (2 + len(names)))
    if not cfg.dp:
        n = 0.0 if evaluate_only else out.metrics["num-examples"]
        loss = 0.0 if evaluate_only else min(out.metrics["loss"], bound) * n
        tail += wire.pack_summary(n, loss, {}, [], cfg.secagg_max_weight, bound)
    return tail


def wire_error(message: str) -> Exception:
    from clients.task.contract import TaskError

    return TaskError(message)


@app.train("secagg_masked")
def secagg_masked(msg: Message, context: Context) -> Message:
    """Train (or only evaluate), then send the masked [w * update, w, summaries] vector."""
    def run() -> Message:
        import numpy as np

        from clients.secagg import handle, state_delta, weighted_vector

        runtime = _runtime(context)
        cfg = runtime.cfg
        round_cfg = msg.content[wire.CONFIG]
        state = msg.content[wire.ARRAYS].to_torch_state_dict()
        rnd = int(round_cfg.get("server-round", 0))
        evaluate_only = bool(round_cfg.get("evaluate-only", False))
        if "user-dp-scale" in round_cfg and not evaluate_only:  # user-level DP: ring vector
            vector, out = runtime.user_level(state, rnd, round_cfg)
            if out.refusal:
                return _refusal(msg, out.metrics, out.refusal)
            content = wire.payload_record(handle(context, wire.record_payload(msg.content),
                                                 vector))
            _next(msg, context, content)
            content[wire.METRICS] = MetricRecord(out.metrics)
            return Message(content=content, reply_to=msg)
        if evaluate_only:
            from clients.training.node import TrainOutcome

            out = TrainOutcome(state, {"num-examples": 1.0},
                               runtime.evaluate(state, rnd, bounded=True))
        else:
            out = runtime.train(state, rnd, cfg.federated_evaluation)
            if out.refusal:
                return _refusal(msg, out.metrics, out.refusal)
        weight = 1.0 if cfg.dp or evaluate_only else out.metrics["num-examples"]
        glob = {k: v.numpy() for k, v in state.items()}
        update = (np.zeros(sum(v.size for v in glob.values())) if evaluate_only
                  else state_delta({k: v.numpy() for k, v in out.state.items()}, glob))
        tail = summary_tail(runtime, out, list(round_cfg.get("summary-names", [])),
                            bool(round_cfg.get("summary-eval", False)), evaluate_only)
        vector = weighted_vector(update, weight, cfg.secagg_max_weight, tail)
        content = wire.payload_record(handle(context, wire.record_payload(msg.content), vector))
        _next(msg, context, content)
        clear = {k: v for k, v in out.metrics.items() if k.startswith("dp-epsilon")}
        content[wire.METRICS] = MetricRecord(clear)
        return Message(content=content, reply_to=msg)

    return _guard(msg, run)
