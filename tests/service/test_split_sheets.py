"""A big sheet split over two workers (`service.core.parts`, `service.serve.peers`), in one test process: two
real apps on real uvicorn servers share one real pod block and talk over their real Unix sockets.

The answer must be the one a single worker gives (same probabilities, the same sheet-context decisions over
the whole sheet), a bad crop in either half is named in the one 422, a peer that does not answer costs
nothing but time, and only a big sheet on an idle pod is split."""

from __future__ import annotations

import base64
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from loadtest.crops import CropPool
from service.app import create_app
from service.core.parts import Part, PartResult
from service.serve.peers import decode_part, decode_result, encode_part, encode_result
from service.serve.pod import Phase, PodState
from service.settings import Settings
from tests.conftest import serve
from tests.service.http.test_decision_http import BLOB, bubble, crops

SETTINGS = {"grpc_port": 0, "split_min_crops": 64, "request_timeout_s": 60, "admission_max_wait_ms": 60_000}


def _sheet(n: int, seed: int = 3) -> list[dict[str, str]]:
    """n real-looking crops of every class and of several sizes (the sheet context groups by size)."""
    pool = CropPool.build(n, seed=seed)
    return [{"id": f"b{i}", "image": pool.b64[i]} for i in range(n)]


def _counter(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#") and all(w in line for w in want)
    )


@contextlib.contextmanager
def _pod_of_two(**overrides: object) -> Iterator[tuple[str, str, PodState]]:
    """Workers 0 and 1 of one pod, each a real app on its own uvicorn; the block in a short folder (socket
    paths have a 108-byte limit)."""
    folder = Path(tempfile.mkdtemp(prefix="omr-split-"))
    pod = PodState.create(folder / "pod.bin", 2)
    settings = Settings(**{**SETTINGS, **overrides})
    try:
        pod.set_worker(1, Phase.READY)  # so worker 0 reports ready before worker 1 exists; 1 then re-registers
        with serve(create_app(settings, pod=pod.slot(0))) as url0, serve(create_app(settings, pod=pod.slot(1))) as url1:
            yield url0, url1, pod
    finally:
        pod.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def alone() -> Iterator[str]:
    """One worker with no pod: the reference answer."""
    with serve(create_app(Settings(**SETTINGS))) as url:
        yield url


def _same_answer(split: dict, single: dict) -> None:
    assert [r["id"] for r in split["results"]] == [r["id"] for r in single["results"]]
    for a, b in zip(split["results"], single["results"], strict=True):
        for key in ("label", "marked", "decided_by", "review_reasons"):
            assert a[key] == b[key], (a["id"], key, a[key], b[key])
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)


def test_a_split_sheet_gets_the_single_worker_answer(alone: str) -> None:
    crops = _sheet(100)
    with _pod_of_two() as (url0, url1, _pod):
        split = httpx.post(f"{url0}/classify", json={"crops": crops}, timeout=60)
        assert split.status_code == 200, split.text
        assert _counter(url0, "omr_sheet_splits_total", outcome="peer") == 1
        assert _counter(url1, "omr_peer_parts_total") == 1  # worker 1 classified the second half
    single = httpx.post(f"{alone}/classify", json={"crops": crops}, timeout=60)
    assert single.status_code == 200
    _same_answer(split.json(), single.json())


def test_the_sheet_context_sees_both_halves(alone: str) -> None:
    """The doubtful blob is crop 0 (decoded here), every confident empty is in the half worker 1 decodes: only
    with the far half's statistics does the sheet have an unmarked level to judge the blob against."""
    images = [bubble(**BLOB)] + [bubble(30, seed=s) for s in range(49)] + [bubble(None, seed=s) for s in range(50)]
    body = {"crops": crops(images)}
    with _pod_of_two() as (url0, _url1, _pod):
        split = httpx.post(f"{url0}/classify", json=body, timeout=60)
        assert split.status_code == 200, split.text
        assert _counter(url0, "omr_sheet_splits_total", outcome="peer") == 1
    blob = split.json()["results"][0]
    assert blob["decided_by"] == "sheet" and blob["marked"] is True, blob
    _same_answer(split.json(), httpx.post(f"{alone}/classify", json=body, timeout=60).json())


def test_bad_crops_in_both_halves_are_named_in_one_422() -> None:
    crops = _sheet(100)
    crops[3]["image"] = "%%% not base64"
    crops[97]["image"] = base64.b64encode(b"\x89PNG\r\n\x1a\n truncated").decode()
    with _pod_of_two() as (url0, url1, _pod):
        r = httpx.post(f"{url0}/classify", json={"crops": crops}, timeout=60)
        assert r.status_code == 422, r.text
        named = [(c["index"], c["id"], c["reason"]) for c in r.json()["crops"]]
        assert named[0] == (3, "b3", "invalid_base64")
        assert named[1][:2] == (97, "b97")  # decoded by worker 1, indexed in the request
        assert len(named) == 2
        assert _counter(url1, "omr_peer_parts_total") == 1


def test_a_peer_that_does_not_answer_costs_only_time(alone: str) -> None:
    """Worker 1 is READY in the block but nobody listens on its socket: worker 0 does the half itself."""
    folder = Path(tempfile.mkdtemp(prefix="omr-split-"))
    pod = PodState.create(folder / "pod.bin", 2)
    crops = _sheet(100, seed=5)
    try:
        pod.set_worker(1, Phase.READY)
        with serve(create_app(Settings(**SETTINGS), pod=pod.slot(0))) as url0:
            r = httpx.post(f"{url0}/classify", json={"crops": crops}, timeout=60)
            assert r.status_code == 200, r.text
            assert _counter(url0, "omr_sheet_splits_total", outcome="fallback") == 1
            assert _counter(url0, "omr_sheet_splits_total", outcome="peer") == 0
    finally:
        pod.close()
        shutil.rmtree(folder, ignore_errors=True)
    _same_answer(r.json(), httpx.post(f"{alone}/classify", json={"crops": crops}, timeout=60).json())


def test_only_a_big_sheet_on_an_idle_peer_is_split() -> None:
    with _pod_of_two() as (url0, _url1, pod):
        small = httpx.post(f"{url0}/classify", json={"crops": _sheet(63)}, timeout=60)
        assert small.status_code == 200
        assert _counter(url0, "omr_sheet_splits_total") == 0  # below split_min_crops
        pod.set_active(1, 1)  # worker 1 says it is busy (its own word; it is idle, so nothing rewrites it)
        busy = httpx.post(f"{url0}/classify", json={"crops": _sheet(100)}, timeout=60)
        assert busy.status_code == 200
        assert _counter(url0, "omr_sheet_splits_total") == 0
        pod.set_active(1, 0)
        assert httpx.post(f"{url0}/classify", json={"crops": _sheet(100)}, timeout=60).status_code == 200
        assert _counter(url0, "omr_sheet_splits_total", outcome="peer") == 1
        assert pod.active(0) == 0 and pod.active(1) == 0  # both came back to idle


def test_split_off_never_splits() -> None:
    with _pod_of_two(split_sheets=False) as (url0, url1, _pod):
        assert httpx.post(f"{url0}/classify", json={"crops": _sheet(100)}, timeout=60).status_code == 200
        assert _counter(url0, "omr_sheet_splits_total") == 0
        assert _counter(url1, "omr_peer_parts_total") == 0


def _unframe(frame: list[bytes]) -> tuple[dict, bytes]:
    raw = b"".join(frame)
    head_len = int.from_bytes(raw[:4], "little")
    return orjson.loads(raw[8 : 8 + head_len]), raw[8 + head_len :]


def test_the_wire_keeps_every_field() -> None:
    part = Part("m", "3", ["aGk=", b"\x89PNG", "é"], ["x", "y", "z"], 40, True, ("identity", "shift"), 12.5)
    back = decode_part(*_unframe(encode_part(part)))
    assert back == Part("m", "3", [b"aGk=", b"\x89PNG", "é".encode()], ["x", "y", "z"], 40, True,
                        ("identity", "shift"), 12.5)  # fmt: skip
    assert decode_part(*_unframe(encode_part(Part("m", "1", [], [], 0, False, ())))).deadline == float("inf")

    stats = np.array([[0.1, -0.2, 0.9], [0.7, 0.3, 0.8]], np.float32)
    probs = np.linspace(0, 1, 2 * 3 * 8, dtype=np.float32).reshape(6, 8)  # 2 crops x 3 views
    got = decode_result(*_unframe(encode_result(PartResult(stats, np.array([[20, 30], [40, 50]]), probs))))
    assert got is not None and not got.errors
    np.testing.assert_array_equal(got.stats, stats)
    np.testing.assert_array_equal(got.sizes, [[20, 30], [40, 50]])
    np.testing.assert_array_equal(got.probs, probs)
    errors = [{"index": 41, "id": "y", "reason": "undecodable", "message": "m"}]
    got = decode_result(*_unframe(encode_result(PartResult(stats, stats, stats, errors))))
    assert got is not None and got.errors == errors
    assert decode_result({"status": "refused", "message": "past its deadline"}, b"") is None
