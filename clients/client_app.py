"""The Flower ClientApp: converts Messages to plain calls into clients.local_update and back.

Known node problems (bad data file, bad config) become an error reply with a one-line reason,
so the server records them and the node's log shows no traceback.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.data import DataError
from clients.local_update import local_evaluate, local_train
from clients.models import ModelError
from clients.task import ConfigError, TaskConfig

app = ClientApp()

NODE_INPUT_ERROR = 4001  # error code for "this node's data or config is wrong"


def _error_reply(msg: Message, err: Exception) -> Message:
    return Message(Error(code=NODE_INPUT_ERROR, reason=str(err)), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        task = TaskConfig.from_run_config(context.run_config)
        state = msg.content["arrays"].to_torch_state_dict()
        rnd = int(msg.content["config"].get("server-round", 0))
        new_state, metrics = local_train(task, context.node_config, state, rnd)
    except (DataError, ConfigError, ModelError) as err:
        return _error_reply(msg, err)
    content = RecordDict({"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        task = TaskConfig.from_run_config(context.run_config)
        state = msg.content["arrays"].to_torch_state_dict()
        metrics = local_evaluate(task, context.node_config, state)
    except (DataError, ConfigError, ModelError) as err:
        return _error_reply(msg, err)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
