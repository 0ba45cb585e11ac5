"""Failure paths over a real uvicorn: injected model faults, timeouts (504), a full queue (429), auth (401).

Faults come in through `create_app(..., session_factory=...)`: the real ONNX Runtime session wrapped so that
it fails (or stalls) on a marked input - no global patching. A stalled batch sets `Gate.entered` when it reaches
the model and waits for `Gate.release`; every other ordering waits (bounded) for a gauge in /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service.app import create_app
from service.core.modelconfig import ModelConfig
from service.core.runtime import create_session
from service.settings import Settings

pytestmark = pytest.mark.integration

FAIL, STALL = 13, 29  # a crop whose pixels are all FAIL makes its batch fail; all STALL waits for `gate`


@dataclass
class Gate:
    entered: threading.Event = field(default_factory=threading.Event)  # a STALL batch reached the model
    release: threading.Event = field(default_factory=threading.Event)  # ... and may go on

    async def wait_entered(self, timeout_s: float = 30.0) -> None:
        assert await asyncio.to_thread(self.entered.wait, timeout_s), "the stalled batch never reached the model"


class FaultySession:
    def __init__(self, inner, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate

    def run(self, names, feed):
        x = next(iter(feed.values()))
        flat = x.reshape(len(x), -1)
        if np.isclose(flat, FAIL / 255).all(axis=1).any():
            raise RuntimeError("injected fault")
        if np.isclose(flat, STALL / 255).all(axis=1).any():
            self.gate.entered.set()
            self.gate.release.wait(60)
        return self.inner.run(names, feed)

    def get_providers(self):
        return self.inner.get_providers()


def faulty_app(settings: Settings, gate: Gate):
    def factory(path: Path, config: ModelConfig, s: Settings) -> FaultySession:
        return FaultySession(create_session(path, config, s), gate)

    return create_app(settings, session_factory=factory)


def crop(value: int, encode_image) -> dict[str, str]:
    return {"image": base64.b64encode(encode_image(np.full((16, 16), value, np.uint8))).decode()}


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def metric_is(c: httpx.AsyncClient, name: str, value: float):
    """An async predicate for `async_until`: /metrics shows `name` == value."""

    async def check() -> bool:
        return metric((await c.get("/metrics")).text, name) == value

    return check


async def _shows(c: httpx.AsyncClient, line: str) -> bool:
    return line in (await c.get("/metrics")).text


def test_inference_fault_fails_only_that_batch(live_server, encode_image) -> None:
    gate = Gate()
    with live_server(faulty_app(Settings(max_delay_ms=0), gate)) as url:
        bad = httpx.post(f"{url}/classify", json={"crops": [crop(FAIL, encode_image)]}, timeout=10)
        assert bad.status_code == 500
        assert bad.json()["code"] == "inference_failed" and "Traceback" not in bad.text
        good = httpx.post(f"{url}/classify", json={"crops": [crop(200, encode_image)]}, timeout=10)
        assert good.status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert metric(httpx.get(f"{url}/metrics", timeout=5).text, "omr_batch_failures_total") == 1


def test_request_past_timeout_answers_504_and_drops_its_rows(live_server, encode_image) -> None:
    gate = Gate()
    settings = Settings(max_delay_ms=0, max_batches_in_flight=1, request_timeout_s=0.5)
    with live_server(faulty_app(settings, gate)) as url:

        async def go() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                stalled = asyncio.ensure_future(c.post("/classify", json={"crops": [crop(STALL, encode_image)]}))
                await gate.wait_entered()
                queued = asyncio.ensure_future(c.post("/classify", json={"crops": [crop(100, encode_image)] * 5}))
                results = await asyncio.gather(stalled, queued)  # both past their deadline while the model is held
                gate.release.set()
                return results

        stalled, queued = asyncio.run(go())
        assert stalled.status_code == 504 and queued.status_code == 504, (stalled.text, queued.text)
        assert stalled.json()["code"] == "deadline_exceeded"
        text = httpx.get(f"{url}/metrics", timeout=5).text
        assert metric(text, "omr_queue_depth_rows") == 0  # the timed-out request's rows were dropped
        assert httpx.post(f"{url}/classify", json={"crops": [crop(90, encode_image)]}, timeout=10).status_code == 200


def test_full_queue_answers_429_early_with_retry_after(live_server, encode_image, async_until) -> None:
    gate = Gate()
    settings = Settings(max_delay_ms=0, max_batches_in_flight=1, queue_limit=8, request_timeout_s=10)
    with live_server(faulty_app(settings, gate)) as url:

        async def go() -> tuple[list[httpx.Response], httpx.Response, bool]:
            async with httpx.AsyncClient(base_url=url, timeout=15) as c:
                held = asyncio.ensure_future(c.post("/classify", json={"crops": [crop(STALL, encode_image)]}))
                await gate.wait_entered()
                waiting = asyncio.ensure_future(c.post("/classify", json={"crops": [crop(100, encode_image)] * 6}))
                await async_until(metric_is(c, "omr_queue_depth_rows", 6), what="6 rows queued")
                refused = await c.post("/classify", json={"crops": [crop(100, encode_image)] * 3})
                still_held = not gate.release.is_set() and not held.done()  # answered while the model was held
                gate.release.set()
                return list(await asyncio.gather(held, waiting)), refused, still_held

        accepted, refused, still_held = asyncio.run(go())
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1 and refused.json()["code"] == "overloaded"
        assert still_held  # decided at admission, not after waiting for the queue to move
        assert [r.status_code for r in accepted] == [200, 200]
        text = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'omr_rejections_total{reason="queue_full"} 1.0' in text


def test_bearer_token_required_when_configured(live_server, encode_image) -> None:
    token = "s3cret-token-0123456789"
    settings = Settings(auth_token=token, auth_metrics=True)
    with live_server(create_app(settings)) as url:
        body = {"crops": [crop(120, encode_image)]}
        missing = httpx.post(f"{url}/classify", json=body, timeout=5)
        wrong = httpx.post(f"{url}/classify", json=body, headers={"authorization": "Bearer nope"}, timeout=5)
        for r in (missing, wrong):
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json() == {"error": "unauthorized", "code": "unauthorized"}
        ok = httpx.post(f"{url}/classify", json=body, headers={"authorization": f"Bearer {token}"}, timeout=5)
        assert ok.status_code == 200
        v2 = httpx.post(f"{url}/v2/models/omr-bubble/infer", json={"inputs": []}, timeout=5)
        assert v2.status_code == 401
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # auth_health is off
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401  # auth_metrics is on


def test_token_file_is_read(tmp_path, live_server, encode_image) -> None:
    secret = tmp_path / "token"
    secret.write_text("file-token-abcdefghijkl\n")
    headers = {"authorization": "Bearer file-token-abcdefghijkl"}
    with live_server(create_app(Settings(auth_token_file=secret, auth_health=True)), headers=headers) as url:
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 401
        assert httpx.get(f"{url}/healthz", headers=headers, timeout=5).status_code == 200


def test_client_disconnect_drops_its_queued_rows(live_server, encode_image, async_until) -> None:
    gate = Gate()
    settings = Settings(max_delay_ms=0, max_batches_in_flight=1)
    with live_server(faulty_app(settings, gate)) as url:
        host, port = url.removeprefix("http://").split(":")

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=15) as c:
                held = asyncio.ensure_future(c.post("/classify", json={"crops": [crop(STALL, encode_image)]}))
                await gate.wait_entered()
                # a raw client that sends 7 crops and hangs up while they wait in the queue
                body = orjson.dumps({"crops": [crop(100, encode_image)] * 7})
                _reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
                await writer.drain()
                await async_until(metric_is(c, "omr_queue_depth_rows", 7), what="the 7 rows queued")
                writer.close()
                await writer.wait_closed()
                await async_until(metric_is(c, "omr_queue_depth_rows", 0), what="the hung-up request's rows dropped")
                counted = 'omr_rejections_total{reason="client_disconnected"} 1.0'
                await async_until(lambda: _shows(c, counted), what="the disconnect counted")
                assert not held.done()  # dropped while the model was still held, not run and discarded
                gate.release.set()
                return await held

        assert asyncio.run(go()).status_code == 200
        assert httpx.post(f"{url}/classify", json={"crops": [crop(90, encode_image)]}, timeout=10).status_code == 200


def test_empty_token_file_refuses_to_start(tmp_path) -> None:
    secret = tmp_path / "token"
    secret.write_text("\n")
    with pytest.raises(ValueError, match="at least 16"):
        Settings(auth_token_file=secret).bearer_token()
