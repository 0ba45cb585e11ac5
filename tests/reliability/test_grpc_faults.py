"""gRPC under overload and deadlines, against the real service (uvicorn + grpc.aio, one app state) on 127.0.0.1.

The model is the real ONNX Runtime session wrapped by `FaultInjector`: a batch holding a SLOW_VALUE crop is held
until the test releases it, so the test owns the only batch slot while it arranges the queue. Every ordering is
an event or a bounded wait on observable state (queued rows), never a sleep.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from loadtest.server import free_port
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings

from ._support import SLOW_VALUE, FaultInjector, LiveServer, live_server

pytestmark = pytest.mark.integration

MODEL = "omr-bubble"
SIDE = 32
#: these tests arrange queues on purpose: only the limit under test may refuse
NO_WAIT_LIMIT = {"admission_max_wait_ms": 600_000, "admission_wait_fraction": 1.0}


@dataclass
class Rig:
    live: LiveServer
    injector: FaultInjector
    channel: grpc.Channel

    @property
    def stub(self) -> pb_grpc.GRPCInferenceServiceStub:
        return pb_grpc.GRPCInferenceServiceStub(self.channel)

    @property
    def batcher(self) -> Any:
        return self.live.state.registry.get().batcher

    def hold_slot(self, pool: ThreadPoolExecutor) -> Any:
        """A REST request whose one crop holds the only batch slot until `injector.hold.release` is set."""
        self.injector.hold.arm()
        body = np.full((1, SIDE, SIDE), SLOW_VALUE, np.uint8).tobytes()
        headers = {"Content-Type": "application/octet-stream", "X-Crop-Shape": f"1,{SIDE},{SIDE}"}
        held = pool.submit(httpx.post, f"{self.live.url}/classify", content=body, headers=headers, timeout=60)
        self.injector.hold.wait_entered()
        return held


@contextlib.contextmanager
def rig(**settings: Any) -> Iterator[Rig]:
    injector = FaultInjector()
    port = free_port()
    config = Settings(grpc_port=port, max_batches_in_flight=1, log_level="critical", **settings)
    with live_server(config, injector) as live, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Rig(live, injector, channel)


def infer_request(n: int, value: int = 200) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=MODEL, raw_input_contents=[np.full((n, SIDE, SIDE), value, np.uint8).tobytes()]
    )
    req.inputs.add(name="PIXELS", datatype="UINT8", shape=[n, SIDE, SIDE])
    return req


def rpc_error(future: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        future.result(60)
    return err.value


def grpc_count(live: LiveServer, code: str) -> float:
    text = httpx.get(f"{live.url}/metrics", timeout=10).text
    m = re.search(rf'^omr_grpc_requests_total{{code="{code}",method="ModelInfer"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_queue_full_is_resource_exhausted_with_retry_hints(until: Callable) -> None:
    with rig(queue_limit=8, **NO_WAIT_LIMIT) as r, ThreadPoolExecutor(4) as pool:
        held = r.hold_slot(pool)
        queued = pool.submit(r.stub.ModelInfer, infer_request(6), timeout=60)
        until(lambda: r.batcher.queued_rows == 6, what="6 gRPC rows queued behind the held batch")
        e = rpc_error(pool.submit(r.stub.ModelInfer, infer_request(4), timeout=60))
        rest = httpx.post(
            f"{r.live.url}/classify",
            content=np.full((4, SIDE, SIDE), 200, np.uint8).tobytes(),
            headers={"Content-Type": "application/octet-stream", "X-Crop-Shape": f"4,{SIDE},{SIDE}"},
            timeout=30,
        )
        assert rest.status_code == 429
        assert (e.code(), e.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, rest.json()["error"])
        md = dict(e.trailing_metadata() or ())
        assert md["omr-error-code"] == "overloaded"
        assert md["retry-after"] == rest.headers["Retry-After"]
        assert int(md["grpc-retry-pushback-ms"]) == 1000 * int(md["retry-after"])
        r.injector.hold.release.set()
        assert held.result(60).status_code == 200
        assert len(queued.result(60).outputs) == 3  # admitted before the limit: answered
        assert grpc_count(r.live, "RESOURCE_EXHAUSTED") == 1


def test_concurrent_call_limit_refuses_at_once(until: Callable) -> None:
    """`grpc_max_concurrent_rpcs` bounds the calls in a worker: one more is refused, nothing queues unbounded."""
    with rig(grpc_max_concurrent_rpcs=2, **NO_WAIT_LIMIT) as r, ThreadPoolExecutor(4) as pool:
        held = r.hold_slot(pool)
        in_flight = [pool.submit(r.stub.ModelInfer, infer_request(n), timeout=60) for n in (2, 3)]
        until(lambda: r.batcher.queued_rows == 5, what="two gRPC calls in flight")
        e = rpc_error(pool.submit(r.stub.ModelInfer, infer_request(1), timeout=60))
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
        r.injector.hold.release.set()
        assert held.result(60).status_code == 200
        assert [len(f.result(60).outputs) for f in in_flight] == [3, 3]
        assert len(r.stub.ModelInfer(infer_request(1), timeout=60).outputs) == 3  # capacity is back


def test_client_deadline_drops_queued_rows(until: Callable) -> None:
    """A gRPC deadline shorter than the server's is honoured: DEADLINE_EXCEEDED, and the rows never run."""
    with rig(request_timeout_s=60, **NO_WAIT_LIMIT) as r, ThreadPoolExecutor(4) as pool:
        held = r.hold_slot(pool)
        (session,) = r.injector.sessions
        calls_before = len(session.calls)
        e = rpc_error(pool.submit(r.stub.ModelInfer, infer_request(50), timeout=3.0))
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.details()
        until(lambda: r.batcher.queued_rows == 0, what="the late request's rows dropped from the queue")
        r.injector.hold.release.set()
        assert held.result(60).status_code == 200
        until(lambda: r.batcher.running_rows == 0, what="an idle batcher")
        assert 64 not in session.calls[calls_before:], "the expired request's rows (bucket 64) were computed"
        until(lambda: grpc_count(r.live, "DEADLINE_EXCEEDED") == 1, what="the call counted as DEADLINE_EXCEEDED")


def test_server_timeout_is_deadline_exceeded_with_rest_message(until: Callable) -> None:
    with rig(request_timeout_s=0.5, **NO_WAIT_LIMIT) as r, ThreadPoolExecutor(4) as pool:
        held = r.hold_slot(pool)
        e = rpc_error(pool.submit(r.stub.ModelInfer, infer_request(3), timeout=60))
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert e.details() == "the request did not finish within 0.5s; its queued crops were dropped"
        assert dict(e.trailing_metadata() or ())["omr-error-code"] == "deadline_exceeded"
        r.injector.hold.release.set()
        rest = held.result(60)  # the held REST request ran out of time too: the same message
        assert rest.status_code == 504 and rest.json()["error"] == e.details()


def test_buffered_bytes_budget_is_unavailable_with_rest_message(until: Callable) -> None:
    """`max_buffered_bytes` bounds the request bytes a worker's gRPC calls hold while queued, as REST's bodies."""
    with (
        rig(max_buffered_bytes=64 * 1024, max_body_bytes=64 * 1024, **NO_WAIT_LIMIT) as r,
        ThreadPoolExecutor(4) as pool,
    ):
        held = r.hold_slot(pool)
        first = pool.submit(r.stub.ModelInfer, infer_request(40), timeout=60)  # 40 KiB held while it waits
        until(lambda: r.batcher.queued_rows == 40, what="the first call queued")
        e = rpc_error(pool.submit(r.stub.ModelInfer, infer_request(30), timeout=60))  # 30 KiB more: over 64 KiB
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        assert e.details() == (f"the server holds too many request bodies right now ({64 * 1024} bytes); retry shortly")
        assert dict(e.trailing_metadata() or ())["retry-after"] == "1"
        r.injector.hold.release.set()
        assert held.result(60).status_code == 200
        assert len(first.result(60).outputs) == 3
        assert len(r.stub.ModelInfer(infer_request(30), timeout=60).outputs) == 3  # released: fits again


def test_connection_cap_refuses_one_more(until: Callable) -> None:
    """`max_connections` caps a worker's gRPC connections as REST's: one more is closed at accept (UNAVAILABLE)."""
    with rig(max_connections=2) as r:
        target = f"127.0.0.1:{r.live.state.settings.grpc_port}"
        own = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel (grpc shares them by default)
        # one connection is the rig's own channel; a second fills the cap
        assert r.stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        with grpc.insecure_channel(target, own) as second:
            assert pb_grpc.GRPCInferenceServiceStub(second).ServerLive(pb.ServerLiveRequest(), timeout=10).live
            with grpc.insecure_channel(target, own) as third, pytest.raises(grpc.RpcError) as err:
                pb_grpc.GRPCInferenceServiceStub(third).ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # the second channel closed: a new connection fits again (the server notices the close asynchronously)

        def fits() -> bool:
            with grpc.insecure_channel(target, own) as again:
                try:
                    return pb_grpc.GRPCInferenceServiceStub(again).ServerLive(pb.ServerLiveRequest(), timeout=5).live
                except grpc.RpcError:
                    return False

        until(fits, what="a connection accepted again after one closed")
