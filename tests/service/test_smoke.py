"""The documented start-up path works end to end against the bundled model."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.app import create_app
from service.settings import BUNDLED_REPOSITORY, Settings

VERSION = BUNDLED_REPOSITORY / "omr-bubble" / "1"


def by_hand(crops: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The bundled model run directly: pixels / 255 (mean 0, std 1), ONNX Runtime, softmax(logits / T)."""
    config = json.loads((VERSION / "config.json").read_text())
    assert config["preprocess"]["mean"] == 0.0 and config["preprocess"]["std"] == 1.0
    session = ort.InferenceSession(str(VERSION / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack(crops).astype(np.float32)[:, None] / 255.0
    (logits,) = session.run(None, {config["input"]["name"]: x})
    z = logits.astype(np.float64) / config["temperature"]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return config["classes"], p / p.sum(axis=1, keepdims=True)


pytestmark = pytest.mark.integration


def test_classify_returns_one_result_per_crop_in_order(live_server, make_crops, b64_crops) -> None:
    body = {"crops": b64_crops(make_crops(5, seed=1))}
    with live_server(create_app(Settings())) as url:
        r = httpx.post(f"{url}/classify", json=body, timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()
        assert [x["id"] for x in out["results"]] == [f"q{i}" for i in range(5)]
        assert out["model"] == {"name": "omr-bubble", "version": "1", "provider": "CPUExecutionProvider"}
        # values: crops already at the model's 32x32 (no resize to re-implement) against the model run by hand
        native = make_crops(6, seed=2, min_side=32, max_side=32)
        got = httpx.post(f"{url}/classify", json={"crops": b64_crops(native), "tta": False}, timeout=10).json()
        classes, expected = by_hand(native)
        probs = np.array([[res["probabilities"][c] for c in classes] for res in got["results"]])
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        for res, row in zip(got["results"], expected, strict=True):
            assert res["label"] in classes and res["confidence"] == pytest.approx(row.max(), abs=1e-5)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert "omr_requests_total" in httpx.get(f"{url}/metrics", timeout=5).text
