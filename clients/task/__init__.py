"""The task contract: what the user writes and what the server and the nodes agree on.

    from clients.task import Task, NodeData, TensorSchema

    task = Task(model=Net, load_data=load_data)   # app's task.py; run config task='task:task'

`contract` defines `Task`; `loading` finds it from the run config; `checks` checks a node's data
against it; `run_config` is the schema of every run-config key; `wire` names what travels in
Flower messages. Nothing here imports a node's or the server's code, so both can import it.
Names load on first use: `clients.task.wire` and `run_config` stay free of torch, which matters
to a node process that only runs a key-exchange stage.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "check_node_data": "checks",
    "check_private_model": "checks",
    "Sums": "evaluation",
    "evaluate": "evaluation",
    "KINDS": "contract",
    "DataError": "contract",
    "NodeData": "contract",
    "Task": "contract",
    "TaskContext": "contract",
    "TaskError": "contract",
    "TensorSchema": "contract",
    "higher_is_better": "contract",
    "DEFAULT_TASK": "loading",
    "find_app_dir": "loading",
    "load_task": "loading",
    "ConfigError": "run_config",
    "RunConfig": "run_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"clients.task.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'clients.task' has no attribute {name!r}")
