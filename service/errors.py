"""Every error the service answers with, and its HTTP status. One tree, one handler (`http/errors.py`).

    ServiceError                 500  internal            (also the catch-all: no stack trace leaves)
    ├── BadRequest               400  bad_request         malformed JSON, wrong types, bad shape header
    │   ├── InvalidCrops         422  invalid_crops       names every offending crop: index, id, reason
    │   ├── InvalidQuestions     422  invalid_questions   names every offending question: id, reason
    │   └── UnknownProfile       400  unknown_profile
    ├── Unauthorized             401  unauthorized        no detail, WWW-Authenticate: Bearer
    ├── ModelNotFound            404  model_not_found
    ├── RequestTimeout           408  request_timeout     the body did not arrive within the deadline; closes
    ├── PayloadTooLarge          413  payload_too_large   body or crop-count limit (checked before decoding)
    ├── UnsupportedMediaType     415  unsupported_media_type
    ├── Overloaded               429  overloaded          Retry-After; decided at admission, before queueing
    ├── InferenceFailed          500  inference_failed    the model call failed (only that batch's requests)
    ├── Unavailable              503  unavailable         not ready / shutting down; Retry-After
    └── DeadlineExceeded         504  deadline_exceeded   request_timeout_s passed; its queued rows are dropped

The JSON body is `{"error": "<message>", "code": "<code>", ...extra}` - a plain string under `error` as the
Open Inference Protocol (V2) requires, so tritonclient shows the message unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar


def clip(value: object, limit: int = 64) -> str:
    """A client-supplied value for an error message: quoted, and cut to `limit` characters (never echoed whole)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, **self.extra}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class InvalidCrops(BadRequest):
    """One or more crops could not be used; `crops` lists each with index, id, reason and message."""

    status = 422
    code = "invalid_crops"

    def __init__(self, crops: list[dict[str, Any]]) -> None:
        first = crops[0]
        more = f" (and {len(crops) - 1} more)" if len(crops) > 1 else ""
        super().__init__(f"crop {first['index']} (id {first['id']!r}): {first['message']}{more}", crops=crops)


class InvalidQuestions(BadRequest):
    """The request's question grouping cannot be used; `questions` lists each with id, reason and message
    (the first `LISTED`; `total` counts them all). Ids are client strings: clipped in the message."""

    status = 422
    code = "invalid_questions"
    LISTED = 100

    def __init__(self, questions: list[dict[str, Any]]) -> None:
        first, total = questions[0], len(questions)
        more = f" (and {total - 1} more)" if total > 1 else ""
        super().__init__(
            f"question {clip(first['id'])}: {first['message']}{more}", questions=questions[: self.LISTED], total=total
        )


class UnknownProfile(BadRequest):
    code = "unknown_profile"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("unauthorized")

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"


class RequestTimeout(ServiceError):
    """The client did not send its body within the request deadline (the front door has its own 408s)."""

    status = 408
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the rest of the body may still be on its way: do not parse it as a request


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}  # the body was not read: the front door drains it briefly, then closes


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class _RetryLater(ServiceError):
    def __init__(self, message: str, retry_after_s: float = 1.0, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.retry_after_s = max(1, int(retry_after_s + 0.999))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Overloaded(_RetryLater):
    status = 429
    code = "overloaded"


class InferenceFailed(ServiceError):
    status = 500
    code = "inference_failed"


class Unavailable(_RetryLater):
    status = 503
    code = "unavailable"


class DeadlineExceeded(ServiceError):
    status = 504
    code = "deadline_exceeded"
