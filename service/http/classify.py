"""`POST /classify`: JSON with base64 crops, or a raw uint8 N x H x W tensor (application/octet-stream)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi import Query as QueryParam
from pydantic import ValidationError

from service.core.preprocess import CropError, check_side
from service.core.questions import QuestionResult, decide_questions, plan_questions
from service.core.result import Classification
from service.errors import BadRequest, InvalidCrops, UnsupportedMediaType, clip
from service.http.deps import State, read_body, require_auth, require_warm, until_disconnect
from service.http.errors import json_response
from service.http.query import Query, media_type
from service.http.schemas import ClassifyRequest, ClassifyResponse, error_responses
from service.state import AppState

router = APIRouter(dependencies=[Depends(require_auth), Depends(require_warm)], tags=["classify"])

_SCHEMA_REF = "#/components/schemas/{model}"
#: components the OpenAPI document needs for the hand-declared request body (merged in by `app.py`)
REQUEST_SCHEMA = ClassifyRequest.model_json_schema(ref_template=_SCHEMA_REF)
OPENAPI_COMPONENTS: dict[str, Any] = REQUEST_SCHEMA.pop("$defs", {})

#: requests with at most this many crops are not cancelled when their client disconnects (see classify_call)
UNWATCHED_MAX_CROPS = 4

_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 499, 500, 503, 504)


def render(c: Classification) -> dict[str, Any]:
    served = c.model
    return {
        "model": {"name": served.name, "version": served.version, "provider": served.provider},
        "profile": c.profile,
        "tta": c.tta,
        "sheet": c.sheet,
        "results": [
            {
                "id": crop_id,
                "label": d.label,
                "confidence": d.confidence,
                "marked": d.marked,
                "marked_probability": d.marked_probability,
                "probabilities": d.probabilities,
                "review": d.review,
                "review_reasons": d.review_reasons,
                "decided_by": d.decided_by,
            }
            for crop_id, d in zip(c.ids, c.decisions, strict=True)
        ],
    }


def render_questions(questions: list[QuestionResult]) -> list[dict[str, Any]]:
    """The response's `questions` list (only added when crops name questions: old clients see no change)."""
    return [
        {
            "id": q.id,
            "status": q.status,
            "marked": q.marked,
            "candidates": q.candidates,
            "confidence": q.confidence,
            "decided_by": q.decided_by,
            "review": q.review,
            "review_reasons": q.review_reasons,
        }
        for q in questions
    ]


def _validation_message(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    """pydantic errors -> a message naming the crop index (and the list of bad crops)."""
    crops: list[dict[str, Any]] = []
    problems: list[str] = []
    for err in exc.errors()[:20]:
        loc = err.get("loc", ())
        where = ".".join(str(p) for p in loc) or "body"
        got = f" (got {err['input']!r:.60})" if loc and loc[-1] == "question" and "input" in err else ""
        problems.append(f"{where}: {err.get('msg', 'invalid')}{got}")
        if len(loc) >= 2 and loc[0] == "crops" and isinstance(loc[1], int):
            crops.append({"index": loc[1], "id": None, "reason": "invalid_field", "message": problems[-1]})
    return "; ".join(problems), crops


def _shape(header: str | None, n: int | None, h: int | None, w: int | None) -> tuple[int, int, int]:
    if header is not None:
        # strict decimal digits (an optional '-' so a negative one is named as such): int() would take "1_0"
        fields = [p.strip() for p in header.split(",")]
        ok = all(f.removeprefix("-").isascii() and f.removeprefix("-").isdigit() for f in fields)
        parts = [int(f) for f in fields] if ok else []
        if len(parts) != 3:
            raise BadRequest(f"X-Crop-Shape must be 'N,H,W' (three integers), got {clip(header, 40)}")
        n, h, w = parts
    if n is None or h is None or w is None:
        raise BadRequest("raw tensors need their shape: header X-Crop-Shape: N,H,W or query parameters n, h, w")
    if min(n, h, w) < 0:
        raise BadRequest(f"shape {n},{h},{w} has a negative dimension")
    return n, h, w


@dataclass(frozen=True)
class Call:
    """One `POST /classify` as the transport hands it over: what its headers and query said, and how to read
    its body and watch its connection. The FastAPI route and the ASGI fast path (`service.http.fastpath`)
    both build one and run `classify_call`, so the two cannot answer differently."""

    content_type: str  # lower case, without parameters
    crop_shape: str | None  # the X-Crop-Shape header
    query: Query
    read_body: Callable[[float], Awaitable[bytes]]  # deadline -> body
    watch: Callable[[Awaitable[Classification]], Awaitable[Classification]]  # cancels it on a disconnect


def _options(src: Query | ClassifyRequest, deadline: float) -> dict[str, Any]:
    """The classifier's per-request options: named alike in the raw path's query string and the JSON body."""
    return {"deadline": deadline, "model": src.model, "version": src.version, "profile": src.profile,
            "tta_requested": src.tta, "sheet": src.sheet, "sheet_context": src.sheet_context}  # fmt: skip


async def _finish(call: Call, work: Awaitable[Classification], crops: int) -> Classification:
    """Await `work`, cancelled if the client disconnects first. A request of a few crops is not watched: its
    rows cost less to compute for nobody than a watcher task costs every such request (~5 % of a one-crop
    request's CPU); its deadline still drops them."""
    return await (work if crops <= UNWATCHED_MAX_CROPS else call.watch(work))


async def classify_call(state: AppState, call: Call) -> dict[str, Any]:
    """Classify a batch of bubble crops; results come back in request order (the response body)."""
    deadline = time.monotonic() + state.settings.request_timeout_s
    classifier = state.classifier
    q = call.query
    if call.content_type == "application/octet-stream":
        n_, h_, w_ = _shape(call.crop_shape, q.n, q.h, q.w)
        classifier.check_count(n_)  # count and crop size are checked before the body is read
        try:
            check_side(w_, h_)
        except CropError as exc:
            raise InvalidCrops([{"index": 0, "id": "0", "reason": exc.reason, "message": exc.message}]) from None
        body = await call.read_body(deadline)
        if len(body) != n_ * h_ * w_:
            raise InvalidCrops(
                [{"index": 0, "id": "0", "reason": "bad_shape",
                  "message": f"body is {len(body)} bytes; shape {n_}x{h_}x{w_} needs {n_ * h_ * w_}"}]
            )  # fmt: skip
        tensor = np.frombuffer(body, np.uint8).reshape(n_, h_, w_)
        return render(await _finish(call, classifier.classify_raw(tensor, None, **_options(q, deadline)), n_))
    if call.content_type not in ("application/json", ""):
        raise UnsupportedMediaType(
            f"Content-Type {call.content_type!r}: send application/json or application/octet-stream"
        )
    body = await call.read_body(deadline)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object with a 'crops' list")
    crops = payload.get("crops")
    if isinstance(crops, list):
        classifier.check_count(len(crops))  # before validating or decoding anything
    try:
        req = ClassifyRequest.model_validate(payload)
    except ValidationError as exc:
        message, bad = _validation_message(exc)
        raise BadRequest(message, crops=bad) from None
    ids = [c.id if c.id is not None else str(i) for i, c in enumerate(req.crops)]
    overrides = {qid: qs.max_marks for qid, qs in (req.questions or {}).items()}
    plan = plan_questions([c.question for c in req.crops], req.max_marks, overrides)  # 422 before any decoding
    work = classifier.classify_encoded(
        [c.image for c in req.crops], ids, base64_encoded=True, **_options(req, deadline)
    )
    result = await _finish(call, work, len(ids))
    out = render(result)
    if plan:
        out["questions"] = render_questions(decide_questions(plan, result.decisions, ids, stats=result.stats))
    return out


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": REQUEST_SCHEMA},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def classify(
    request: Request,
    state: State,
    query: Annotated[Query, QueryParam()],
) -> Response:
    """Classify a batch of bubble crops; results come back in request order."""
    call = Call(
        content_type=media_type(request.headers.get("content-type", "")),
        crop_shape=request.headers.get("x-crop-shape"),
        query=query,
        read_body=lambda deadline: read_body(request, state, deadline),
        watch=lambda work: until_disconnect(request, state, work),
    )
    return json_response(await classify_call(state, call))
