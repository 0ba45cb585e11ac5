"""Pure-ASGI middleware: request count and end-to-end latency by route template and status."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

_CHILDREN: dict[tuple[int, str, int], tuple[Metrics, Any, Any]] = {}


def _children(m: Metrics, endpoint: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency children of (endpoint, status), looked up once per `Metrics`."""
    key = (id(m), endpoint, status)
    hit = _CHILDREN.get(key)
    if hit is None or hit[0] is not m:  # the entry holds `m`, so its id is not reused while cached
        if len(_CHILDREN) >= 4096:  # route templates x statuses x the few Metrics a process builds
            _CHILDREN.clear()
        label = str(status)
        hit = _CHILDREN[key] = (m, m.requests.labels(endpoint, label), m.request_seconds.labels(endpoint, label))
    return hit[1], hit[2]


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
                counter, seconds = _children(state.metrics, endpoint, status)
                counter.inc()
                seconds.observe(time.monotonic() - start)
