"""Protocol tensors <-> the classifier: the same inputs, outputs and error messages as REST V2 (`http/v2.py`).

Inputs (exactly one per request), as raw contents (`raw_input_contents`, what tritonclient sends) or as typed
contents (`InferInputTensor.contents`):
- `IMAGE`, BYTES [N]: encoded image files (PNG/JPEG/...). Raw: each element a uint32 little-endian length, then
  the file's bytes (the protocol's BYTES serialisation); typed: `bytes_contents`, one file per element. gRPC
  carries bytes, so there is no base64 here (REST's JSON form needs it).
- `PIXELS`, UINT8 [N, H, W]: grayscale crops. Raw: N*H*W bytes, row-major; typed: `uint_contents` (0-255).
Request parameters: `tta` (bool_param), `profile` (string_param). Outputs, always as `raw_output_contents`:
`probabilities` FP32 [N, C] (class order: ModelMetadata's `classes` parameter), `label` BYTES [N], `marked`
BOOL [N]; only the requested ones, in the requested order, when the request names any.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.classifier import Classification
from service.errors import BadRequest
from service.grpc import grpc_predict_v2_pb2 as pb

OUTPUT_NAMES = ("probabilities", "label", "marked")


@dataclass(frozen=True)
class Inputs:
    """What the classifier needs from a ModelInferRequest."""

    kind: str  # "pixels" (data: uint8 [N, H, W]) or "bytes" (data: list of encoded files)
    data: np.ndarray | list[bytes]
    tta: bool | None
    profile: str | None


def split_bytes(blob: bytes, count: int) -> list[bytes]:
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
        if len(out) > count:
            break
    if len(out) != count:
        raise BadRequest(f"BYTES tensor has {len(out)} elements; its shape says {count}")
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


def _parameter(params: Mapping[str, pb.InferParameter], name: str, choice: str, kind: str) -> Any:
    if name not in params:
        return None
    value = params[name]
    if value.WhichOneof("parameter_choice") != choice:
        raise BadRequest(f"parameter {name!r} must be a {kind}")
    return getattr(value, choice)


def parse_request(req: pb.ModelInferRequest, check_count: Callable[[int], None]) -> Inputs:
    """Validate the one input tensor and the parameters; raise `BadRequest` with REST V2's messages.

    `check_count(n)` (the classifier's crop-count limit) runs as soon as the shape is known to be usable,
    before any element is split or converted.
    """
    if len(req.inputs) != 1:
        raise BadRequest("the request must have exactly one input: IMAGE (BYTES [N]) or PIXELS (UINT8 [N,H,W])")
    inp = req.inputs[0]
    raw: bytes | None = None
    if req.raw_input_contents:
        if len(req.raw_input_contents) != len(req.inputs):
            raise BadRequest(
                f"raw_input_contents has {len(req.raw_input_contents)} entries; the request has {len(req.inputs)} "
                "input(s)"
            )
        if inp.HasField("contents"):
            raise BadRequest("an input has both raw_input_contents and typed contents: send one of them")
        raw = req.raw_input_contents[0]
    shape = list(inp.shape)
    if not all(d >= 0 for d in shape):
        raise BadRequest("input shape must be a list of non-negative integers")
    count = math.prod(shape) if shape else 0  # python ints: no overflow on absurd shapes
    c = inp.contents
    if inp.datatype == "BYTES" and len(shape) == 1:
        check_count(shape[0])
        if raw is not None:
            data: np.ndarray | list[bytes] = split_bytes(raw, count)
        elif len(c.bytes_contents) != count:
            raise BadRequest(f"BYTES tensor has {len(c.bytes_contents)} elements; its shape says {count}")
        else:
            data = list(c.bytes_contents)
        kind = "bytes"
    elif inp.datatype == "UINT8" and len(shape) == 3:
        check_count(shape[0])
        if raw is not None:
            if len(raw) != count:
                raise BadRequest(f"UINT8 input has {len(raw)} bytes; shape {shape} needs {count}")
            data = np.frombuffer(raw, np.uint8).reshape(shape)
        else:
            if len(c.uint_contents) != count:
                raise BadRequest(f"UINT8 data does not match shape {shape}")
            arr = np.asarray(c.uint_contents, dtype=np.uint32)
            if arr.size and arr.max() > 255:
                raise BadRequest("UINT8 data must be integers 0-255")
            data = arr.astype(np.uint8).reshape(shape)
        kind = "pixels"
    else:
        raise BadRequest(f"unsupported input {inp.datatype} {shape}: use IMAGE BYTES [N] or PIXELS UINT8 [N,H,W]")
    tta = _parameter(req.parameters, "tta", "bool_param", "boolean")
    profile = _parameter(req.parameters, "profile", "string_param", "string")
    return Inputs(kind, data, tta, profile)


def _tensors(c: Classification) -> dict[str, tuple[str, list[int], bytes]]:
    labels = [d.label.encode() for d in c.decisions]
    probs = np.ascontiguousarray(c.probabilities, dtype="<f4")
    return {
        "probabilities": ("FP32", list(probs.shape), probs.tobytes()),
        "label": ("BYTES", [len(labels)], join_bytes(labels)),
        "marked": ("BOOL", [len(labels)], np.array([d.marked for d in c.decisions], dtype=np.bool_).tobytes()),
    }


def check_outputs(req: pb.ModelInferRequest) -> list[str]:
    """The requested output names (all when none is named); unknown names are a 400 before any work."""
    names = [o.name for o in req.outputs] or list(OUTPUT_NAMES)
    for name in names:
        if name not in OUTPUT_NAMES:
            raise BadRequest(f"unknown output {name!r}; outputs: {sorted(OUTPUT_NAMES)}")
    return names


def response(req: pb.ModelInferRequest, names: list[str], c: Classification) -> pb.ModelInferResponse:
    tensors = _tensors(c)
    out = pb.ModelInferResponse(model_name=c.model.name, model_version=c.model.version, id=req.id)
    for name in names:
        datatype, shape, blob = tensors[name]
        out.outputs.add(name=name, datatype=datatype, shape=shape)
        out.raw_output_contents.append(blob)
    return out
