"""The grpc.aio server beside REST: started in the app's lifespan, on the same event loop, over the same state.

Every worker process runs one (H4's topology: each worker's lifespan starts its own) on the shared gRPC port:
grpc sets SO_REUSEPORT on Linux by default, so the kernel spreads connections over the workers. HTTP/2
connections are long-lived and pin a client to one worker (and one pod): `grpc_max_connection_age_s` makes
clients reconnect now and then so new workers/pods get their share.

Front-door bounds (the gRPC side of the HTTP limits):
- a message over `max_body_bytes` is refused by grpc before it is read whole (RESOURCE_EXHAUSTED);
- the messages held by calls not yet answered are bounded by `max_buffered_bytes` (UNAVAILABLE + retry-after,
  as REST's 503; the servicer counts them, apart from REST's own budget: a worker holds at most twice it);
- at most `max_connections` gRPC connections per worker (REST's cap, counted apart), closed at accept beyond;
- at most `grpc_max_concurrent_rpcs` calls are in the process at once; more get RESOURCE_EXHAUSTED at once
  (grpc's own limit: nothing queues without bound), and `grpc_max_concurrent_streams` per connection;
- keepalive pings find dead peers; idle connections close after `grpc_max_connection_idle_s`; clients may
  not ping more often than every 10 s without calls in flight (grpc's ping-flood guard).

Shutdown: `stop(grace)` refuses new calls (UNAVAILABLE), lets those in flight finish within `grace`, then
cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.servicer import InferenceServicer
from service.settings import Settings
from service.state import AppState

log = logging.getLogger(__name__)

#: at shutdown, how long no call must be in a handler before the drain counts as done
IDLE_SETTLE_S = 0.2


def options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments (grpc core's `GRPC_ARG_*` names) from the settings."""
    opts = [
        ("grpc.so_reuseport", 1),  # grpc's Linux default, set so it cannot change under us: workers share the port
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),  # REST's per-worker cap, for gRPC
        ("grpc.keepalive_time_ms", int(settings.grpc_keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * 1000)),
    ]
    if settings.grpc_max_connection_age_s:
        opts += [
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
            # calls in flight when the age is reached get this long to finish
            ("grpc.max_connection_age_grace_ms", int(settings.drain_timeout_s * 1000)),
        ]
    return opts


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class GrpcServer:
    server: grpc.aio.Server
    port: int
    loop: asyncio.AbstractEventLoop
    servicer: InferenceServicer
    _stopping: asyncio.Task[None] | None = field(default=None, repr=False)
    _later: list[asyncio.Task[None]] = field(default_factory=list, repr=False)

    def stop_later(self, delay_s: float, grace_s: float) -> None:
        """On SIGTERM (callable from any thread): serve `delay_s` more, as REST does while load balancers
        notice readiness turned false, then `stop(grace_s)` - when uvicorn closes the HTTP listener."""

        async def later() -> None:
            await asyncio.sleep(delay_s)
            await self.stop(grace_s)

        self.loop.call_soon_threadsafe(lambda: self._later.append(asyncio.ensure_future(later())))

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, finish those in flight within `grace_s`. Safe to call more than once."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain(grace_s))
        await asyncio.shield(self._stopping)
        for task in self._later:
            if task is not asyncio.current_task():
                task.cancel()

    async def _drain(self, grace_s: float) -> None:
        log.info("gRPC: refusing new calls, finishing those in flight (up to %.1fs)", grace_s)
        closing = asyncio.ensure_future(self.server.stop(grace_s))  # new calls are refused from here on
        deadline = self.loop.time() + grace_s
        # grpc's own stop also waits for every client *connection* to go away (seen taking the whole grace on a
        # loaded machine with no call left); ours ends when the calls that reached a handler have finished
        while not closing.done() and (left := deadline - self.loop.time()) > 0:
            if self.servicer.in_flight == 0:
                await asyncio.sleep(IDLE_SETTLE_S)  # a call grpc had accepted may still be reaching its handler
                if self.servicer.in_flight == 0:
                    break
                continue
            idle = asyncio.ensure_future(self.servicer.idle())
            await asyncio.wait({closing, idle}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
        if not closing.done():
            await self.server.stop(0)  # cancels what is left: no call of ours, only connections and stragglers
        await closing


async def start(state: AppState) -> GrpcServer:
    """Bind `host:grpc_port` and start serving; fails start-up loudly if the port cannot be bound."""
    settings = state.settings
    assert settings.grpc_port, "gRPC is off (grpc_port unset)"
    server = grpc.aio.server(options=options(settings), maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs)
    servicer = InferenceServicer(state)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    where = address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(where)
    except RuntimeError as exc:  # grpc raises on a port it cannot bind
        raise RuntimeError(f"gRPC cannot listen on {where}: {exc}") from exc
    await server.start()
    log.info("gRPC (Open Inference Protocol) listening on %s", where)
    return GrpcServer(server, port, asyncio.get_running_loop(), servicer)
