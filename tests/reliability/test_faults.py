"""Faults against a real uvicorn on 127.0.0.1: an inference error in one batch, a client that disconnects, a
request that times out while queued. The model is the real ONNX Runtime session wrapped by `FaultInjector`
(through `create_app(session_factory=...)`): it raises on a batch holding a crop of FAIL_VALUE pixels and holds
one holding SLOW_VALUE pixels until the test releases it, so a test can keep the only batch slot while it arranges
the queue. Every ordering is an event or a bounded wait on observable state (queued rows, running rows, /metrics).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from service.settings import Settings

from ._support import FAIL_VALUE, SLOW_VALUE, FaultInjector, LiveServer, assert_json_error, json_crops, live_server

pytestmark = pytest.mark.integration

SIDE = 32  # the bundled model's input side: raw crops of this size reach the model unchanged
#: these tests arrange queues on purpose (a slow batch holds the slot): admission control must not refuse them
NO_ADMISSION_LIMIT = {"admission_max_wait_ms": 600_000, "admission_wait_fraction": 1.0}


def raw(n: int, value: int | None = None, seed: int = 0) -> bytes:
    if value is None:
        return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8).tobytes()
    return np.full((n, SIDE, SIDE), value, np.uint8).tobytes()


def post_raw(c: httpx.Client, body: bytes) -> httpx.Response:
    n = len(body) // (SIDE * SIDE)
    headers = {"Content-Type": "application/octet-stream", "X-Crop-Shape": f"{n},{SIDE},{SIDE}"}
    return c.post("/classify", content=body, headers=headers, params={"tta": "false"})


def metric(c: httpx.Client, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", c.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def faulty() -> Iterator[tuple[LiveServer, FaultInjector]]:
    injector = FaultInjector()
    settings = Settings(
        max_batches_in_flight=1, max_delay_ms=5, request_timeout_s=10, log_level="critical", **NO_ADMISSION_LIMIT
    )
    with live_server(settings, injector) as live:
        yield live, injector


def test_fail_only_the_batch_holding_the_fault(faulty: tuple[LiveServer, FaultInjector], until: Callable) -> None:
    live, injector = faulty
    batcher = live.state.registry.get().batcher
    injector.hold.arm()
    with ThreadPoolExecutor(4) as pool, live.client() as c:
        failures_before = metric(c, "omr_batch_failures_total")
        slow = pool.submit(post_raw, c, raw(1, SLOW_VALUE))  # batch 1: holds the only slot until released
        injector.hold.wait_entered()
        poison = pool.submit(post_raw, c, raw(2, FAIL_VALUE))  # batch 2: queued behind it ...
        neighbour = pool.submit(post_raw, c, raw(3, None))  # ... together with this one
        until(lambda: batcher.queued_rows == 5, what="5 rows queued behind the held batch")
        injector.hold.release.set()
        assert slow.result().status_code == 200
        bad = assert_json_error(poison.result(), 500)
        assert bad["code"] == "inference_failed" and "RuntimeError" in bad["error"], bad
        assert "injected" not in bad["error"], "the exception's text leaked into the response"
        assert_json_error(neighbour.result(), 500)  # same batch, same fate: nothing half-answered
        after = post_raw(c, raw(4, None))  # the next batch runs normally
        assert after.status_code == 200 and len(after.json()["results"]) == 4
        assert c.post("/classify", json=json_crops(3)).status_code == 200
        assert c.get("/readyz").status_code == 200  # the batcher loop survived: the next batches ran
        assert metric(c, "omr_batch_failures_total") == failures_before + 1


def test_disconnect_mid_request_keeps_loop_and_frees_rows(
    faulty: tuple[LiveServer, FaultInjector], until: Callable
) -> None:
    live, injector = faulty
    batcher = live.state.registry.get().batcher
    injector.hold.arm()
    n, body = 50, raw(50, None, seed=1)
    head = (
        f"POST /classify?tta=false HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"X-Crop-Shape: {n},{SIDE},{SIDE}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with ThreadPoolExecutor(2) as pool, live.client() as c:
        slow = pool.submit(post_raw, c, raw(1, SLOW_VALUE))
        injector.hold.wait_entered()
        (session,) = injector.sessions
        calls_before = len(session.calls)
        with socket.create_connection(("127.0.0.1", live.port)) as s:
            s.sendall(head + body)
            until(lambda: batcher.queued_rows == 50, what="the 50 rows queued behind the held batch")
        # closed here, before its rows ran: the server's answer has nowhere to go
        until(lambda: batcher.queued_rows == 0, what="the disconnected request's rows dropped")
        injector.hold.release.set()
        assert slow.result().status_code == 200
        until(lambda: batcher.queued_rows == 0 and batcher.running_rows == 0, what="an idle batcher")
        r = post_raw(c, raw(8, None))
        assert r.status_code == 200 and len(r.json()["results"]) == 8  # the loop survived
        assert metric(c, "omr_queue_depth_rows") == 0
    assert 64 not in session.calls[calls_before:], "the disconnected request's rows (bucket 64) were computed"


def test_timeout_while_queued_drops_rows_unrun(until: Callable) -> None:
    injector = FaultInjector()
    settings = Settings(
        max_batches_in_flight=1, max_delay_ms=5, request_timeout_s=0.5, log_level="critical", **NO_ADMISSION_LIMIT
    )
    with live_server(settings, injector) as live, ThreadPoolExecutor(2) as pool, live.client() as c:
        batcher = live.state.registry.get().batcher
        (session,) = injector.sessions
        slow: Future[httpx.Response] = pool.submit(post_raw, c, raw(1, SLOW_VALUE))
        injector.hold.wait_entered()
        calls_before = len(session.calls)
        late = post_raw(c, raw(100, None))  # 100 rows, bucket 128; waits behind the held batch until its deadline
        body = assert_json_error(late, 504)
        assert body["code"] == "deadline_exceeded"
        assert batcher.queued_rows == 0  # dropped from the queue at the deadline
        injector.hold.release.set()
        slow.result()
        until(lambda: batcher.running_rows == 0, what="the held batch finished")
        r = post_raw(c, raw(1, None))
        assert r.status_code == 200
        assert 128 not in session.calls[calls_before:], "the timed-out request's rows were computed anyway"


def test_fault_under_concurrency_leaves_others_whole() -> None:
    """120 concurrent requests in batches of at most 16 rows; every 40th carries a poisoned crop. Every answer
    is 200 or inference_failed 500, every 200 has all its results, and the service is ready and serving afterwards."""
    injector = FaultInjector(release=True)
    settings = Settings(
        max_batch_size=16, max_batches_in_flight=2, max_delay_ms=2, log_level="critical", **NO_ADMISSION_LIMIT
    )
    with live_server(settings, injector) as live:

        async def one(c: httpx.AsyncClient, k: int) -> tuple[int, int, int]:
            n = 1 + k % 7
            body = raw(n, FAIL_VALUE) if k % 40 == 0 else raw(n, None, seed=k)
            headers = {"Content-Type": "application/octet-stream", "X-Crop-Shape": f"{n},{SIDE},{SIDE}"}
            r = await c.post("/classify", content=body, headers=headers, params={"tta": "false"})
            got = len(r.json().get("results", [])) if r.status_code == 200 else -1
            return r.status_code, n, got

        async def main() -> list[tuple[int, int, int]]:
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as c:
                return await asyncio.gather(*(one(c, k) for k in range(120)))

        results: list[tuple[int, int, int]] = []
        t = threading.Thread(target=lambda: results.extend(asyncio.run(main())))
        t.start()
        t.join(120)
        assert len(results) == 120
        assert {s for s, _, _ in results} <= {200, 500}
        assert all(got == n for s, n, got in results if s == 200)
        assert sum(s == 200 for s, _, _ in results) >= 60, [s for s, _, _ in results]  # <= 3 of ~30 batches failed
        assert all(s == 500 for k, (s, _, _) in enumerate(results) if k % 40 == 0)  # poisoned never "succeeds"
        with live.client() as c:
            assert c.get("/readyz").status_code == 200
            assert post_raw(c, raw(3, None)).status_code == 200
