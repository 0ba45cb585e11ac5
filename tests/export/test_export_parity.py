"""Parity of the written ONNX files against the PyTorch checkpoint, re-measured here (not read from config)."""

from __future__ import annotations

import numpy as np
import pytest

from export import parity
from export.data import random_inputs
from service.core.modelconfig import InputSpec

BATCHES = (1, 7, 64, 513)


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    return x[np.arange(n) % len(x)]


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("source", ["random", "real"])
def test_parity_fp32_holds_at_batch_size(exported, source: str, n: int) -> None:
    x = random_inputs(n, InputSpec(), seed=123) if source == "random" else _rows(exported.real.x, n)
    sess = parity.session(str(exported.version_dir / "model.onnx"))
    (got,) = sess.run(["logits"], {"input": x})
    want = exported.reference(x)
    assert got.shape == (n, 8)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("n", BATCHES)
def test_parity_fp16_holds_loosely_at_batch_size(exported, n: int) -> None:
    x = _rows(exported.real.x, n)
    sess = parity.session(str(exported.version_dir / "model.fp16.onnx"))
    assert sess.get_inputs()[0].type == "tensor(float)"  # keep_io_types: the service still feeds float32
    (got,) = sess.run(["logits"], {"input": x})
    want = exported.reference(x)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, float(np.abs(want).max()))
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99


def test_parity_recorded_in_config_covers_all_batch_sizes(exported) -> None:
    fp32 = exported.result.config.variants["fp32"].parity
    assert fp32["batch_sizes"] == list(BATCHES)
    assert fp32["passed"] == "yes"
    assert fp32["real_argmax_agreement"] == 1.0
    assert float(fp32["real_max_abs_diff"]) <= 1e-4


def test_check_fails_when_logits_drift(exported) -> None:
    sess = parity.session(str(exported.version_dir / "model.onnx"))

    def drifted(x: np.ndarray) -> np.ndarray:
        return exported.reference(x) + 1e-3

    result = parity.check(sess, drifted, {"real": exported.real.x}, parity.FP32)
    assert not result.passed
    assert any("real: max |diff|" in p for p in result.problems)


def test_check_fails_when_argmax_flips(exported) -> None:
    sess = parity.session(str(exported.version_dir / "model.onnx"))

    def flipped(x: np.ndarray) -> np.ndarray:
        return -exported.reference(x)

    tol = parity.Tolerance(atol=None, min_agreement=1.0)
    result = parity.check(sess, flipped, {"random": random_inputs(64, InputSpec())}, tol, batch_sizes=(7, 64))
    assert not result.passed
    assert any("argmax agreement" in p for p in result.problems)
