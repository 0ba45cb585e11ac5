"""The naive FastAPI baseline (`loadtest.naive_app`) as the benchmark starts it: a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from loadtest import reference
from loadtest.crops import CropPool
from service.core.modelconfig import load_config
from service.core.postprocess import calibrated_probabilities
from service.core.preprocess import decode_image, normalize, resize
from service.settings import BUNDLED_REPOSITORY

pytestmark = [pytest.mark.integration]

VERSION_DIR = BUNDLED_REPOSITORY / "omr-bubble" / "1"


def test_naive_baseline_answers_every_crop_in_order_with_the_models_probabilities(tmp_path: Path) -> None:
    pool = CropPool.build(12, seed=3)
    body, ids = pool.json_body(0, 12, prefix="n-")
    with reference.running_naive(VERSION_DIR, body, tmp_path / "naive.log") as ref:
        assert ref.url.endswith("/classify")
        req = urllib.request.Request(ref.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = orjson.loads(r.read())
        assert ref.cpu_seconds() > 0 and ref.rss_bytes() > 0
    assert ref.process.poll() is not None  # stopped with its process group
    results = answer["results"]
    assert [r["id"] for r in results] == list(ids)
    # one ONNX Runtime call on the same decode code: the probabilities the model gives these crops
    config = load_config(VERSION_DIR)
    rows = np.stack([resize(decode_image(base64.b64decode(b)), config.input.height, config.input.width)
                     for b in pool.b64[:12]])  # fmt: skip
    sess = ort.InferenceSession(str(VERSION_DIR / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run([config.output_name], {config.input.name: normalize(rows, config.preprocess)})
    expected = calibrated_probabilities(np.asarray(logits, np.float32), config.temperature)
    np.testing.assert_allclose([r["probabilities"] for r in results], expected, atol=1e-5)
    assert [r["label"] for r in results] == [config.classes[int(i)] for i in expected.argmax(axis=1)]


def test_torchserve_tools_are_found_as_absolute_paths_through_a_relative_path_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchserve starts in its own work folder: a tool found through PATH=.venv/bin must not stay relative
    (a bench run once reported TorchServe "unavailable: No such file or directory: '.venv/bin/torchserve'")."""
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    for tool in ("torchserve", "torch-model-archiver", "java"):
        (bindir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bindir / tool).chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "venv/bin")
    ts, mar = reference._tools()
    assert ts == str(bindir / "torchserve") and mar == str(bindir / "torch-model-archiver")
