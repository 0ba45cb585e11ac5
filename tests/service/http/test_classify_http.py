"""POST /classify over a real uvicorn: the JSON and raw-tensor paths, TTA, and every kind of bad input."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.core import tta
from service.core.modelconfig import load_config
from service.settings import BUNDLED_REPOSITORY, Settings

pytestmark = pytest.mark.integration
VERSION_DIR = BUNDLED_REPOSITORY / "omr-bubble" / "1"
CLASSES = load_config(VERSION_DIR).classes


@pytest.fixture(scope="module")
def url(live_server):
    settings = Settings(max_crops_per_request=50, max_body_bytes=256 * 1024)
    with live_server(create_app(settings)) as base:
        yield base


def post(url: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/classify", timeout=10, **kw)


def probs_of(response: httpx.Response) -> np.ndarray:
    return np.array([[r["probabilities"][c] for c in CLASSES] for r in response.json()["results"]])


def test_classify_raw_tensor_equals_png(url, make_crops, b64_crops) -> None:
    images = [np.ascontiguousarray(im[:20, :20]) for im in make_crops(7, seed=5, min_side=20)]
    as_png = post(url, json={"crops": b64_crops(images)})
    tensor = np.stack(images)
    as_raw = post(url, content=tensor.tobytes(), headers={"content-type": "application/octet-stream",
                                                            "x-crop-shape": "7,20,20"})  # fmt: skip
    via_query = post(url, content=tensor.tobytes(), params={"n": 7, "h": 20, "w": 20},
                     headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert as_png.status_code == as_raw.status_code == via_query.status_code == 200, as_raw.text
    np.testing.assert_allclose(probs_of(as_raw), probs_of(as_png), atol=1e-6)
    np.testing.assert_allclose(probs_of(via_query), probs_of(as_png), atol=1e-6)
    assert [r["id"] for r in as_raw.json()["results"]] == [str(i) for i in range(7)]


def _bilinear_zoom(img: np.ndarray, scale: float) -> np.ndarray:
    """Zoom about the pixel centre (w-1)/2 by `scale`, bilinear, edges replicated - written out by hand."""
    h, w = img.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sy = np.clip(cy + (ys - cy) / scale, 0, h - 1)  # where each output pixel comes from
    sx = np.clip(cx + (xs - cx) / scale, 0, w - 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = sy - y0, sx - x0
    f = img.astype(np.float64)
    top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
    bottom = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
    return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def _shift(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The crop moved by (dx, dy) pixels, the edge row/column repeated into the gap."""
    h, w = img.shape
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return img[np.ix_(rows, cols)]


HAND_VIEWS = {
    "identity": lambda im: im,
    "shift_left": lambda im: _shift(im, -1, 0),
    "shift_right": lambda im: _shift(im, 1, 0),
    "shift_up": lambda im: _shift(im, 0, -1),
    "shift_down": lambda im: _shift(im, 0, 1),
    "zoom_in": lambda im: _bilinear_zoom(im, 1.08),
    "zoom_out": lambda im: _bilinear_zoom(im, 0.92),
}


def raw_post(url: str, tensor: np.ndarray, tta: bool) -> httpx.Response:
    n, h, w = tensor.shape
    return post(url, content=tensor.tobytes(), params={"tta": str(tta).lower()},
                headers={"content-type": "application/octet-stream", "x-crop-shape": f"{n},{h},{w}"})  # fmt: skip


def test_classify_tta_averages_views_in_probability_space(url, make_crops, b64_crops) -> None:
    """The TTA answer is the plain mean of the service's own answers for each view sent as its own crop.

    Views are built here by hand (numpy indexing, a hand-written bilinear zoom), checked against the service's
    views to within one grey level, and every view row goes through the service with TTA off; nothing from
    `service.core.tta` or the calibration code computes an expected value."""
    config = load_config(VERSION_DIR)
    assert (config.input.height, config.input.width) == (32, 32)
    crops = np.stack(make_crops(4, seed=9, min_side=32, max_side=32))  # model size: reach the model unchanged
    views = list(config.tta.views)
    assert set(views) <= set(HAND_VIEWS), views
    by_hand = np.stack([np.stack([HAND_VIEWS[v](im) for v in views]) for im in crops])  # [N, V, 32, 32]
    served_views = tta.expand(crops, views).reshape(by_hand.shape)
    diff = np.abs(by_hand.astype(int) - served_views.astype(int))
    assert diff.max() <= 1, {v: int(diff[:, k].max()) for k, v in enumerate(views)}  # fixed-point rounding only
    r = raw_post(url, crops, tta=True)
    assert r.status_code == 200, r.text
    assert r.json()["tta"] is True
    per_view = raw_post(url, served_views.reshape(-1, 32, 32), tta=False)  # every view as its own crop
    assert per_view.status_code == 200, per_view.text
    expected = probs_of(per_view).reshape(len(crops), len(views), len(CLASSES)).mean(axis=1)
    np.testing.assert_allclose(probs_of(r), expected, atol=1e-5)
    # the hand-made views give the same answer within the rounding of one grey level
    hand = probs_of(raw_post(url, by_hand.reshape(-1, 32, 32), tta=False)).reshape(expected.shape[0], len(views), -1)
    np.testing.assert_allclose(hand.mean(axis=1), expected, atol=0.02)
    fill = {c for c, marked in config.profiles["fill"].items() if marked}
    rf = post(url, json={"crops": b64_crops(list(crops)), "tta": True, "profile": "fill"})
    assert rf.status_code == 200 and rf.json()["profile"] == "fill"
    np.testing.assert_allclose(probs_of(rf), expected, atol=1e-5)  # PNG path: the same rows, the same answer
    for res in rf.json()["results"]:
        assert res["marked_probability"] == pytest.approx(sum(res["probabilities"][c] for c in fill), abs=1e-6)


def _bad_cases(png: str) -> list[tuple[str, dict, int, str]]:
    json_h = {"content-type": "application/json"}
    raw_h = {"content-type": "application/octet-stream"}
    tiny = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 30).decode()
    return [
        ("invalid base64", {"json": {"crops": [{"image": png}, {"id": "b", "image": "%%%"}]}}, 422, "crop 1 (id 'b')"),
        ("whitespace base64", {"json": {"crops": [{"image": png[:8] + "\n" + png[8:]}]}}, 422, "invalid_base64"),
        ("undecodable", {"json": {"crops": [{"id": "x", "image": base64.b64encode(b"hello").decode()}]}}, 422,
         "undecodable"),
        ("truncated png", {"json": {"crops": [{"image": tiny}]}}, 422, "crop 0"),
        ("zero crops", {"json": {"crops": []}}, 422, "no crops"),
        ("too many crops", {"json": {"crops": [{"image": png}] * 51}}, 413, "limit is 50"),
        ("unknown model", {"json": {"crops": [{"image": png}], "model": "nope"}}, 404, "unknown model"),
        ("unknown version", {"json": {"crops": [{"image": png}], "version": "9"}}, 404, "no version"),
        ("unknown profile", {"json": {"crops": [{"image": png}], "profile": "nope"}}, 400, "unknown profile"),
        ("unknown field", {"json": {"crops": [{"image": png}], "threshold": 0.5}}, 400, "threshold"),
        ("wrong type", {"json": {"crops": [{"image": 5}]}}, 400, "crops.0.image"),
        ("not json", {"content": b"{crops", "headers": json_h}, 400, "not valid"),
        ("not utf-8", {"content": b'{"crops": [{"id": "\xff", "image": "x"}]}', "headers": json_h}, 400, "UTF-8"),
        ("wrong content type", {"content": b"crops", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
        ("bad shape header", {"content": b"\0" * 64, "headers": {**raw_h, "x-crop-shape": "8x8"}}, 400,
         "X-Crop-Shape"),
        ("no shape", {"content": b"\0" * 64, "headers": raw_h}, 400, "shape"),
        ("shape mismatch", {"content": b"\0" * 60, "headers": {**raw_h, "x-crop-shape": "1,8,8"}}, 422, "needs 64"),
        ("raw crop too small", {"content": b"\0" * 16, "headers": {**raw_h, "x-crop-shape": "1,4,4"}}, 422, "4x4"),
        ("oversized body", {"content": b"x" * 300_000, "headers": json_h}, 413, "limit"),
        ("oversized chunked body", {"content": iter([b"x" * 100_000] * 3), "headers": json_h}, 413, "limit"),
    ]  # fmt: skip


def test_classify_bad_inputs_answer_4xx_json_and_keep_serving(url, make_crops, b64_crops) -> None:
    png = b64_crops(make_crops(1))[0]["image"]
    for name, kwargs, status, needle in _bad_cases(png):
        r = post(url, **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert needle in r.text, (name, body)
        assert isinstance(body["error"], str) and body["code"]
        assert "Traceback" not in r.text
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    assert post(url, json={"crops": [{"image": png}]}).status_code == 200


def test_classify_all_bad_crops_named(url, make_crops, b64_crops) -> None:
    crops = b64_crops(make_crops(4))
    crops[1]["image"] = "@@"
    crops[3]["image"] = base64.b64encode(b"junk").decode()
    r = post(url, json={"crops": crops})
    assert r.status_code == 422
    named = [(c["index"], c["id"], c["reason"]) for c in r.json()["crops"]]
    assert named == [(1, "q1", "invalid_base64"), (3, "q3", "undecodable")]


def test_openapi_document_declares_both_request_bodies(url) -> None:
    doc = httpx.get(f"{url}/openapi.json", timeout=5).json()
    content = doc["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/octet-stream"}
    assert "Crop" in doc["components"]["schemas"]
