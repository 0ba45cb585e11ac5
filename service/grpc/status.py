"""`service.errors` -> gRPC status codes. The message is REST's message, unchanged.

    BadRequest, InvalidCrops, UnknownProfile   INVALID_ARGUMENT   (400, 422)
    PayloadTooLarge (crop count)               INVALID_ARGUMENT   (413: retrying cannot help; a message over
                                                                   the byte limit is refused by grpc itself
                                                                   with RESOURCE_EXHAUSTED)
    UnsupportedMediaType                       INVALID_ARGUMENT   (415)
    Unauthorized                               UNAUTHENTICATED    (401)
    ModelNotFound                              NOT_FOUND          (404)
    Overloaded                                 RESOURCE_EXHAUSTED (429) + retry-after trailers
    Unavailable                                UNAVAILABLE        (503) + retry-after trailers
    DeadlineExceeded                           DEADLINE_EXCEEDED  (504)
    InferenceFailed, ServiceError, anything    INTERNAL           (500; no stack trace leaves the process)

Trailing metadata on every error: `omr-error-code` (REST's `code`, e.g. `invalid_crops`) and `omr-error-bin`
(REST's JSON error body, e.g. with every offending crop; cut to the first crops so it fits grpc's 8 KiB
metadata limit). Retryable errors add `retry-after` (seconds, as REST's header) and `grpc-retry-pushback-ms`
(the trailer gRPC's own retry policy obeys).
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from service import errors

#: most `crops` entries copied into `omr-error-bin` (the message already names the first one and the count)
MAX_DETAIL_CROPS = 20

_CODES: dict[type[errors.ServiceError], grpc.StatusCode] = {
    errors.BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(exc: errors.ServiceError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def trailers(exc: errors.ServiceError) -> tuple[tuple[str, str | bytes], ...]:
    body: dict[str, Any] = exc.body()
    if isinstance(body.get("crops"), list) and len(body["crops"]) > MAX_DETAIL_CROPS:
        body = {
            **body,
            "crops": body["crops"][:MAX_DETAIL_CROPS],
            "crops_omitted": len(body["crops"]) - MAX_DETAIL_CROPS,
        }
    md: list[tuple[str, str | bytes]] = [("omr-error-code", exc.code), ("omr-error-bin", orjson.dumps(body))]
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        md += [("retry-after", str(retry)), ("grpc-retry-pushback-ms", str(int(retry * 1000)))]
    return tuple(md)
