"""gRPC Open Inference Protocol: the real `tritonclient.grpc` against the real service (uvicorn + grpc.aio in one
process), results compared with REST V2's (`tritonclient.http`) for the same crops."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
import uvicorn
from reliability._support import SLOW_VALUE, FaultInjector
from tritonclient.utils import InferenceServerException

from loadtest.server import free_port
from service.app import create_app
from service.core.runtime import create_session
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings

pytestmark = pytest.mark.integration

MODEL = "omr-bubble"
OUTPUTS = ("probabilities", "label", "marked")
GrpcLive = Any  # tests/service/grpc/conftest.py


def _rest(g: GrpcLive) -> th.InferenceServerClient:
    return th.InferenceServerClient(g.live.url.removeprefix("http://"), connection_timeout=10, network_timeout=30)


def _outputs(result: tg.InferResult | th.InferResult) -> tuple[np.ndarray, list[bytes], np.ndarray]:
    return result.as_numpy("probabilities"), list(result.as_numpy("label")), result.as_numpy("marked")


def _assert_same(a: tuple[np.ndarray, list[bytes], np.ndarray], b: tuple[np.ndarray, list[bytes], np.ndarray]) -> None:
    assert a[0].dtype == np.float32 and a[0].shape == b[0].shape
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert a[1] == b[1]
    assert a[2].dtype == np.bool_ and a[2].tolist() == b[2].tolist()


def test_live_ready_and_metadata_match_rest(grpc_live: GrpcLive) -> None:
    c = grpc_live.triton()
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
    with grpc_live.http() as http:
        rest_server, rest_model = http.get("/v2").json(), http.get(f"/v2/models/{MODEL}").json()
    server = c.get_server_metadata()
    assert (server.name, server.version) == (rest_server["name"], rest_server["version"])
    meta = c.get_model_metadata(MODEL)
    assert (meta.name, list(meta.versions), meta.platform) == (
        rest_model["name"],
        rest_model["versions"],
        rest_model["platform"],
    )
    for got, want in ((meta.inputs, rest_model["inputs"]), (meta.outputs, rest_model["outputs"])):
        assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in got] == want
    params = rest_model["parameters"]
    with grpc_live.stub() as stub:  # tritonclient's proto has no ModelMetadataResponse.parameters (our addition)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=10)
    assert meta.parameters["classes"].string_param.split(",") == params["classes"]
    assert meta.parameters["profiles"].string_param.split(",") == params["profiles"]
    assert meta.parameters["provider"].string_param == params["provider"]
    assert list(c.get_model_metadata(MODEL, "1").versions) == ["1"]
    for call in (lambda: c.is_model_ready("nope"), lambda: c.get_model_metadata(MODEL, "9")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value


def test_infer_raw_pixels_and_encoded_pngs_equal_rest(
    grpc_live: GrpcLive, make_crops: Callable, encode_image: Callable
) -> None:
    images = make_crops(6, seed=5)
    pixels = np.stack([np.resize(im, (28, 36)) for im in images]).astype(np.uint8)
    encoded = np.array([encode_image(im) for im in images], dtype=np.object_)
    c, rest = grpc_live.triton(), _rest(grpc_live)
    for name, datatype, data in (("PIXELS", "UINT8", pixels), ("IMAGE", "BYTES", encoded)):
        g_in = tg.InferInput(name, list(data.shape), datatype)
        g_in.set_data_from_numpy(data)
        h_in = th.InferInput(name, list(data.shape), datatype)
        h_in.set_data_from_numpy(data, binary_data=True)
        h_out = [th.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
        got = c.infer(MODEL, [g_in])
        assert got.get_response().model_name == MODEL and got.get_response().model_version == "1"
        _assert_same(_outputs(got), _outputs(rest.infer(MODEL, [h_in], outputs=h_out)))
        # request parameters reach the classifier as over REST
        params = {"tta": True, "profile": "fill"}
        _assert_same(
            _outputs(c.infer(MODEL, [g_in], parameters=params)),
            _outputs(rest.infer(MODEL, [h_in], outputs=h_out, parameters=params)),
        )


def test_typed_contents_equal_raw_contents(grpc_live: GrpcLive, make_crops: Callable, encode_image: Callable) -> None:
    """Clients generated from the proto may send `contents` instead of `raw_input_contents`: same answers."""
    images = make_crops(4, seed=9)
    pixels = np.stack([np.resize(im, (32, 32)) for im in images]).astype(np.uint8)
    encoded = [encode_image(im) for im in images]
    with grpc_live.stub() as stub:
        raw_px = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[pixels.tobytes()])
        raw_px.inputs.add(name="PIXELS", datatype="UINT8", shape=list(pixels.shape))
        typed_px = pb.ModelInferRequest(model_name=MODEL)
        typed_px.inputs.add(name="PIXELS", datatype="UINT8", shape=list(pixels.shape)).contents.uint_contents.extend(
            pixels.ravel().tolist()
        )
        typed_png = pb.ModelInferRequest(model_name=MODEL)
        typed_png.inputs.add(name="IMAGE", datatype="BYTES", shape=[len(encoded)]).contents.bytes_contents.extend(
            encoded
        )
        answers = [stub.ModelInfer(r, timeout=30) for r in (raw_px, typed_px, typed_png)]
    probs = [np.frombuffer(a.raw_output_contents[0], "<f4").reshape(4, -1) for a in answers]
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)
    assert [o.name for o in answers[2].outputs] == list(OUTPUTS)
    assert answers[2].outputs[0].datatype == "FP32" and list(answers[2].outputs[0].shape) == [4, 8]
    assert answers[2].outputs[2].datatype == "BOOL" and len(answers[2].raw_output_contents[2]) == 4


def test_requested_outputs_in_order_and_id_echoed(grpc_live: GrpcLive) -> None:
    pixels = np.full((3, 32, 32), 230, np.uint8)
    inp = tg.InferInput("PIXELS", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    result = grpc_live.triton().infer(
        MODEL,
        [inp],
        request_id="sheet-7",
        outputs=[tg.InferRequestedOutput("marked"), tg.InferRequestedOutput("label")],
    )
    response = result.get_response()
    assert response.id == "sheet-7"
    assert [o.name for o in response.outputs] == ["marked", "label"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (3,)


def test_grpc_calls_counted_in_metrics(grpc_live: GrpcLive) -> None:
    c = grpc_live.triton()
    assert c.is_server_live()
    with pytest.raises(InferenceServerException):
        c.get_model_metadata("nope")
    with grpc_live.http() as http:
        text = http.get("/metrics").text

    def count(method: str, code: str) -> float:
        m = re.search(rf'^omr_grpc_requests_total{{code="{code}",method="{method}"}} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    assert count("ServerLive", "OK") >= 1
    assert count("ModelMetadata", "NOT_FOUND") >= 1
    assert re.search(r'^omr_grpc_request_duration_seconds_count{code="OK",method="ServerLive"} ', text, re.M)


def test_grpc_and_rest_share_one_session_and_batcher(make_grpc_service: Callable, until: Callable) -> None:
    """No second model session: gRPC rows queue in REST's batcher, behind REST's held batch, and run there."""
    injector = FaultInjector()
    settings = {"max_batches_in_flight": 1, "admission_max_wait_ms": 600_000, "admission_wait_fraction": 1.0}
    with make_grpc_service(injector, **settings) as g, ThreadPoolExecutor(2) as pool, g.http() as http:
        (session,) = injector.sessions
        batcher = g.live.state.registry.get().batcher
        held = pool.submit(
            http.post,
            "/classify",
            content=np.full((1, 32, 32), SLOW_VALUE, np.uint8).tobytes(),
            headers={"Content-Type": "application/octet-stream", "X-Crop-Shape": "1,32,32"},
        )
        injector.hold.wait_entered()
        pixels = np.full((5, 32, 32), 200, np.uint8)
        inp = tg.InferInput("PIXELS", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        via_grpc = pool.submit(g.triton().infer, MODEL, [inp])
        until(lambda: batcher.queued_rows == 5, what="the gRPC request's 5 rows queued in REST's batcher")
        calls = len(session.calls)
        injector.hold.release.set()
        assert held.result(30).status_code == 200
        assert via_grpc.result(30).as_numpy("label").shape == (5,)
        assert len(session.calls) > calls and len(injector.sessions) == 1


def test_not_ready_while_warming_up(until: Callable) -> None:
    """Before warm-up ends: ServerLive true, ServerReady/ModelReady false, ModelInfer UNAVAILABLE + retry-after
    (REST: 503). The first model call (warm-up's) is held on an event, so the window is certain, not timed."""
    release = threading.Event()

    class HeldWarmup:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def run(self, names: Any, feed: Any) -> Any:
            release.wait(60)
            return self.inner.run(names, feed)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    port = free_port()
    app = create_app(Settings(grpc_port=port, log_level="warning"), lambda *a: HeldWarmup(create_session(*a)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest(), wait_for_ready=True, timeout=60).live
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            assert not stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=10).ready
            req = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[bytes(32 * 32)])
            req.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 32, 32])
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, timeout=10)
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                "the model is still warming up",
            )
            assert dict(err.value.trailing_metadata() or ())["retry-after"] == "1"
            release.set()
            until(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready, what="warm-up done")
            assert stub.ModelInfer(req, timeout=60).model_name == MODEL
    finally:
        release.set()
        server.should_exit = True
        thread.join(60)


def test_large_typed_contents_converted_off_the_loop_equal_raw(make_grpc_service: Callable) -> None:
    """Typed UINT8 contents above INLINE_PARSE_MAX_ELEMENTS (65,536) go through the preprocessing pool: same answer."""
    pixels = np.random.default_rng(4).integers(0, 256, (80, 32, 32), dtype=np.uint8)  # 81,920 elements
    raw = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[pixels.tobytes()])
    raw.inputs.add(name="PIXELS", datatype="UINT8", shape=list(pixels.shape))
    typed = pb.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="PIXELS", datatype="UINT8", shape=list(pixels.shape)).contents.uint_contents.extend(
        pixels.ravel().tolist()
    )
    with make_grpc_service() as g, g.stub() as stub:
        a, b = (stub.ModelInfer(r, timeout=60) for r in (raw, typed))
    assert a.raw_output_contents == b.raw_output_contents
