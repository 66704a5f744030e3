"""The Flower ClientApp: converts Messages to plain calls into the node's code and back.

In deployment every message starts a fresh process, so heavy modules (torch, Opacus) are
imported inside the handlers that need them: the key-exchange stages of secure aggregation run
without them. Known node problems (bad data file, bad config, exhausted budget) become a reply
with a one-line reason, so the server records them and the node's log shows no traceback.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.secagg_node import handle_stage, masked_update
from clients.secagg_records import payload_record, record_payload
from privacy.secagg import SecAggError

app = ClientApp()

NODE_INPUT_ERROR = 4001  # error code for "this node's data or config is wrong"
REFUSED_KEY = "refused"  # a train reply without weights: the node's privacy budget is spent


def _node_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "this node's input is wrong" (imported lazily: they pull in torch)."""
    from clients.data import DataError
    from clients.models import ModelError
    from clients.task import ConfigError
    from privacy.dp.accounting import AccountingError
    from privacy.dp.ledger import LedgerError

    errors: list[type[Exception]] = [DataError, ConfigError, ModelError, LedgerError,
                                     AccountingError, SecAggError]
    import sys

    if "privacy.dp.dp_sgd" in sys.modules:  # only loaded (with Opacus) when the run uses DP
        errors.append(sys.modules["privacy.dp.dp_sgd"].DPConfigError)
    return tuple(errors)


def _error_reply(msg: Message, err: Exception) -> Message:
    return Message(Error(code=NODE_INPUT_ERROR, reason=str(err)), reply_to=msg)


def _refusal(msg: Message, metrics: dict[str, float], reason: str) -> Message:
    content = RecordDict({
        "metrics": MetricRecord({**metrics, REFUSED_KEY: 1}),
        "refusal": ConfigRecord({"reason": reason}),
    })
    return Message(content=content, reply_to=msg)


def _train(msg: Message, context: Context) -> tuple[Any, dict[str, Any]]:
    from clients.local_update import local_train
    from clients.task import TaskConfig

    task = TaskConfig.from_run_config(context.run_config)
    state = msg.content["arrays"].to_torch_state_dict()
    round_config = msg.content["config"]
    rnd = int(round_config.get("server-round", 0))
    out = local_train(task, context.node_config, state, rnd, context.run_config, context.run_id)
    out.metrics["aggregation-weight"] = out.metrics.get("num-examples", 0.0)
    if out.state is not None and "central-dp-noise" in round_config:
        from clients.user_dp import apply_user_level_dp

        out.state, facts = apply_user_level_dp(state, out.state, round_config)
        out.metrics.update(facts)
        out.metrics["aggregation-weight"] = 1.0  # user-level DP: every node counts the same
    return out, state


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        out, _ = _train(msg, context)
    except Exception as err:
        if isinstance(err, _node_errors()):
            return _error_reply(msg, err)
        raise
    if out.refusal:
        return _refusal(msg, out.metrics, out.refusal)
    content = RecordDict({"arrays": ArrayRecord(out.state), "metrics": MetricRecord(out.metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from clients.local_update import local_evaluate
    from clients.task import TaskConfig

    try:
        task = TaskConfig.from_run_config(context.run_config)
        state = msg.content["arrays"].to_torch_state_dict()
        metrics = local_evaluate(task, context.node_config, state)
    except Exception as err:
        if isinstance(err, _node_errors()):
            return _error_reply(msg, err)
        raise
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("manifest")
def manifest(msg: Message, context: Context) -> Message:
    """Send the node's data manifest (the file's bytes, hashed by the server) - never data."""
    from clients.node_manifest import ManifestMissing, manifest_bytes

    try:
        data = manifest_bytes(context.node_config, context.run_config)
    except (ManifestMissing, OSError) as err:
        return _error_reply(msg, err)
    return Message(content=RecordDict({"manifest": ConfigRecord({"toml": data})}), reply_to=msg)


# --- secure aggregation (see server/secagg_strategy.py for the server's side) ----------------
def _stage(stage: str, msg: Message, context: Context) -> Message:
    try:
        reply = handle_stage(context, stage, record_payload(msg.content))
    except SecAggError as err:
        return _error_reply(msg, err)
    return Message(content=payload_record(reply), reply_to=msg)


@app.train("secagg_setup")
def secagg_setup(msg: Message, context: Context) -> Message:
    return _stage("setup", msg, context)


@app.train("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return _stage("share_keys", msg, context)


@app.train("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _stage("unmask", msg, context)


@app.train("secagg_masked")
def secagg_masked(msg: Message, context: Context) -> Message:
    """Train, then send only the masked [weight * update, weight] vector."""
    try:
        out, global_state = _train(msg, context)
        if out.refusal:
            return _refusal(msg, out.metrics, out.refusal)

        def to_np(state: dict[str, Any]) -> dict[str, Any]:
            return {k: v.detach().cpu().numpy() for k, v in state.items()}

        reply = masked_update(
            context, record_payload(msg.content), to_np(global_state), to_np(out.state),
            out.metrics["aggregation-weight"],
            float(context.run_config.get("secagg-max-weight", 10000.0)),
        )
    except Exception as err:
        if isinstance(err, _node_errors()):
            return _error_reply(msg, err)
        raise
    content = payload_record(reply)
    # The weight travels masked; the node's example count is not revealed in the metrics.
    hidden = ("num-examples", "aggregation-weight")
    content["metrics"] = MetricRecord({k: v for k, v in out.metrics.items() if k not in hidden})
    return Message(content=content, reply_to=msg)
