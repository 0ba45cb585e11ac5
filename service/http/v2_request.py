"""Open Inference Protocol (V2) requests, decoded strictly: every malformed one is a `BadRequest` (400).

Limits come before work: the JSON header's size bounds the values it may hold (`JSON_MAX_VALUES`, counted as
commas before parsing), the tensor's shape is checked against the crop count and side limits before its data is
converted, and BYTES data is split only up to the count its shape declares. Types are exact: UINT8 data is JSON
integers 0-255 (no 1.9 truncated to 1, no "7" or true), shapes are integers (not booleans), parameters have
their documented types. Client strings in messages are clipped (`service.errors.clip`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.core.preprocess import CropError, check_side
from service.errors import BadRequest, InvalidCrops, PayloadTooLarge, clip

HEADER = "Inference-Header-Content-Length"
OUTPUT_NAMES = ("probabilities", "label", "marked")
#: most values a JSON (not binary) request may hold: each JSON number becomes a ~30-byte Python object, parsed
#: while holding the GIL; larger tensors go as binary tensor data
JSON_MAX_VALUES = 1 << 18
MAX_ID_CHARS = 256
MAX_PARAM_CHARS = 64


@dataclass(frozen=True)
class V2Request:
    id: str | None
    kind: str  # "bytes" (binary BYTES elements), "base64" (JSON BYTES strings) or "pixels" (UINT8 [N,H,W])
    data: list[bytes] | list[str] | np.ndarray
    tta: bool | None
    profile: str | None
    outputs: list[tuple[str, bool]]  # (name, as binary), in the order asked for


def split_head(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) by the binary extension's header, or the whole body as JSON."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not (header_length.isascii() and header_length.isdigit()):
            raise BadRequest(f"{HEADER} must be a decimal integer, got {clip(header_length, 20)}")
        size = int(header_length)
        if not 0 < size <= len(body):
            raise BadRequest(f"{HEADER} {size} does not fit a body of {len(body)} bytes")
        head, binary = body[:size], body[size:]
    if head.count(b",") >= JSON_MAX_VALUES:
        raise PayloadTooLarge(f"the JSON request holds more than {JSON_MAX_VALUES} values; send large tensors as "
                              f"binary tensor data ({HEADER})")  # fmt: skip
    return head, binary


def loads(head: bytes) -> Any:
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"inference header is not valid JSON: {exc}") from None


def _typed(params: dict[str, Any], name: str, kind: type) -> Any:
    value = params.get(name)
    if value is not None and type(value) is not kind:
        raise BadRequest(f"parameter {name!r} must be a {'boolean' if kind is bool else 'string'}")
    if isinstance(value, str) and len(value) > MAX_PARAM_CHARS:
        raise BadRequest(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters: {clip(value)}")
    return value


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where} 'parameters' must be a JSON object")
    return params


def _outputs(req: dict[str, Any], binary_default: bool) -> list[tuple[str, bool]]:
    wanted = req.get("outputs")
    if wanted is None or wanted == []:
        return [(name, binary_default) for name in OUTPUT_NAMES]
    if not isinstance(wanted, list):
        raise BadRequest("'outputs' must be a list of {name, parameters} objects")
    out = []
    for i, o in enumerate(wanted):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest(f"outputs[{i}] must be an object with a string 'name'")
        if o["name"] not in OUTPUT_NAMES:
            raise BadRequest(f"unknown output {clip(o['name'])}; outputs: {list(OUTPUT_NAMES)}")
        binary = _typed(_params(o, f"outputs[{i}]"), "binary_data", bool)
        out.append((o["name"], binary_default if binary is None else binary))
    return out


def _shape(inp: dict[str, Any]) -> list[int]:
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise BadRequest("input shape must be a list of non-negative integers")
    return shape


def _split_bytes(blob: bytes, count: int) -> list[bytes]:
    """The protocol's BYTES serialisation: each element a uint32 little-endian length, then the bytes."""
    out, pos = [], 0
    while pos < len(blob):
        if len(out) == count:
            raise BadRequest(f"BYTES tensor has more elements than its shape's {count}")
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


def _json_uint8(data: Any, shape: list[int]) -> np.ndarray:
    """JSON UINT8 data (nested as the shape, or flat) -> uint8 array; only integers 0-255 pass."""
    if not isinstance(data, list):
        raise BadRequest("UINT8 'data' must be a JSON list of integers 0-255")
    count = math.prod(shape)
    try:
        obj = np.array(data, dtype=object)
    except ValueError:
        obj = None
    if obj is None or (obj.shape != tuple(shape) and obj.shape != (count,)):
        raise BadRequest(f"UINT8 data does not match shape {shape}")
    flat = obj.ravel().tolist()
    kinds = set(map(type, flat))
    if kinds - {int}:
        names = sorted({"bool" if k is bool else "str" if k is str else "float" if k is float else "other" for k in
                        kinds - {int}})  # fmt: skip
        raise BadRequest(f"UINT8 data must be JSON integers 0-255, not {'/'.join(names)}")
    if flat and (min(flat) < 0 or max(flat) > 255):
        raise BadRequest("UINT8 data must be integers 0-255")
    return np.array(flat, dtype=np.uint8).reshape(shape)


def decode(req: Any, binary: bytes, check_count: Callable[[int], None]) -> V2Request:
    """A parsed JSON header (+ binary data) -> V2Request. `check_count` refuses 0 or too many crops."""
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or len(req["inputs"]) != 1:
        raise BadRequest("the request must have exactly one input: IMAGE (BYTES [N]) or PIXELS (UINT8 [N,H,W])")
    rid = req.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID_CHARS):
        raise BadRequest(f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    params = _params(req, "request")
    tta, profile = _typed(params, "tta", bool), _typed(params, "profile", str)
    outputs = _outputs(req, bool(_typed(params, "binary_data_output", bool)))
    inp = req["inputs"][0]
    if not isinstance(inp, dict):
        raise BadRequest("an input must be a JSON object")
    datatype, shape = inp.get("datatype"), _shape(inp)
    size = _params(inp, "input").get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0 or size > len(binary)):
        raise BadRequest("binary_data_size does not match the binary data sent")
    data = binary[:size] if size is not None else inp.get("data")
    if datatype == "BYTES" and len(shape) == 1:
        check_count(shape[0])  # before splitting or decoding anything
        if size is not None:
            return V2Request(rid, "bytes", _split_bytes(data, shape[0]), tta, profile, outputs)
        if not isinstance(data, list) or len(data) != shape[0] or not all(isinstance(x, str) for x in data):
            raise BadRequest("IMAGE data must be a list of base64 strings matching its shape")
        return V2Request(rid, "base64", data, tta, profile, outputs)
    if datatype == "UINT8" and len(shape) == 3:
        check_count(shape[0])
        try:
            check_side(shape[2], shape[1])
        except CropError as exc:
            raise InvalidCrops([{"index": 0, "id": "0", "reason": exc.reason, "message": exc.message}]) from None
        if size is None:
            return V2Request(rid, "pixels", _json_uint8(data, shape), tta, profile, outputs)
        if len(data) != math.prod(shape):
            raise BadRequest(f"UINT8 input has {len(data)} bytes; shape {shape} needs {math.prod(shape)}")
        return V2Request(rid, "pixels", np.frombuffer(data, np.uint8).reshape(shape), tta, profile, outputs)
    what = f"{str(datatype)[:16]} {str(shape)[:40]}"  # clipped: both are the client's
    raise BadRequest(f"unsupported input {what}: use IMAGE BYTES [N] or PIXELS UINT8 [N,H,W]")
