"""A warm ClientApp executor: one long-lived process runs every message of this node.

Stock Flower starts a fresh `flwr-clientapp` process per message (about 0.8 s of Flower start-up
plus 2-4 s of torch, Opacus and scikit-learn imports, measured here). The SuperNode's
`--isolation process` mode exists so that an executor outside it serves its Runtime API; this is
one: it acquires ClientApp tasks from the SuperNode like `flower-superexec` does, but runs each
in this process, so the task, its data and the imports load once per node, not once per message.
It speaks the Runtime API with Flower's own client and task helpers; nothing of Flower is
patched.

    python -m clients.node.executor --runtime-api 127.0.0.1:9094
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

PROG = "fedguard-executor"
IDLE_POLL = (0.02, 0.5)  # seconds: right after a task, and at most when idle


class WarmExecutor:
    """Acquire ClientApp tasks from a SuperNode's Runtime API and run them in this process."""

    def __init__(self, runtime_api: str, root_certificates: bytes | None = None) -> None:
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor

        self.address = runtime_api
        self.certificates = root_certificates
        self.insecure = root_certificates is None
        self.control = RuntimeHttpClient.from_server_address(
            server_address=runtime_api, insecure=self.insecure,
            root_certificates=root_certificates,
            interceptors=[RuntimeTracingInterceptor(),
                          RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        self._apps: dict[str, Any] = {}  # FAB hash -> loaded ClientApp
        self._fab_dirs: dict[str, Path] = {}
        self.stopping = False
        self.served = 0

    # --- the loop -----------------------------------------------------------------------------
    def serve(self, max_tasks: int | None = None) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        delay = IDLE_POLL[0]
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while not self.stopping and (max_tasks is None or self.served < max_tasks):
            res = self.control.AcquireTask(request)
            if res.HasField("task") and res.token:
                self.run_task(res.token)
                self.served += 1
                delay = IDLE_POLL[0]
                continue
            time.sleep(delay)
            delay = min(IDLE_POLL[1], delay * 1.5)

    def run_task(self, token: str) -> None:
        """Everything `flwr-clientapp --token` does for one message, in this process."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.insecure,
            root_certificates=self.certificates,
            interceptors=[RuntimeTracingInterceptor(),
                          RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        context = message = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            app = self._app(run, fab)
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the node keeps serving; the server records the error
            logging.getLogger(PROG).error("ClientApp raised %s: %s", type(ex).__name__, ex)
            details = f"{type(ex)}:<'{ex}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status,
                                 details=details)
            finally:
                heartbeat.stop()
                client.close()

    # --- apps ---------------------------------------------------------------------------------
    def _app(self, run: Any, fab: Any) -> Any:
        """The ClientApp of a FAB, installed and loaded once per FAB hash."""
        app = self._apps.get(fab.hash_str)
        if app is not None:
            return app
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.config import get_project_dir

        install_from_fab(fab.content, skip_prompt=True)
        project = Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str)).resolve()
        self._forget_other_apps(project)
        app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)
        self._apps[fab.hash_str] = app
        self._fab_dirs[fab.hash_str] = project
        return app

    def _forget_other_apps(self, project: Path) -> None:
        """A new FAB (e.g. an edited task.py) must not run an earlier FAB's modules: drop what
        earlier app directories put on sys.path and in sys.modules."""
        for old_hash, old in list(self._fab_dirs.items()):
            if old == project:
                continue
            while str(old) in sys.path:
                sys.path.remove(str(old))
            for name, module in list(sys.modules.items()):
                file = getattr(module, "__file__", None)
                if file and Path(file).resolve().is_relative_to(old):
                    del sys.modules[name]
            self._apps.pop(old_hash, None)
            self._fab_dirs.pop(old_hash, None)

    def close(self) -> None:
        self.stopping = True
        self.control.close()


def main(argv: Sequence[str] | None = None) -> int:
    from privacy.console import OneLineParser, fail

    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API "
                        "address (flower-supernode --isolation process --port)")
    parser.add_argument("--root-certificates", type=Path, help="CA of a TLS Runtime API")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    certs = None
    if args.root_certificates:
        try:
            certs = args.root_certificates.read_bytes()
        except OSError as err:
            fail(PROG, f"--root-certificates {args.root_certificates}: {err.strerror}")
    executor = WarmExecutor(args.runtime_api, certs)

    def stop(signum: int, _frame: FrameType | None) -> None:
        executor.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        executor.serve()
    except Exception as err:  # e.g. the SuperNode went away: one line, the launcher restarts us
        fail(PROG, f"{type(err).__name__}: {err}", code=1)
    finally:
        executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
