"""Find the run's task from its run-config key `task = "module:attribute"`.

The module is imported like Flower imports the app's components: from the app's directory,
which Flower puts on `sys.path` for the ServerApp and the ClientApp (so a user's `task.py` ships
inside the FAB that `flwr run` sends). Every way this can go wrong is one line naming the fix.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from clients.task.contract import Task, TaskContext, TaskError

DEFAULT_TASK = "clients.tasks.digits:task"


def find_app_dir() -> Path | None:
    """The Flower app's directory: the first `sys.path` entry holding a Flower app's
    `pyproject.toml` (Flower inserts the installed FAB's directory there)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / "pyproject.toml"
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        if "app" in data.get("tool", {}).get("flwr", {}):
            return candidate.parent.resolve()
    return None


def load_task(spec: str, ctx: TaskContext) -> Task:
    """The run's Task: `module:attribute` names a `Task`, or a function `(ctx) -> Task` for a
    task configured by the run config (like the no-code tabular task)."""
    obj = _import(spec)
    if isinstance(obj, Task):
        return obj
    out = obj(ctx)
    if not isinstance(out, Task):
        raise TaskError(f"run config task={spec!r}: the function returned "
                        f"{type(out).__name__}, not a clients.task.Task")
    return out


@lru_cache(maxsize=16)
def _import(spec: str) -> Any:
    """Import `module:attribute` (cached per process)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"run config task={spec!r}: use 'module:attribute', e.g. "
                        f"task='task:task' for `task = Task(...)` in the app's task.py")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.split(".")[0] == err.name.split(".")[0]:
            raise TaskError(f"run config task={spec!r}: no module {module_name!r} in the app "
                            "directory or the environment; check the name (task.py -> "
                            "'task:task')") from None
        raise TaskError(f"task module {module_name!r} failed to import: it needs "
                        f"{err.name!r}, which is not installed") from None
    except Exception as err:  # the user's code is broken: name where, in one line
        where = _user_frame(err, module_name)
        raise TaskError(f"task module {module_name!r} failed to import: "
                        f"{type(err).__name__}: {err}{where}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TaskError(f"run config task={spec!r}: module {module_name!r} has no "
                        f"{attr!r}; define `{attr} = Task(model=..., load_data=...)`") from None
    if not isinstance(obj, Task) and not (callable(obj) and not isinstance(obj, type)):
        raise TaskError(f"run config task={spec!r} is a {type(obj).__name__}, not a "
                        "clients.task.Task; wrap your functions in Task(...)")
    return obj


def _user_frame(err: BaseException, module_name: str) -> str:
    tb = err.__traceback__
    last = None
    while tb is not None:
        if module_name.split(".")[-1] in Path(tb.tb_frame.f_code.co_filename).stem:
            last = tb
        tb = tb.tb_next
    if last is None:
        return ""
    return f" ({Path(last.tb_frame.f_code.co_filename).name} line {last.tb_lineno})"
