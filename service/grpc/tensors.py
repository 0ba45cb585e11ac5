"""Protocol tensors <-> the classifier: the same inputs, outputs and error messages as REST V2.

A ModelInferRequest is rewritten into the form REST V2's binary tensor extension takes (a JSON-like header +
binary data) and decoded by REST's own strict decoder, `service.http.v2_request.decode` (transport-neutral: no
FastAPI in it), so both transports accept exactly the same requests and refuse the rest with the same words.
Only what the protobuf form can get wrong on its own (raw entries vs inputs, raw and typed contents at once,
typed values out of range) is checked here.

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
from collections.abc import Callable
from typing import Any

import numpy as np

from service.core.result import Classification
from service.errors import BadRequest
from service.grpc import grpc_predict_v2_pb2 as pb
from service.http import v2_request
from service.http.v2_request import V2Request

OUTPUT_NAMES = v2_request.OUTPUT_NAMES


def join_bytes(items: list[bytes]) -> bytes:
    """The protocol's BYTES serialisation: each element a uint32 little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


def _value(p: pb.InferParameter) -> Any:
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def _typed_to_raw(inp: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """Typed contents -> the raw bytes of the same tensor (REST's binary form); range and count checked here."""
    c = inp.contents
    if any(d < 0 for d in inp.shape):
        return b""  # the decoder names the bad shape, as over REST
    if inp.datatype == "UINT8":
        count = math.prod(inp.shape) if len(inp.shape) else 0
        if len(c.uint_contents) != count:
            raise BadRequest(f"UINT8 data does not match shape {list(inp.shape)}")
        arr = np.asarray(c.uint_contents, dtype=np.uint32)
        if arr.size and arr.max() > 255:
            raise BadRequest("UINT8 data must be integers 0-255")
        return arr.astype(np.uint8).tobytes()
    if inp.datatype == "BYTES":
        return join_bytes(list(c.bytes_contents))
    return b""  # any other datatype is refused by the decoder, as over REST


def parse_request(req: pb.ModelInferRequest, check_count: Callable[[int], None]) -> V2Request:
    """Validate the request as REST V2 does; raise `BadRequest` (and friends) with REST's messages.

    `check_count(n)` (the classifier's crop-count limit) runs in the decoder as soon as the shape is known to be
    usable, before raw BYTES are split; typed contents are converted to raw bytes first (their size is bounded by
    the message limit, and large ones are converted off the event loop by the caller).
    """
    raws: list[bytes] = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise BadRequest(f"raw_input_contents has {len(raws)} entries; the request has {len(req.inputs)} input(s)")
    if raws and any(i.HasField("contents") for i in req.inputs):
        raise BadRequest("an input has both raw_input_contents and typed contents: send one of them")
    if not raws and len(req.inputs) == 1:
        raws = [_typed_to_raw(req.inputs[0])]
    binary = b"".join(raws)
    inputs = [
        {"name": inp.name, "datatype": inp.datatype, "shape": list(inp.shape),
         "parameters": {"binary_data_size": len(raw)}}
        for inp, raw in zip(req.inputs, raws or [b""] * len(req.inputs), strict=True)
    ]  # fmt: skip
    head: dict[str, Any] = {
        "inputs": inputs,
        "parameters": {k: _value(v) for k, v in req.parameters.items()},
        "outputs": [{"name": o.name} for o in req.outputs],
    }
    if req.id:
        head["id"] = req.id
    return v2_request.decode(head, binary, check_count)


def _tensors(c: Classification) -> dict[str, tuple[str, list[int], bytes]]:
    labels = [d.label.encode() for d in c.decisions]
    probs = np.ascontiguousarray(c.probabilities, dtype="<f4")
    return {
        "probabilities": ("FP32", list(probs.shape), probs.tobytes()),
        "label": ("BYTES", [len(labels)], join_bytes(labels)),
        "marked": ("BOOL", [len(labels)], np.array([d.marked for d in c.decisions], dtype=np.bool_).tobytes()),
    }


def response(req: V2Request, c: Classification) -> pb.ModelInferResponse:
    """The requested outputs (all by default), in the requested order, as raw contents."""
    tensors = _tensors(c)
    out = pb.ModelInferResponse(model_name=c.model.name, model_version=c.model.version, id=req.id or "")
    for name, _binary in req.outputs:  # gRPC outputs are always raw bytes: REST's binary_data has no meaning here
        datatype, shape, blob = tensors[name]
        out.outputs.add(name=name, datatype=datatype, shape=shape)
        out.raw_output_contents.append(blob)
    return out
