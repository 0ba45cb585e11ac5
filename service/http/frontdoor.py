"""The HTTP front door: uvicorn's httptools protocol with limits on what a connection may make the server hold.

Every worker builds its uvicorn.Config with `uvicorn_kwargs(settings)`; the limits (all `OMR_` settings) are:

- request head (request line + headers): at most `max_header_bytes` bytes and `max_headers` fields -> 431,
  counted *before* the bytes reach the parser (httptools joins a header value's pieces by concatenation, so an
  unbounded value costs quadratic time on the event loop), and received within `head_timeout_s` -> 408
  (a connection that sends nothing is closed quietly);
- request body: received within `body_timeout_s` of its head -> 408 (the app's own deadline covers reading
  it too, see `deps.read_body`); the bytes bodies hold across connections are budgeted by
  `service.http.limits.BodyBudget` (503);
- at most `max_connections` open connections per worker: the next one gets 503 + Retry-After and is closed;
- RFC 9112: an HTTP/1.1 request needs exactly one Host (two are refused on 1.0 too) -> 400; only HTTP/1.0 and
  1.1 request lines are served (an HTTP/0.9-style line is refused).

A refusal written here is a JSON error like the app's (`{"error", "code"}`) with `Connection: close`; the
connection then *lingers*: the write side is shut (FIN after the reply) and whatever the client still sends
is read and dropped for `linger_s`, so a client that writes its whole body before reading sees the answer
instead of a reset (closing a socket with unread input makes the kernel send RST).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.http.ratelog import rejected
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontDoorLimits:
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    head_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 512
    linger_s: float = 2.0

    @classmethod
    def from_settings(cls, s: Settings) -> FrontDoorLimits:
        return cls(s.max_header_bytes, s.max_headers, s.head_timeout_s, s.body_timeout_s, s.max_connections)


@dataclass
class _Shared:
    """Per-worker state shared by the connections of one protocol class."""

    refused_lingering: int = 0  # refused at connect, not in server_state.connections: bounded separately
    metrics: Any = None  # service.metrics.Metrics, found on the app once its lifespan has built it


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after


def uvicorn_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that install the front door (call it in every worker)."""
    # no WebSocket routes: an Upgrade must not hand the socket to a protocol without these limits
    return {"http": guarded_protocol(FrontDoorLimits.from_settings(settings)), "ws": "none"}


def guarded_protocol(limits: FrontDoorLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to `limits` (uvicorn instantiates the class itself, one per connection)."""
    attrs = {"limits": limits, "shared": _Shared()}
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)


class _CycleTransport:
    """What a request's cycle writes through: `close()` with the body still arriving lingers instead.

    uvicorn closes the connection itself after an answer with `Connection: close` (a 413 sent before the
    body was read, say); closing with the client's bytes unread would reset the connection before it reads
    the answer.
    """

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body and not self._transport.is_closing():
            self._protocol._linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[FrontDoorLimits] = FrontDoorLimits()
    shared: ClassVar[_Shared] = _Shared()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # bytes fed now belong to a request head
        self._head_bytes = 0
        self._header_count = 0
        self._hosts = 0
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._body_cycle: RequestResponseCycle | None = None
        self._lingering = False
        self._refused_at_connect = False
        self._cycle_transport: _CycleTransport | None = None

    # --- connection ---
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._refused_at_connect = True
            if self.shared.refused_lingering >= max(16, self.limits.max_connections // 4):
                transport.close()  # a flood of refusals: do not hold their sockets open to say so
                return
            self.shared.refused_lingering += 1
            cap = self.limits.max_connections
            refusal = _Refusal(503, "too_many_connections", f"this worker holds its limit of {cap} connections", 1)
            self._refuse(refusal)
            return
        super().connection_made(transport)
        self._cycle_transport = _CycleTransport(transport, self)
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._refused_at_connect:
            self.shared.refused_lingering -= 1
            self._refused_at_connect = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # read and dropped: the reply is out, the client may still be sending
        self._unset_keepalive_if_required()
        try:
            room = self.limits.max_header_bytes - self._head_bytes
            if self._in_head and len(data) > room:
                view = memoryview(data)
                if room > 0:
                    self._head_bytes += room
                    self.parser.feed_data(view[:room])
                if self._in_head:
                    raise _Refusal(431, "header_too_large",
                                   f"the request head exceeds {self.limits.max_header_bytes} bytes")  # fmt: skip
                self.parser.feed_data(view[max(room, 0) :])
            else:
                if self._in_head:
                    self._head_bytes += len(data)
                self.parser.feed_data(data)
        except _Refusal as refusal:
            self._refuse(refusal)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, _Refusal) else _Refusal(400, "bad_http", "malformed HTTP request"))
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._refuse(_Refusal(400, "bad_http", "malformed HTTP request"))

    def _unsupported_upgrade_warning(self) -> None:
        rejected.warning("upgrade", "ignored an Upgrade request (no WebSocket or HTTP/2 upgrade is served)")

    # --- parser callbacks ---
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        self._hosts = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refusal(431, "too_many_headers", f"the request has more than {self.limits.max_headers} headers")
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refusal(400, "bad_http", f"HTTP/{version} is not served; use HTTP/1.1")
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            raise _Refusal(400, "bad_host", f"an HTTP/1.1 request needs exactly one Host header, got {self._hosts}")
        super().on_headers_complete()
        self.cycle.transport = self._cycle_transport  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        if self._body_timer is not None and self._body_cycle is self.cycle:
            self._body_timer.cancel()
            self._body_timer = self._body_cycle = None
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        super()._start_asgi_task(cycle, app)
        if cycle.more_body and self._body_timer is None:  # a pipelined request's clock starts when it does
            self._body_cycle = cycle
            self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)

    # --- timeouts ---
    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._lingering or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # still answering the previous request (pipelining): the wait is ours, not the client's
            self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)
            return
        if self._head_bytes == 0:
            self._count("idle_connection")
            self.transport.close()  # never sent a byte: nothing to answer
            return
        self._refuse(_Refusal(408, "head_timeout", f"the request head was not received within "
                                                   f"{self.limits.head_timeout_s:g}s"))  # fmt: skip

    def _body_timed_out(self) -> None:
        cycle, self._body_timer, self._body_cycle = self._body_cycle, None, None
        if cycle is None or not cycle.more_body or self._lingering or self.transport.is_closing():
            return
        refusal = _Refusal(408, "body_timeout", f"the request body was not received within "
                                                f"{self.limits.body_timeout_s:g}s")  # fmt: skip
        if cycle.response_started:  # the app already answered (a 413, say): only the connection is left
            self._count(refusal.reason)
            self.transport.close()
            return
        self._refuse(refusal)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._body_cycle = None

    # --- refusing ---
    def _refuse(self, refusal: _Refusal) -> None:
        self._count(refusal.reason)
        rejected.warning(refusal.reason, "refused a request (%d %s): %s", refusal.status, refusal.reason,
                         refusal.message)  # fmt: skip
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.disconnected:
            if cycle.response_started:
                self.transport.close()  # an answer is half written: no room for another one
                return
            cycle.disconnected = True  # the app's next receive() is a disconnect; its send() is dropped
            cycle.message_event.set()
        body = orjson.dumps({"error": refusal.message, "code": refusal.reason})
        head = [STATUS_LINE[refusal.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body))
        if refusal.retry_after is not None:
            head.append(b"retry-after: %d\r\n" % refusal.retry_after)
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self._linger()

    def _linger(self) -> None:
        if self._lingering:
            return
        self._lingering = True
        self._cancel_timers()
        if self.cycle is not None:
            self.cycle.keep_alive = False
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()  # FIN once the reply is flushed; reading stays open
        self.loop.call_later(self.limits.linger_s, transport.close)

    def _count(self, reason: str) -> None:
        metrics = self._metrics()
        if metrics is not None:
            metrics.rejections.labels(reason).inc()

    def _metrics(self) -> Any:
        if self.shared.metrics is None:
            app: Any = self.config.app
            for _ in range(8):  # the FastAPI app, possibly under uvicorn's middleware wrappers
                omr = getattr(getattr(app, "state", None), "omr", None)
                if omr is not None:
                    self.shared.metrics = omr.metrics
                    break
                app = getattr(app, "app", None)
        return self.shared.metrics
