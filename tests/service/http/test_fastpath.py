"""`POST /classify` through the plain-ASGI fast path (`service.http.fastpath`) answers exactly like the FastAPI
route it goes around: the same requests to two real servers, one the app as served, one with every request
routed by FastAPI, give the same status and the same JSON, good requests and bad ones alike."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.app import create_app
from service.http import fastpath
from service.settings import Settings


class ThroughFastAPI:
    """The same service, with every request handed to FastAPI's own routing (`service.http.classify.classify`)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(self.app, scope, receive, send)


JSON_UTF8 = "application/json; charset=utf-8"
TOKEN = "s3cret-0123456789abcdef"


def _cases(png: list[str], raw: bytes) -> dict[str, dict[str, Any]]:
    crops = [{"id": f"c{i}", "image": im} for i, im in enumerate(png)]
    js = {"content-type": "application/json"}
    octet = {"content-type": "application/octet-stream"}
    shape = {"n": "3", "h": "20", "w": "20"}
    return {
        "json sheet": {"content": orjson.dumps({"crops": crops, "sheet": "s1"}), "headers": js},
        "json one crop": {"content": orjson.dumps({"crops": crops[:1]}), "headers": js},
        "json questions": {"content": orjson.dumps({"crops": [{**c, "question": "q1"} for c in crops]}), "headers": js},
        "json charset": {"content": orjson.dumps({"crops": crops[:2]}), "headers": {"content-type": JSON_UTF8}},
        "raw header shape": {"content": raw, "headers": {**octet, "x-crop-shape": "3,20,20"}},
        "raw query shape": {"content": raw, "headers": octet, "params": {"n": "3", "h": "20", "w": "20", "sheet": "s"}},
        "raw bad query int": {"content": raw, "headers": octet, "params": {"n": "abc", "h": "20", "w": "20"}},
        "raw negative query": {"content": raw, "headers": octet, "params": {"n": "-1", "h": "20", "w": "20"}},
        "json bad tta": {"content": orjson.dumps({"crops": crops[:1]}), "headers": js, "params": {"tta": "maybe"}},
        "long sheet query": {"content": raw, "headers": octet, "params": {**shape, "sheet": "x" * 300}},
        "raw no shape": {"content": raw, "headers": octet},
        "raw bad shape header": {"content": raw, "headers": {**octet, "x-crop-shape": "3,20"}},
        "raw wrong length": {"content": raw[:-1], "headers": {**octet, "x-crop-shape": "3,20,20"}},
        "raw too many": {"content": raw, "headers": {**octet, "x-crop-shape": "5000,20,20"}},
        "text/plain": {"content": b"hello", "headers": {"content-type": "text/plain"}},
        "not json": {"content": b"{crops:", "headers": js},
        "json list": {"content": b"[]", "headers": js},
        "no crops": {"content": orjson.dumps({"crops": []}), "headers": js},
        "bad base64": {"content": orjson.dumps({"crops": [crops[0], {"id": "bad", "image": "!!!"}]}), "headers": js},
        "unknown profile": {"content": orjson.dumps({"crops": crops[:1], "profile": "pencil"}), "headers": js},
        "unknown field": {"content": orjson.dumps({"crops": crops[:1], "colour": 1}), "headers": js},
    }  # fmt: skip


@pytest.fixture(scope="module")
def bodies(make_crops, encode_image) -> tuple[list[str], bytes]:
    images = make_crops(6, seed=3)
    png = [base64.b64encode(encode_image(im, ".png")).decode() for im in images]
    raw = np.random.default_rng(3).integers(0, 256, (3, 20, 20), dtype=np.uint8).tobytes()
    return png, raw


def test_fast_path_answers_every_request_as_the_fastapi_route_does(
    live_server, bodies, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = 0
    endpoint = fastpath.classify_endpoint

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal served
        served += 1
        await endpoint(scope, receive, send)

    monkeypatch.setattr(fastpath, "classify_endpoint", counted)
    settings = Settings(max_crops_per_request=4096)
    cases = _cases(*bodies)
    with live_server(create_app(settings)) as fast_url, live_server(ThroughFastAPI(create_app(settings))) as slow_url:
        for name, case in cases.items():
            fast = httpx.post(f"{fast_url}/classify", timeout=30, **case)
            slow = httpx.post(f"{slow_url}/classify", timeout=30, **case)
            assert fast.status_code == slow.status_code, (name, fast.text, slow.text)
            assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json", name
            assert fast.json() == slow.json(), name
            assert fast.headers.get("retry-after") == slow.headers.get("retry-after"), name
    assert served == len(cases)  # the app as served answered every one of them on the fast path


def test_fast_path_statuses(live_server, bodies) -> None:
    """What the comparison above compares: the answers are the documented ones, not two identical failures."""
    cases = _cases(*bodies)
    want = {
        "json sheet": 200, "json one crop": 200, "json questions": 200, "json charset": 200, "raw header shape": 200,
        "raw query shape": 200, "raw bad query int": 400, "raw negative query": 400, "json bad tta": 400,
        "long sheet query": 400, "raw no shape": 400, "raw bad shape header": 400, "raw wrong length": 422,
        "raw too many": 413, "text/plain": 415, "not json": 400, "json list": 400, "no crops": 422,
        "bad base64": 422, "unknown profile": 400, "unknown field": 400,
    }  # fmt: skip
    assert set(want) == set(cases)
    with live_server(create_app(Settings())) as url:
        got = {name: httpx.post(f"{url}/classify", timeout=30, **case) for name, case in cases.items()}
    assert {name: r.status_code for name, r in got.items()} == want
    assert got["raw bad query int"].json()["error"].startswith("query.n: ")
    assert got["bad base64"].json()["crops"][0]["id"] == "bad"
    assert got["json sheet"].json()["sheet"] == "s1" and len(got["json sheet"].json()["results"]) == 6
    assert [q["id"] for q in got["json questions"].json()["questions"]] == ["q1"]


def test_fast_path_auth_and_metrics(live_server, bodies, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    body = orjson.dumps({"crops": [{"image": bodies[0][0]}]})
    with live_server(create_app(Settings(auth_token_file=secret))) as url:
        plain = {"content-type": "application/json"}
        assert httpx.post(f"{url}/classify", content=body, headers=plain, timeout=30).status_code == 401
        bad = httpx.post(f"{url}/classify", content=body, headers={**plain, "authorization": "Bearer nope"}, timeout=30)
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        ok = httpx.post(
            f"{url}/classify", content=body, headers={**plain, "authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        assert ok.status_code == 200
        text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10).text
    # the fast path is labelled like the route it stands for (bounded labels: the template, never the raw path)
    assert 'omr_requests_total{endpoint="/classify",status="401"} 2.0' in text
    assert 'omr_requests_total{endpoint="/classify",status="200"} 1.0' in text
