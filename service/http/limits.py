"""Pure-ASGI middleware: a budget for the request-body bytes one worker holds across all its connections.

`OMR_MAX_BODY_BYTES` bounds one request; this bounds their sum (`OMR_MAX_BUFFERED_BYTES`), so twenty clients
that each send 30 MB and withhold the last byte cannot hold 600 MB between them. A request's share is its
declared Content-Length, reserved before the app runs (refused at once with 503 + Retry-After when it does
not fit), or for chunked bodies (and lying lengths) what it has sent so far; the share is released when the
request's answer is done, because the route holds the body (and what was parsed from it) until then.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Unavailable
from service.http.errors import send_json
from service.http.ratelog import rejected


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length when it is plain digits (anything else is the app's to refuse)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyBudget:
    def __init__(self, app: ASGIApp, max_buffered_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.max_buffered = max_buffered_bytes
        self.max_body = max_body_bytes
        self.held = 0  # one event loop per worker: no lock needed

    def _refusal(self, scope: Scope, wanted: int) -> Unavailable:
        state = getattr(scope["app"].state, "omr", None)
        if state is not None:
            state.metrics.rejections.labels("buffer_budget").inc()
        rejected.warning("buffer_budget", "refused a %d-byte body: %d of %d buffered bytes are in use", wanted,
                         self.held, self.max_buffered)  # fmt: skip
        return Unavailable(
            f"the server holds too many request bodies right now ({self.max_buffered} bytes); retry shortly",
            retry_after_s=1,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        # a body over the per-request limit is refused (413) before it is read: nothing to reserve for it
        reserved = declared if declared is not None and declared <= self.max_body else 0
        if reserved and self.held + reserved > self.max_buffered:
            refusal = self._refusal(scope, reserved)
            # the body is not read: Connection: close, and the front door lingers, then closes
            await send_json(send, refusal.status, refusal.body(), {**refusal.headers(), "connection": "close"})
            return
        self.held += reserved
        received = 0

        async def counted() -> Message:
            nonlocal received, reserved
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                extra = received - reserved
                if extra > 0:  # beyond the reservation: a chunked body, or more than Content-Length said
                    if self.held + extra > self.max_buffered:
                        raise self._refusal(scope, received)  # -> the app's error handler: 503 JSON
                    self.held += extra
                    reserved += extra
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.held -= reserved
