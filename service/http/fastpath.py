"""`POST /classify` as a plain ASGI endpoint: the hot route without FastAPI's per-request machinery.

Why: a one-crop request spent more CPU in FastAPI (dependency solving, `Request` and `QueryParams` objects,
the exception middleware, the response class) than in decoding and the model together; see
docs/performance.md, "Single crops". `ServiceApp` (`service.app`) sends `POST /classify` here and every
other route to FastAPI. What the route promises stays in one place: this module only reads the headers and
the query string, then runs `service.http.classify.classify_call` exactly like the FastAPI route does (which
still declares the route for the OpenAPI document, and serves it when an app is mounted without
`ServiceApp`). Errors are `service.errors` exceptions turned into the same JSON as `service.http.errors`.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from service.errors import Unavailable
from service.http.classify import Call, classify_call
from service.http.deps import check_token, check_warm, receive_body, watch_disconnect
from service.http.errors import error_answer, send_json
from service.http.query import media_type, parse_query
from service.state import AppState

PATH = "/classify"


class _Route:
    """What `RequestMetrics` labels a request with (`scope["route"].path`, as Starlette's routes have)."""

    path = PATH


ROUTE = _Route()


async def classify_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app for `POST /classify` (the app's state is `scope["app"].state.omr`)."""
    scope["route"] = ROUTE
    state: AppState | None = getattr(scope["app"].state, "omr", None)
    try:
        if state is None:
            raise Unavailable("the service is starting", retry_after_s=1)
        # one pass over the raw headers for the four this route reads (names arrive lower-cased)
        content_type = content_length = authorization = crop_shape = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-crop-shape":
                crop_shape = value.decode("latin-1")
        if state.token is not None:
            check_token(authorization or "", state.token)
        check_warm(state)
        call = Call(
            content_type=media_type(content_type or ""),
            crop_shape=crop_shape,
            query=parse_query(scope.get("query_string", b"")),
            read_body=lambda deadline: receive_body(receive, content_length, state, deadline),
            watch=lambda work: watch_disconnect(receive, state, work),
        )
        body = await classify_call(state, call)
    except Exception as exc:  # the same answers as FastAPI's handlers give (service.http.errors)
        await send_json(send, *error_answer(exc))
        return
    await send_json(send, 200, body)
