"""Bad input over gRPC: the right status code and REST V2's message, word for word (each case is sent both ways
where REST can express it), plus REST's error body and retry hints in the trailers."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import orjson
import pytest

from service.grpc import grpc_predict_v2_pb2 as pb

pytestmark = pytest.mark.integration

MODEL = "omr-bubble"
GrpcLive = Any  # tests/service/grpc/conftest.py
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CROP = np.full((32, 32), 220, np.uint8)


def lp(*items: bytes) -> bytes:
    """The protocol's BYTES serialisation."""
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


@dataclass
class Case:
    """One bad request: its inputs as (name, datatype, shape, raw bytes), request parameters, outputs."""

    inputs: list[tuple[str, str, list[int], bytes]]
    code: grpc.StatusCode
    rest_status: int
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    model: str = MODEL
    version: str = ""

    def grpc_request(self) -> pb.ModelInferRequest:
        req = pb.ModelInferRequest(model_name=self.model, model_version=self.version)
        for name, datatype, shape, raw in self.inputs:
            req.inputs.add(name=name, datatype=datatype, shape=shape)
            req.raw_input_contents.append(raw)
        for key, value in self.params.items():
            kind = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
            setattr(req.parameters[key], kind, value)
        for name in self.outputs:
            req.outputs.add(name=name)
        return req

    def rest(self, http: Any) -> tuple[int, dict[str, Any]]:
        """The same request as REST V2 with the binary tensor extension."""
        head: dict[str, Any] = {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
                for n, d, s, raw in self.inputs
            ],
            "parameters": self.params,
        }
        if self.outputs:
            head["outputs"] = [{"name": n} for n in self.outputs]
        head_bytes = orjson.dumps(head)
        path = f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "") + "/infer"
        r = http.post(
            path,
            content=head_bytes + b"".join(raw for *_, raw in self.inputs),
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(head_bytes)),
            },
        )
        return r.status_code, r.json()


def px(n: int, h: int = 32, w: int = 32) -> tuple[str, str, list[int], bytes]:
    return ("PIXELS", "UINT8", [n, h, w], np.full((n, h, w), 220, np.uint8).tobytes())


def png() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", CROP)
    assert ok
    return buf.tobytes()


CASES: dict[str, Case] = {
    "no input": Case([], INVALID, 400),
    "two inputs": Case([px(1), px(1)], INVALID, 400),
    "negative shape": Case([("PIXELS", "UINT8", [-1, 32, 32], b"")], INVALID, 400),
    "FP32 input": Case([("PIXELS", "FP32", [1, 32, 32], bytes(4 * 32 * 32))], INVALID, 400),
    "UINT8 of rank 2": Case([("PIXELS", "UINT8", [32, 32], bytes(32 * 32))], INVALID, 400),
    "UINT8 bytes short": Case([("PIXELS", "UINT8", [2, 32, 32], bytes(32 * 32))], INVALID, 400),
    "BYTES length prefix cut": Case([("IMAGE", "BYTES", [1], b"\x05\x00")], INVALID, 400),
    "BYTES element cut": Case([("IMAGE", "BYTES", [1], struct.pack("<I", 99) + b"abc")], INVALID, 400),
    "BYTES count off": Case([("IMAGE", "BYTES", [3], lp(b"a", b"b"))], INVALID, 400),
    "undecodable image": Case([("IMAGE", "BYTES", [2], lp(png(), b"not an image"))], INVALID, 422),
    "no crops": Case([("IMAGE", "BYTES", [0], b"")], INVALID, 422),
    "too many crops": Case([px(9)], INVALID, 413),
    "tta not a boolean": Case([px(1)], INVALID, 400, params={"tta": "yes"}),
    "profile not a string": Case([px(1)], INVALID, 400, params={"profile": 3}),
    "unknown profile": Case([px(1)], INVALID, 400, params={"profile": "pencil-only"}),
    "unknown output": Case([px(1)], INVALID, 400, outputs=["label", "logits"]),
    "unknown model": Case([px(1)], grpc.StatusCode.NOT_FOUND, 404, model="nope"),
    "unknown version": Case([px(1)], grpc.StatusCode.NOT_FOUND, 404, version="9"),
}


def call(g: GrpcLive, req: pb.ModelInferRequest, **kw: Any) -> grpc.RpcError:
    with g.stub() as stub, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, timeout=30, **kw)
    return err.value


def same(a: str, b: str) -> bool:
    """Equal but for heap addresses: a decoder's message may still quote an object repr (issue 16, not gRPC's)."""
    return re.sub(r"0x[0-9a-f]+", "0x?", a) == re.sub(r"0x[0-9a-f]+", "0x?", b)


def trailers(e: grpc.RpcError) -> dict[str, Any]:
    return dict(e.trailing_metadata() or ())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_same_message_as_rest(grpc_live: GrpcLive, name: str) -> None:
    case = CASES[name]
    e = call(grpc_live, case.grpc_request())
    with grpc_live.http() as http:
        status, body = case.rest(http)
    assert status == case.rest_status, body
    assert e.code() == case.code, e.details()
    assert same(e.details(), body["error"])
    md = trailers(e)
    assert md["omr-error-code"] == body["code"]
    assert same(md["omr-error-bin"].decode(), orjson.dumps(body).decode())  # REST's whole error body, every crop
    assert "Traceback" not in e.details() and 'File "' not in e.details()


def test_invalid_crops_names_every_crop(grpc_live: GrpcLive) -> None:
    e = call(grpc_live, CASES["undecodable image"].grpc_request())
    assert e.details().startswith("crop 1 (id '1'): ")
    (crop,) = orjson.loads(trailers(e)["omr-error-bin"])["crops"]
    assert crop["index"] == 1 and crop["reason"]


def test_grpc_only_shapes_of_bad_input(grpc_live: GrpcLive) -> None:
    """What only the protobuf form can get wrong: raw entries vs inputs, raw and typed at once, typed ranges."""
    two = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[CROP.tobytes(), CROP.tobytes()])
    two.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 32, 32])
    both = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[CROP.tobytes()])
    both.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 32, 32]).contents.uint_contents.extend([1] * 1024)
    over = pb.ModelInferRequest(model_name=MODEL)
    over.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 2, 2]).contents.uint_contents.extend([1, 2, 3, 256])
    short = pb.ModelInferRequest(model_name=MODEL)
    short.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 2, 2]).contents.uint_contents.extend([1, 2, 3])
    typed_count = pb.ModelInferRequest(model_name=MODEL)
    typed_count.inputs.add(name="IMAGE", datatype="BYTES", shape=[2]).contents.bytes_contents.append(png())
    expected = {
        "raw_input_contents has 2 entries; the request has 1 input(s)": two,
        "an input has both raw_input_contents and typed contents: send one of them": both,
        "UINT8 data must be integers 0-255": over,
        "UINT8 data does not match shape [1, 2, 2]": short,
        "BYTES tensor has 1 elements; its shape says 2": typed_count,
    }
    for message, req in expected.items():
        e = call(grpc_live, req)
        assert (e.code(), e.details()) == (INVALID, message)


def test_message_over_the_body_limit_refused_by_grpc(grpc_live: GrpcLive) -> None:
    """max_body_bytes (64 KiB here) is the gRPC receive limit too: refused before the handler runs."""
    req = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[bytes(100 * 1024)])
    req.inputs.add(name="PIXELS", datatype="UINT8", shape=[100, 32, 32])
    e = call(grpc_live, req)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
    ok = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[CROP.tobytes()])
    ok.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 32, 32])
    with grpc_live.stub() as stub:
        assert len(stub.ModelInfer(ok, timeout=30).outputs) == 3  # the connection and the server are fine


TOKEN = "s3cret-token-of-16+chars"


@pytest.mark.parametrize("auth_health", [False, True])
def test_token_required_as_over_rest(make_grpc_service: Callable, auth_health: bool) -> None:
    req = CASES["unknown output"].grpc_request()
    del req.outputs[:]
    with make_grpc_service(auth_token=TOKEN, auth_health=auth_health) as g, g.stub() as stub:
        for metadata in ((), (("authorization", "Bearer wrong-token-but-16-chars"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, metadata=metadata, timeout=30)
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
        good = (("authorization", f"Bearer {TOKEN}"),)
        assert len(stub.ModelInfer(req, metadata=good, timeout=30).outputs) == 3
        assert stub.ServerLive(pb.ServerLiveRequest(), metadata=good, timeout=10).live
        if auth_health:
            with pytest.raises(grpc.RpcError) as err:
                stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        else:
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        with g.http() as http:
            assert http.get("/v2/health/ready").status_code == (401 if auth_health else 200)
