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

import math
import struct
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response

from service import __version__
from service.core.classifier import Classification
from service.core.registry import ServedModel
from service.errors import BadRequest
from service.http.deps import State, read_body, require_auth, require_auth_health, require_warm, until_disconnect
from service.http.errors import json_response
from service.http.schemas import error_responses

HEADER = "Inference-Header-Content-Length"
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


def _split_bytes(blob: bytes, count: int) -> list[bytes]:
    """The protocol's BYTES serialisation: each element is a uint32 little-endian length, then the bytes."""
    out, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise BadRequest("BYTES tensor data is truncated (length prefix)")
        (size,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + size > len(blob):
            raise BadRequest("BYTES tensor data is truncated (element)")
        out.append(blob[pos : pos + size])
        pos += size
    if len(out) != count:
        raise BadRequest(f"BYTES tensor has {len(out)} elements; its shape says {count}")
    return out


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER} must be an integer") from None
        if not 0 < size <= len(body):
            raise BadRequest(f"{HEADER} {size} does not fit a body of {len(body)} bytes")
        head, binary = body[:size], body[size:]
    else:
        head, binary = body, b""
    try:
        req = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"inference header is not valid JSON: {exc}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise BadRequest("the request must have exactly one input: IMAGE (BYTES [N]) or PIXELS (UINT8 [N,H,W])")
    return req, binary


def _input_tensor(inp: Any, binary: bytes) -> tuple[str, list[bytes] | list[str] | np.ndarray]:
    if not isinstance(inp, dict):
        raise BadRequest("an input must be a JSON object")
    datatype, shape = inp.get("datatype"), inp.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest("input shape must be a list of non-negative integers")
    params = inp.get("parameters") or {}
    count = math.prod(shape) if shape else 0  # python ints: no overflow on absurd shapes
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None and (not isinstance(size, int) or size < 0 or size > len(binary)):
        raise BadRequest("binary_data_size does not match the binary data sent")
    data = binary[:size] if size is not None else inp.get("data")
    if datatype == "BYTES" and len(shape) == 1:
        if size is not None:
            return "bytes", _split_bytes(data, count)
        if not isinstance(data, list) or len(data) != count or not all(isinstance(x, str) for x in data):
            raise BadRequest("IMAGE data must be a list of base64 strings matching its shape")
        return "base64", data
    if datatype == "UINT8" and len(shape) == 3:
        if size is not None:
            if len(data) != count:
                raise BadRequest(f"UINT8 input has {len(data)} bytes; shape {shape} needs {count}")
            return "pixels", np.frombuffer(data, np.uint8).reshape(shape)
        try:
            arr = np.asarray(data, dtype=np.int64).reshape(shape)
        except (ValueError, TypeError):
            raise BadRequest(f"UINT8 data does not match shape {shape}") from None
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadRequest("UINT8 data must be integers 0-255")
        return "pixels", arr.astype(np.uint8)
    raise BadRequest(f"unsupported input {datatype} {shape}: use IMAGE BYTES [N] or PIXELS UINT8 [N,H,W]")


def _outputs(c: Classification) -> dict[str, tuple[str, list[int], np.ndarray | list[str]]]:
    labels = [d.label for d in c.decisions]
    return {
        "probabilities": ("FP32", list(c.probabilities.shape), c.probabilities.astype(np.float32)),
        "label": ("BYTES", [len(labels)], labels),
        "marked": ("BOOL", [len(labels)], np.array([d.marked for d in c.decisions], dtype=np.bool_)),
    }


def _encode(req: dict[str, Any], served: ServedModel, c: Classification) -> Response:
    tensors = _outputs(c)
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    all_binary = bool(params.get("binary_data_output", False))
    wanted = req.get("outputs")
    if isinstance(wanted, list) and wanted:
        names = [(o.get("name"), bool((o.get("parameters") or {}).get("binary_data", all_binary))) for o in wanted]
    else:
        names = [(name, all_binary) for name in tensors]
    outputs, blobs = [], []
    for name, binary in names:
        if name not in tensors:
            raise BadRequest(f"unknown output {name!r}; outputs: {sorted(tensors)}")
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
    if "id" in req:
        head["id"] = req["id"]
    head_bytes = orjson.dumps(head)
    if not blobs:
        return Response(head_bytes, media_type="application/json")
    return Response(
        head_bytes + b"".join(blobs),
        media_type="application/octet-stream",
        headers={HEADER: str(len(head_bytes))},
    )


async def _infer(request: Request, state: State, name: str, version: str | None) -> Response:
    deadline = time.monotonic() + state.settings.request_timeout_s
    served = state.registry.get(name, version)
    body = await read_body(request, state)
    req, binary = _parse(body, request.headers.get(HEADER.lower()))
    kind, data = _input_tensor(req["inputs"][0], binary)
    params = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    tta, profile = params.get("tta"), params.get("profile")
    if tta is not None and not isinstance(tta, bool):
        raise BadRequest("parameter 'tta' must be a boolean")
    if profile is not None and not isinstance(profile, str):
        raise BadRequest("parameter 'profile' must be a string")
    common: dict[str, Any] = {"deadline": deadline, "model": served.name, "version": served.version,
                              "profile": profile, "tta_requested": tta}  # fmt: skip
    if kind == "pixels":
        assert isinstance(data, np.ndarray)
        result = await until_disconnect(request, state, state.classifier.classify_raw(data, None, **common))
    else:
        assert isinstance(data, list)
        work = state.classifier.classify_encoded(data, None, base64_encoded=kind == "base64", **common)
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
