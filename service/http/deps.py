"""FastAPI dependencies: the app state, bearer-token auth, and the size-limited request body."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from starlette.types import Receive

from service.errors import PayloadTooLarge, RequestTimeout, Unauthorized, Unavailable
from service.state import AppState

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its queued work was dropped."""


# async: a sync dependency runs in the anyio thread pool, a thread hop per request (py-spy: loadtest.profile)
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.omr
    return state


State = Annotated[AppState, Depends(get_state)]


def check_token(header: str, token: str) -> None:
    """The `Authorization` header's value against the configured token (401 unless `Bearer <token>`)."""
    scheme, _, presented = header.partition(" ")
    # constant-time: the comparison takes as long for a near miss as for garbage
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Unauthorized()


def _check_token(request: Request, token: str) -> None:
    check_token(request.headers.get("authorization", ""), token)


def check_warm(state: AppState) -> None:
    """Inference waits for warm-up (503 + Retry-After); a draining server still serves what it accepts."""
    if not state.warmed.is_set():
        raise Unavailable("the model is still warming up", retry_after_s=1)


async def require_auth(request: Request, state: State) -> None:
    """classify / infer endpoints: the token when one is configured."""
    if state.token is not None:
        _check_token(request, state.token)


async def require_warm(state: State) -> None:
    check_warm(state)


async def require_auth_health(request: Request, state: State) -> None:
    if state.token is not None and state.settings.auth_health:
        _check_token(request, state.token)


async def require_auth_metrics(request: Request, state: State) -> None:
    if state.token is not None and state.settings.auth_metrics:
        _check_token(request, state.token)


async def read_body(request: Request, state: AppState, deadline: float | None = None) -> bytes:
    """The request body of a Starlette request (`receive_body`)."""
    return await receive_body(request.receive, request.headers.get("content-length"), state, deadline)


async def receive_body(receive: Receive, declared: str | None, state: AppState, deadline: float | None = None) -> bytes:
    """The request body from ASGI `receive`, refused with 413 as soon as it is known to exceed `OMR_MAX_BODY_BYTES`.

    `declared` (Content-Length) is checked before reading anything; the stream is counted too (chunked
    uploads, lying headers), so an oversized body is never held in memory whole. The request's deadline (a
    monotonic time) covers the read: a body still arriving then is a 408 (the front door's `body_timeout_s` is
    the backstop). A client that disconnects meanwhile raises `ClientDisconnected`.
    """
    limit = state.settings.max_body_bytes
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        state.metrics.rejections.labels("body_too_large").inc()
        raise PayloadTooLarge(f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    state.metrics.rejections.labels("body_too_large").inc()
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        state.metrics.rejections.labels("body_timeout").inc()
        raise RequestTimeout(f"the request body was not received within the deadline ({total} bytes came)") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def until_disconnect(request: Request, state: AppState, work: Awaitable[T]) -> T:
    """`watch_disconnect` for a Starlette request."""
    return await watch_disconnect(request.receive, state, work)


async def watch_disconnect(receive: Receive, state: AppState, work: Awaitable[T]) -> T:
    """Await `work` (after the body was read), cancelling it if the client disconnects first.

    Cancelling cancels the batcher future, so the request's still-queued rows are dropped instead of computed.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    state.metrics.rejections.labels("client_disconnected").inc()
    raise ClientDisconnected()
