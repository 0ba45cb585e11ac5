"""Open Inference Protocol (KServe V2 / Triton HTTP) so standard clients work unchanged.

Inputs (exactly one per request):
- `IMAGE`, BYTES [N]: encoded images (PNG/JPEG/...). As binary tensor data the raw file bytes (4-byte
  little-endian length prefix each, the protocol's BYTES serialisation); in JSON, base64 strings (JSON cannot
  carry raw bytes).
- `PIXELS`, UINT8 [N, H, W]: grayscale crops.
Request `parameters`: `tta` (bool), `profile` (str). Outputs: `probabilities` FP32 [N, C], `label` BYTES [N],
`marked` BOOL [N]; binary when asked per output (`binary_data`) or for all (`binary_data_output`).
The binary tensor extension: `Inference-Header-Content-Length` gives the JSON header's size; binary data
follows it in input order.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response

from service import __version__
from service.core.registry import ServedModel
from service.core.result import Classification
from service.http import v2_request
from service.http.deps import State, read_body, require_auth, require_auth_health, require_warm, until_disconnect
from service.http.errors import json_response
from service.http.schemas import error_responses
from service.http.v2_request import HEADER, V2Request

health = APIRouter(
    prefix="/v2",
    dependencies=[Depends(require_auth_health)],
    tags=["v2"],
    responses=error_responses(400, 401, 404, 503),
)
infer_router = APIRouter(
    prefix="/v2",
    dependencies=[Depends(require_auth), Depends(require_warm)],
    tags=["v2"],
    responses=error_responses(400, 401, 404, 413, 422, 429, 499, 500, 503, 504),
)


@health.get("")
async def server_metadata() -> Response:
    return json_response({"name": "omr-bubble-service", "version": __version__, "extensions": ["binary_tensor_data"]})


@health.get("/health/live")
async def live() -> Response:
    return json_response({"live": True})


@health.get("/health/ready")
async def ready(state: State) -> Response:
    return json_response({"ready": state.ready}, 200 if state.ready else 503)


def _metadata(state: State, name: str, version: str | None) -> dict[str, Any]:
    served = state.registry.get(name, version)
    classes = list(served.config.classes)
    return {
        "name": served.name,
        "versions": [served.version] if version else list(state.registry.models[served.name]),
        "platform": served.config.platform,
        "inputs": [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [-1]},
            {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, -1, -1]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "marked", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": {"classes": classes, "profiles": sorted(served.config.profiles), "provider": served.provider},
    }


@health.get("/models/{name}")
async def model_metadata(name: str, state: State) -> Response:
    return json_response(_metadata(state, name, None))


@health.get("/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: str, state: State) -> Response:
    return json_response(_metadata(state, name, version))


def _model_ready(state: State, name: str, version: str | None) -> Response:
    state.registry.get(name, version)  # 404 for an unknown model/version
    return json_response({"name": name, "ready": state.ready}, 200 if state.ready else 503)


@health.get("/models/{name}/ready")
async def model_ready(name: str, state: State) -> Response:
    return _model_ready(state, name, None)


@health.get("/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, state: State) -> Response:
    return _model_ready(state, name, version)


def _outputs(c: Classification) -> dict[str, tuple[str, list[int], np.ndarray | list[str]]]:
    labels = [d.label for d in c.decisions]
    return {
        "probabilities": ("FP32", list(c.probabilities.shape), c.probabilities.astype(np.float32)),
        "label": ("BYTES", [len(labels)], labels),
        "marked": ("BOOL", [len(labels)], np.array([d.marked for d in c.decisions], dtype=np.bool_)),
    }


def _encode(req: V2Request, served: ServedModel, c: Classification) -> Response:
    tensors = _outputs(c)
    names = req.outputs  # validated before inference: only known names, typed parameters
    outputs, blobs = [], []
    for name, binary in names:
        datatype, shape, value = tensors[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                blob = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in value)
            else:
                assert isinstance(value, np.ndarray)
                blob = value.tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = value.ravel().tolist() if isinstance(value, np.ndarray) else value
        outputs.append(out)
    head = {"model_name": served.name, "model_version": served.version, "outputs": outputs}
    if req.id is not None:
        head["id"] = req.id
    head_bytes = orjson.dumps(head)
    if not blobs:
        return Response(head_bytes, media_type="application/json")
    return Response(
        head_bytes + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER: str(len(head_bytes))},
    )


#: JSON headers larger than this are parsed in a worker thread (orjson holds the GIL, so the real bound on
#: the loop's stall is `v2_request.JSON_MAX_VALUES`; the thread keeps the loop's own callbacks flowing)
_PARSE_INLINE_MAX = 1 << 20


async def _infer(request: Request, state: State, name: str, version: str | None) -> Response:
    deadline = time.monotonic() + state.settings.request_timeout_s
    served = state.registry.get(name, version)
    body = await read_body(request, state, deadline)
    head, binary = v2_request.split_head(body, request.headers.get(HEADER.lower()))
    if len(head) > _PARSE_INLINE_MAX:
        parsed = await asyncio.to_thread(v2_request.loads, head)
    else:
        parsed = v2_request.loads(head)
    req = v2_request.decode(parsed, binary, state.classifier.check_count)
    del body, head, parsed  # the request's bytes are not needed past here
    common: dict[str, Any] = {"deadline": deadline, "model": served.name, "version": served.version,
                              "profile": req.profile, "tta_requested": req.tta}  # fmt: skip
    if req.kind == "pixels":
        assert isinstance(req.data, np.ndarray)
        result = await until_disconnect(request, state, state.classifier.classify_raw(req.data, None, **common))
    else:
        assert isinstance(req.data, list)
        work = state.classifier.classify_encoded(req.data, None, base64_encoded=req.kind == "base64", **common)
        result = await until_disconnect(request, state, work)
    return _encode(req, served, result)


_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BYTES", "UINT8"]},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "JSON header of Inference-Header-Content-Length bytes, then binary tensor data",
            },
        },
    }
}


@infer_router.post("/models/{name}/infer", openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request, state: State) -> Response:
    return await _infer(request, state, name, None)


@infer_router.post("/models/{name}/versions/{version}/infer", openapi_extra=_INFER_DOC)
async def infer_version(name: str, version: str, state: State, request: Request) -> Response:
    return await _infer(request, state, name, version)
