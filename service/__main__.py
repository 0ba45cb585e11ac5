"""`python -m service --host 127.0.0.1 --port 8000`: flags override `OMR_` settings.

Shutdown (SIGTERM/SIGINT): readiness turns false at once; requests keep being accepted for
`shutdown_delay_s` (load balancers notice); then the listener closes, in-flight and queued requests finish
within `drain_timeout_s`, and the process exits. A second signal skips the rest of the delay; a third SIGINT
forces an immediate exit.

`OMR_WORKERS` (default: the container's CPUs) >= 2 runs a supervisor and that many worker processes on one
listening socket (`service.serve.supervisor`); each worker runs `serve()` below on the inherited socket.
After SIGTERM every response carries `Connection: close`, so keep-alive clients reconnect (and find the
listener gone once the delay is over) instead of sending on a connection that is about to close. In a pod, a
worker holding more than its share of the keep-alive connections closes the surplus the same way
(`service.serve.balance`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.types import Message, Receive, Scope, Send

from service.serve import supervisor
from service.serve.balance import ConnectionBalance
from service.serve.cpus import resolve_workers
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.runtime import SessionFactory
    from service.serve.pod import WorkerSlot

# The app (FastAPI, ONNX Runtime, OpenCV) is imported where a process serves, not here: a pod's supervisor
# imports only this module, settings and uvicorn (~50 MB resident instead of ~115 MB).

log = logging.getLogger("service")


class CloseWhileDraining:
    """ASGI wrapper: once the app drains, every response says `Connection: close` (uvicorn then closes the
    connection after it), so no client sends its next request on a keep-alive connection the listener's
    shutdown is about to close under it (a `RemoteProtocolError` for a client that ignores readiness).
    In a pod, also the responses `balance` picks: this worker holds more than its share of connections."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # DrainingServer and the test helpers reach the AppState through config.app
        self.balance: ConnectionBalance | None = None  # set by `serve` for a worker of a pod

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                omr = getattr(self.state, "omr", None)
                if omr is not None and (omr.shutting_down or self._rebalance(omr)):
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)

    def _rebalance(self, omr: Any) -> bool:
        if self.balance is None or not self.balance.close_next():
            return False
        omr.metrics.connections_rebalanced.inc()
        return True


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with a readiness-first shutdown: the first signal only starts draining."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._drain_started: float | None = None
        self.balance: ConnectionBalance | None = None  # a pod's worker: updated every tick (0.1 s)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            # A Python signal handler runs between two bytecodes of whatever the main thread was doing, possibly
            # inside a metric update that holds prometheus_client's (non-reentrant) lock: updating a metric here
            # deadlocked a worker (multiprocess mode holds that lock while it grows its file). So only the
            # timestamp is set here; readiness, metrics and drain callbacks run on the event loop, next turn.
            try:
                asyncio.get_running_loop().call_soon_threadsafe(self._start_draining, sig)
            except RuntimeError:  # no loop running (yet): nothing else can hold those locks
                self._start_draining(sig)
            return  # exit 0 after a clean drain (not re-raised as uvicorn does with captured signals)
        super().handle_exit(sig, frame)

    def _start_draining(self, sig: int) -> None:
        log.info("signal %d: draining (accepting for %.1fs more, then finishing in-flight work)", sig,
                 self._settings.shutdown_delay_s)  # fmt: skip
        omr = getattr(getattr(self.config.app, "state", None), "omr", None)
        if omr is not None:
            omr.start_draining()

    async def on_tick(self, counter: int) -> bool:
        draining = self._drain_started is not None and not self.should_exit
        if draining and time.monotonic() - self._drain_started >= self._settings.shutdown_delay_s:
            self.should_exit = True
        if self.balance is not None:
            self.balance.update()
        return await super().on_tick(counter)


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model-repository")
    p.add_argument("--default-model")
    p.add_argument("--default-version")
    p.add_argument("--model-variant", choices=["fp32", "int8", "fp16", "auto"])
    p.add_argument("--providers", help="comma-separated, in preference order")
    p.add_argument("--require-provider")
    p.add_argument("--intra-op-threads", type=int)
    p.add_argument("--preprocess-threads", type=int)
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--max-delay-ms", type=float)
    p.add_argument("--max-batches-in-flight", type=int)
    p.add_argument("--queue-limit", type=int)
    p.add_argument("--request-timeout-s", type=float)
    p.add_argument("--admission-wait-fraction", type=float)
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-crops-per-request", type=int)
    p.add_argument("--shutdown-delay-s", type=float)
    p.add_argument("--drain-timeout-s", type=float)
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--workers", type=int, help="worker processes; 0 = the container's CPUs (cgroup quota)")
    args = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    if "providers" in args:
        args["providers"] = [s.strip() for s in args["providers"].split(",") if s.strip()]
    return args


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The one uvicorn configuration, used by the single process and by every worker of a pod."""
    from service.http import frontdoor

    return uvicorn.Config(
        CloseWhileDraining(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s + 0.999),
        access_log=False,  # per-request logs at thousands of requests/s cost more than they tell; see /metrics
        lifespan="on",
        **frontdoor.uvicorn_kwargs(settings),  # header/body/connection limits (docs/reliability.md, hostile clients)
    )


def serve(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    pod: WorkerSlot | None = None,
    session_factory: SessionFactory | None = None,
) -> bool:
    """Run one service process until it has drained (a worker passes the pod's inherited socket and its slot).
    False if the app never started (its lifespan failed: the model did not load)."""
    from service.app import create_app
    from service.core.runtime import create_session

    app = create_app(settings, session_factory or create_session, pod=pod)
    config = uvicorn_config(app, settings)
    server = DrainingServer(config, settings)
    if pod is not None and settings.balance_connections:
        server.balance = config.app.balance = ConnectionBalance(pod, lambda: len(server.server_state.connections))
    server.run(sockets=sockets)
    return server.started


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    settings = Settings(**parse_args(argv))
    setup_logging(settings)
    workers = resolve_workers(settings.workers)
    if workers == 1:
        if not serve(settings):
            raise SystemExit(3)  # uvicorn's start-up failure code
        return
    raise SystemExit(supervisor.run(settings, workers))


if __name__ == "__main__":
    main()
