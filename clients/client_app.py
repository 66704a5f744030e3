"""The Flower ClientApp: converts Messages to plain calls into clients.local_update and back.

Known node problems (bad data file, bad config) become an error reply with a one-line reason,
so the server records them and the node's log shows no traceback.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.data import DataError
from clients.local_update import local_evaluate, local_train
from clients.models import ModelError
from clients.task import ConfigError, TaskConfig
from privacy.dp_sgd import DPConfigError
from privacy.ledger import LedgerError

app = ClientApp()

NODE_INPUT_ERROR = 4001  # error code for "this node's data or config is wrong"
NODE_INPUT_ERRORS = (DataError, ConfigError, ModelError, DPConfigError, LedgerError)
REFUSED_KEY = "refused"  # a train reply without weights: the node's privacy budget is spent


def _error_reply(msg: Message, err: Exception) -> Message:
    return Message(Error(code=NODE_INPUT_ERROR, reason=str(err)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        task = TaskConfig.from_run_config(context.run_config)
        state = msg.content["arrays"].to_torch_state_dict()
        rnd = int(msg.content["config"].get("server-round", 0))
        out = local_train(task, context.node_config, state, rnd, context.run_config,
                          context.run_id)
    except NODE_INPUT_ERRORS as err:
        return _error_reply(msg, err)
    if out.refusal:
        content = RecordDict({
            "metrics": MetricRecord({**out.metrics, REFUSED_KEY: 1}),
            "refusal": ConfigRecord({"reason": out.refusal}),
        })
        return Message(content=content, reply_to=msg)
    content = RecordDict({"arrays": ArrayRecord(out.state), "metrics": MetricRecord(out.metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        task = TaskConfig.from_run_config(context.run_config)
        state = msg.content["arrays"].to_torch_state_dict()
        metrics = local_evaluate(task, context.node_config, state)
    except NODE_INPUT_ERRORS as err:
        return _error_reply(msg, err)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
