"""Pure-ASGI middleware: request count and end-to-end latency by route template and status."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = getattr(scope["app"].state, "omr", None)
            if state is not None:
                # the route template (/v2/models/{name}/infer), never the raw path: bounded label values
                endpoint = getattr(scope.get("route"), "path", "unmatched")
                counter, seconds = state.metrics.request_children(endpoint, status)
                counter.inc()
                seconds.observe(time.monotonic() - start)
