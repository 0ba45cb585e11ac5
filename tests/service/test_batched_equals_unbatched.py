"""Batching must not change answers: 2,000+ random crops over 100+ concurrent requests to a real uvicorn
equal single-crop ONNX Runtime runs of the same model with the same preprocessing."""

from __future__ import annotations

import asyncio
import base64
import re

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from service.app import create_app
from service.core.modelconfig import load_config
from service.core.postprocess import calibrated_probabilities
from service.core.preprocess import decode_image, normalize, prepare
from service.settings import BUNDLED_REPOSITORY, Settings

pytestmark = pytest.mark.integration

VERSION_DIR = BUNDLED_REPOSITORY / "omr-bubble" / "1"


def _single_crop_reference(encoded: list[bytes]) -> np.ndarray:
    config = load_config(VERSION_DIR)
    session = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    out = []
    for data in encoded:
        rows = prepare([decode_image(data)], config.input)
        x = normalize(rows, config.preprocess)
        (logits,) = session.run([config.output_name], {config.input.name: x})
        out.append(calibrated_probabilities(logits, config.temperature)[0])
    return np.stack(out)


def _histogram_mean(metrics_text: str, name: str) -> float:
    total = float(re.search(rf"^{name}_sum{{[^}}]*}} (\S+)$", metrics_text, re.M).group(1))
    count = float(re.search(rf"^{name}_count{{[^}}]*}} (\S+)$", metrics_text, re.M).group(1))
    return total / count


def test_classify_concurrent_batched_equals_single_crop(live_server, make_crops, encode_image) -> None:
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.integers(5, 36, size=120)]  # 120 requests, ~2,400 crops
    images = make_crops(sum(sizes), seed=11, min_side=8, max_side=96)
    formats = [".png", ".jpg", ".bmp", ".tiff", ".webp"]
    encoded = [encode_image(im, formats[i % len(formats)]) for i, im in enumerate(images)]
    assert len(encoded) >= 2000
    expected = _single_crop_reference(encoded)
    classes = load_config(VERSION_DIR).classes

    settings = Settings(
        max_batch_size=64, max_delay_ms=5, max_batches_in_flight=2, request_timeout_s=60, admission_max_wait_ms=60_000
    )  # a 120-request burst: correctness, not admission
    with live_server(create_app(settings)) as url:

        async def run_all() -> list[dict]:
            limits = httpx.Limits(max_connections=128)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                starts = np.cumsum([0, *sizes])

                async def one(k: int) -> dict:
                    crops = [
                        {"id": f"c{i}", "image": base64.b64encode(encoded[i]).decode()}
                        for i in range(starts[k], starts[k + 1])
                    ]
                    r = await client.post("/classify", json={"crops": crops})
                    assert r.status_code == 200, r.text
                    return r.json()

                return await asyncio.gather(*(one(k) for k in range(len(sizes))))

        responses = asyncio.run(run_all())
        metrics_text = httpx.get(f"{url}/metrics", timeout=5).text

    got_ids = [res["id"] for resp in responses for res in resp["results"]]
    assert got_ids == [f"c{i}" for i in range(len(encoded))]
    got = np.array([[res["probabilities"][c] for c in classes] for resp in responses for res in resp["results"]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    labels = np.array([res["label"] for resp in responses for res in resp["results"]])
    marked = np.array([res["marked"] for resp in responses for res in resp["results"]])
    # docs/api.md "Decision and sheet context": the label is the best class on the decided side (ink profile)
    ink = np.array([load_config(VERSION_DIR).profiles["ink"][c] for c in classes])
    on_side = np.where(np.where(marked[:, None], ink[None], ~ink[None]), expected, -1.0)
    top2 = np.sort(on_side, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # where the top class is not a float-noise tie
    assert (labels[clear] == np.array(classes)[on_side.argmax(1)][clear]).all()
    # the batcher really merged requests (otherwise this test would prove nothing)
    assert _histogram_mean(metrics_text, "omr_batch_size_rows") > 8
