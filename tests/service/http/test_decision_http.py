"""The served decision over a real uvicorn: marked vs marked_probability, review vs its reasons, decided_by,
the sheet context on real PNG crops, and V2's label/marked outputs."""

from __future__ import annotations

import base64
import json
import shutil

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.app import create_app
from service.core.context import crop_stats, decide_request
from service.core.modelconfig import load_config
from service.core.postprocess import calibrated_probabilities
from service.core.preprocess import decode_image, normalize, prepare
from service.settings import BUNDLED_REPOSITORY, Settings

pytestmark = pytest.mark.integration
CONFIG = load_config(BUNDLED_REPOSITORY / "omr-bubble" / "1")
MARKED = {
    "ink": {"filled", "partial", "cross", "scribble"},
    "fill": {"filled", "partial"},
    "check-correct": {"filled", "partial", "cross"},
}


def bubble(level: int | None, frac: float = 1.0, side: int = 48, seed: int = 0) -> np.ndarray:
    """A round bubble on paper (grey 235, printed outline), optionally filled with grey `level` over `frac`
    of its inner radius; light sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side), 235, np.uint8)
    c, r = side // 2, side // 3
    cv2.circle(img, (c, c), r, 60, 2)
    if level is not None:
        cv2.circle(img, (c, c), int((r - 2) * frac), level, -1)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def crops(images: list[np.ndarray]) -> list[dict[str, str]]:
    out = []
    for i, im in enumerate(images):
        ok, buf = cv2.imencode(".png", im)
        assert ok
        out.append({"id": f"c{i}", "image": base64.b64encode(buf.tobytes()).decode()})
    return out


#: a small black blob over the centre quarter of a bubble: the bundled model calls it unmarked with
#: marked_probability well inside the doubtful band, yet by darkness it is far from the sheet's empties
BLOB = {"level": 30, "frac": 0.5}


@pytest.fixture(scope="module")
def url(live_server):
    with live_server(create_app(Settings())) as base:
        yield base


def classify(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/classify", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_http_marked_follows_the_documented_rule_under_every_profile(url, make_crops) -> None:
    images = [*make_crops(40, seed=21, min_side=16, max_side=64), bubble(None), bubble(30), bubble(**BLOB)]
    for profile, marked in MARKED.items():
        for tta in (False, True):
            body = classify(url, {"crops": crops(images), "profile": profile, "tta": tta, "sheet_context": False})
            assert body["profile"] == profile and body["tta"] is tta and body["sheet"] is None
            for res in body["results"]:
                p = res["probabilities"]
                assert res["marked_probability"] == pytest.approx(sum(p[c] for c in marked), abs=1e-5)
                assert res["marked"] == (res["marked_probability"] >= 0.5)
                assert (res["label"] in marked) == res["marked"]  # one story
                assert res["confidence"] == pytest.approx(p[res["label"]], abs=1e-6)
                assert res["review"] == bool(res["review_reasons"])
                assert res["decided_by"] == "model"
                assert ("label_marked_conflict" in res["review_reasons"]) == (res["label"] != max(p, key=p.get))


def test_http_sheet_context_moves_a_doubtful_blob_and_says_so(url) -> None:
    images = [bubble(None, seed=s) for s in range(6)] + [bubble(30, seed=s) for s in range(4)] + [bubble(**BLOB)]
    alone = classify(url, {"crops": crops(images[-1:])})["results"][0]
    assert 0.05 < alone["marked_probability"] < 0.5, alone  # precondition: the model alone is doubtful, unmarked
    assert alone["marked"] is False and alone["decided_by"] == "model"

    body = classify(url, {"crops": crops(images), "sheet": "exam-17 page 2"})
    assert body["sheet"] == "exam-17 page 2"
    *rest, blob = body["results"]
    assert blob["marked"] is True and blob["decided_by"] == "sheet"
    assert "sheet_context" in blob["review_reasons"] and blob["review"] is True
    assert blob["label"] in MARKED["ink"]
    assert blob["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-6)  # never changed
    assert blob["marked_probability"] == pytest.approx(alone["marked_probability"], abs=1e-6)
    assert [r["decided_by"] for r in rest] == ["model"] * 10
    assert [r["marked"] for r in rest] == [False] * 6 + [True] * 4

    off = classify(url, {"crops": crops(images), "sheet_context": False})["results"][-1]
    assert off["marked"] is False and off["decided_by"] == "model"

    # no confident marks on the sheet: the blob is still far darker than every empty (jump_without_marked)
    only_empties = [bubble(None, seed=s) for s in range(6)] + [bubble(**BLOB)]
    assert classify(url, {"crops": crops(only_empties)})["results"][-1]["decided_by"] == "sheet"


def test_http_sheet_context_leaves_uniform_sheets_and_other_sizes_alone(url) -> None:
    blob = bubble(**BLOB)
    all_filled = [bubble(30, seed=s) for s in range(8)] + [blob]
    assert classify(url, {"crops": crops(all_filled)})["results"][-1]["decided_by"] == "model"
    # empties and faint uniform grey (erasure-like) bubbles the model doubts: nothing becomes marked
    # (the grey level the served model doubts, found by asking it about each crop alone)
    levels = list(range(150, 236, 5))
    alone = [classify(url, {"crops": crops([bubble(v)])})["results"][0]["marked_probability"] for v in levels]
    doubtful = [v for v, p in zip(levels, alone, strict=True) if 0.05 < p < 0.5]
    assert doubtful, dict(zip(levels, alone, strict=True))
    faint = bubble(doubtful[0])
    all_empty = [bubble(None, seed=s) for s in range(8)] + [faint, faint]
    results = classify(url, {"crops": crops(all_empty)})["results"]
    assert [(r["marked"], r["decided_by"]) for r in results] == [(False, "model")] * 10
    # the references are 48-px bubbles; a 96-px blob is another field of the sheet and is judged alone
    big_blob = cv2.resize(blob, (96, 96), interpolation=cv2.INTER_LINEAR)
    mixed = [bubble(None, seed=s) for s in range(6)] + [bubble(30, seed=s) for s in range(4)] + [big_blob]
    res = classify(url, {"crops": crops(mixed)})["results"][-1]
    assert res["decided_by"] == "model" and res["marked"] == (res["marked_probability"] >= 0.5)


def test_http_raw_tensor_gets_the_sheet_context_too(url) -> None:
    images = [bubble(None, seed=s) for s in range(6)] + [bubble(30, seed=s) for s in range(4)] + [bubble(**BLOB)]
    tensor = np.stack(images)
    headers = {"content-type": "application/octet-stream", "x-crop-shape": "11,48,48"}
    r = httpx.post(f"{url}/classify", content=tensor.tobytes(), headers=headers, params={"sheet": "s1"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["sheet"] == "s1"
    assert r.json()["results"][-1]["decided_by"] == "sheet"
    r = httpx.post(
        f"{url}/classify", content=tensor.tobytes(), headers=headers, params={"sheet_context": "false"}, timeout=30
    )
    assert r.json()["results"][-1]["decided_by"] == "model"


def test_http_bad_sheet_fields_are_400(url) -> None:
    one = crops([bubble(None)])
    for bad in ({"sheet": 17}, {"sheet_context": "yes"}, {"sheet": "x" * 300}):
        r = httpx.post(f"{url}/classify", json={"crops": one, **bad}, timeout=30)
        assert r.status_code == 400, (bad, r.text)
        assert "sheet" in r.json()["error"]


def test_v2_label_and_marked_outputs_match_classify(url) -> None:
    images = [bubble(None, seed=s) for s in range(3)] + [bubble(30), bubble(**BLOB)]
    ref = classify(url, {"crops": crops(images)})["results"]
    body = {
        "inputs": [
            {"name": "PIXELS", "datatype": "UINT8", "shape": [5, 48, 48], "data": np.stack(images).ravel().tolist()}
        ]
    }
    r = httpx.post(f"{url}/v2/models/omr-bubble/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["label"]["data"] == [x["label"] for x in ref]
    assert out["marked"]["data"] == [x["marked"] for x in ref]
    assert out["marked"]["data"][:4] == [False, False, False, True]
    probs = np.array(out["probabilities"]["data"]).reshape(5, len(CONFIG.classes))
    want = np.array([[x["probabilities"][c] for c in CONFIG.classes] for x in ref])
    np.testing.assert_allclose(probs, want, atol=1e-6)


def test_http_decisions_equal_decide_request_run_locally(url, make_crops) -> None:
    """Served == measured: the service's decisions for a sheet equal `decide_request` on the same crops run
    through the shared preprocessing and ONNX Runtime here (what `models.evaluate` calls per sheet)."""
    sheet = [bubble(None, seed=s) for s in range(6)] + [bubble(30, seed=s) for s in range(4)] + [bubble(**BLOB)]
    images = sheet + make_crops(12, seed=4, min_side=20, max_side=60)
    body = {"crops": crops(images), "profile": "check-correct"}
    served = classify(url, body)["results"]
    decoded = [decode_image(base64.b64decode(c["image"])) for c in body["crops"]]
    rows = prepare(decoded, CONFIG.input)
    version_dir = BUNDLED_REPOSITORY / "omr-bubble" / "1"
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run([CONFIG.output_name], {CONFIG.input.name: normalize(rows, CONFIG.preprocess)})
    probs = calibrated_probabilities(logits, CONFIG.temperature)
    sizes = np.array([d.shape for d in decoded])
    local = decide_request(probs, crop_stats(rows), CONFIG, "check-correct", sizes=sizes)
    assert [(r["marked"], r["label"], r["decided_by"], r["review_reasons"]) for r in served] == [
        (d.marked, d.label, d.decided_by, d.review_reasons) for d in local
    ]
    assert any(d.decided_by == "sheet" for d in local)  # the sheet context took part


def test_http_tta_review_mode_decides_from_the_identity_view(url, live_server, tmp_path, make_crops) -> None:
    version_dir = tmp_path / "omr-bubble" / "1"
    shutil.copytree(BUNDLED_REPOSITORY / "omr-bubble" / "1", version_dir)
    cfg = json.loads((version_dir / "config.json").read_text())
    cfg["tta"]["mode"] = "review"
    (version_dir / "config.json").write_text(json.dumps(cfg))
    images = make_crops(40, seed=8, min_side=12, max_side=64)
    body = {"crops": crops(images), "sheet_context": False}
    with live_server(create_app(Settings(model_repository=tmp_path))) as review_url:
        plain = classify(review_url, {**body, "tta": False})["results"]
        review = classify(review_url, {**body, "tta": True})["results"]
    averaged = classify(url, {**body, "tta": True})["results"]  # the bundled config: mode "average"
    moved = [
        a["probabilities"] != pytest.approx(p["probabilities"], abs=1e-4) for a, p in zip(averaged, plain, strict=True)
    ]
    assert any(moved)
    for p, r in zip(plain, review, strict=True):
        assert r["probabilities"] == pytest.approx(p["probabilities"], abs=1e-6)  # identity view's own
        assert (r["marked"], r["label"]) == (p["marked"], p["label"])
        assert set(r["review_reasons"]) - set(p["review_reasons"]) <= {"tta_disagreement"}
    assert any("tta_disagreement" in r["review_reasons"] for r in review)
