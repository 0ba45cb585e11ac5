"""Warm-up over a real uvicorn: 503 + Retry-After while it runs, and serving (but not ready) after it failed.

Warm-up runs every batch bucket once on all-zero rows; the session factory below holds (or fails) exactly
those calls, so the test decides when warm-up ends. The server is started without waiting for readiness
(it would never come while warm-up is held): it waits for liveness, /healthz.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.core.modelconfig import ModelConfig
from service.core.runtime import create_session
from service.settings import Settings

pytestmark = pytest.mark.integration


class WarmupGate:
    """A session factory: the real ONNX Runtime session, except that an all-zero batch (warm-up's input) sets
    `entered` and then waits for `release` - or raises, with `fail=True`."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, path: Path, config: ModelConfig, settings: Settings) -> object:
        gate = self
        inner = create_session(path, config, settings)

        class Session:
            def run(self, names, feed):  # type: ignore[no-untyped-def]
                (x,) = feed.values()
                if not np.any(x):
                    gate.entered.set()
                    if gate.fail:
                        raise RuntimeError("injected warm-up failure")
                    assert gate.release.wait(60), "warm-up never released"
                return inner.run(names, feed)

            def __getattr__(self, name: str) -> object:
                return getattr(inner, name)

        return Session()


@contextlib.contextmanager
def serve_live(app: object, until) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real uvicorn on a socket bound here; yields once /healthz answers (not /readyz)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def live() -> bool:
        assert thread.is_alive(), "server thread died during start-up"
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        return False

    try:
        until(live, 120, "liveness")
        yield url
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def raw(n: int = 2) -> dict[str, object]:
    pixels = np.full((n, 32, 32), 200, np.uint8)
    pixels[:, 8:24, 8:24] = 30
    return {"content": pixels.tobytes(), "headers": {"content-type": "application/octet-stream",
                                                     "x-crop-shape": f"{n},32,32"}}  # fmt: skip


def test_classify_answers_503_with_retry_after_while_warming_up(until) -> None:
    gate = WarmupGate()
    settings = Settings(max_batch_size=8, log_level="critical")
    with serve_live(create_app(settings, session_factory=gate), until) as url:
        assert gate.entered.wait(60), "warm-up never reached the model"
        try:
            r = httpx.post(f"{url}/classify", timeout=10, **raw())
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "unavailable" and "warming up" in r.json()["error"]
            assert int(r.headers["retry-after"]) >= 1
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 503 and "warming up" in ready.json()["error"]
        finally:
            gate.release.set()
        until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready after warm-up")
        ok = httpx.post(f"{url}/classify", timeout=10, **raw())
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2


def test_warm_up_freezes_the_start_up_heap_out_of_the_collector(until) -> None:
    """After warm-up the objects that live as long as the process are frozen (gc.freeze): collections under
    load no longer walk them; and a collection starts only at `gc_young_threshold` live young objects, not at
    Python's 700 (which a 100-crop sheet's own objects crossed). The server runs in this process, so its
    freeze count and thresholds are this process's."""
    gc.unfreeze()  # other tests' apps froze this process already
    gc.set_threshold(700, 10, 10)
    gate = WarmupGate()
    settings = Settings(max_batch_size=8, log_level="critical", gc_young_threshold=12_345)
    with serve_live(create_app(settings, session_factory=gate), until) as url:
        assert gate.entered.wait(60), "warm-up never reached the model"
        try:
            assert gc.get_freeze_count() == 0  # not while warming up
            assert gc.get_threshold() == (700, 10, 10)
        finally:
            gate.release.set()
        until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready after warm-up")
        assert gc.get_freeze_count() > 10_000  # the app, FastAPI, pydantic, the sessions' wrappers, ...
        assert gc.get_threshold() == (12_345, 10, 10)  # the older generations keep Python's thresholds


def test_failed_warm_up_keeps_serving_but_never_reports_ready(until) -> None:
    gate = WarmupGate(fail=True)
    settings = Settings(max_batch_size=8, log_level="critical")
    with serve_live(create_app(settings, session_factory=gate), until) as url:
        assert gate.entered.wait(60)

        def reported() -> bool:
            return "warm-up failed" in httpx.get(f"{url}/readyz", timeout=10).text

        until(reported, 60, "readiness to name the failed warm-up")
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and "RuntimeError" in ready.json()["error"], ready.text
        assert "injected" not in ready.text  # the exception's text stays in the log
        r = httpx.post(f"{url}/classify", timeout=10, **raw(3))  # the model itself works: requests are served
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 3
        assert "omr_ready 0.0" in httpx.get(f"{url}/metrics", timeout=10).text
