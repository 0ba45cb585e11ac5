"""The one place that turns exceptions into JSON responses (see `service.errors` for the tree)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Send

from service.errors import ServiceError
from service.http.deps import ClientDisconnected

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type="application/json"
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": message, "code": code, **extra}, status, headers)


def error_answer(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for an exception a route raised: `ServiceError`s as they say, a client gone
    499, anything else 500 without a stack trace. One mapping for FastAPI's handlers and the ASGI fast path."""
    if isinstance(exc, ServiceError):
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return exc.status, exc.body(), exc.headers()
    if isinstance(exc, ClientDisconnected | ClientDisconnect):
        # nobody is listening; the status is for the access log and metrics (nginx's "client closed request")
        return 499, {"error": "client disconnected", "code": "client_disconnected"}, {}
    log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    return 500, {"error": "internal server error", "code": "internal"}, {}  # no stack trace ever leaves


async def send_json(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """A JSON answer written straight to ASGI `send` (for code that runs outside FastAPI's routing)."""
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def _error(_request: Request, exc: Exception) -> Response:
    status, body, headers = error_answer(exc)
    return json_response(body, status, headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return error_response(400, "bad_request", "; ".join(problems) or "invalid request")


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnected, _error)
    app.add_exception_handler(ClientDisconnect, _error)  # gone while the body was being read
    app.add_exception_handler(Exception, _error)
