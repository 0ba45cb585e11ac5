"""INT8 static QDQ: agreement with fp32 on real-dev, the real-dev binary gate, calibration inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from export import parity
from export.data import calibration_crops
from export.pipeline import ExportOptions, export_checkpoint
from service.core.modelconfig import InputSpec, PreprocessSpec, load_config
from service.core.postprocess import calibrated_probabilities


def _marked(logits: np.ndarray, config) -> np.ndarray:
    probs = calibrated_probabilities(logits, config.temperature)
    return probs[:, np.asarray(config.marked_mask("ink"))].sum(1) >= 0.5


def test_int8_agrees_with_fp32_on_real_dev(exported) -> None:
    config = load_config(exported.version_dir)
    x = exported.real.x
    (fp32,) = parity.session(str(exported.version_dir / "model.onnx")).run(["logits"], {"input": x})
    (int8,) = parity.session(str(exported.version_dir / "model.int8.onnx")).run(["logits"], {"input": x})
    assert (_marked(int8, config) == _marked(fp32, config)).mean() >= 0.97  # the binary decision the user sees
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9  # a tiny, briefly trained model: many near-ties
    rec = config.variants["int8"]
    assert float(rec.parity["real_argmax_agreement"]) >= 0.95
    assert rec.build["format"] == "QDQ" and rec.build["calibration_method"] in ("MinMax", "Percentile")


def test_int8_is_static_qdq_not_dynamic(exported) -> None:
    ops = {n.op_type for n in onnx.load(exported.version_dir / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "DynamicQuantizeLinear" not in ops and "ConvInteger" not in ops


def test_int8_not_offered_when_binary_accuracy_drops(checkpoint, synthetic_labels: Path, tmp_path: Path) -> None:
    # a negative allowance: any INT8 fails the gate, exactly as one that lost > 0.1 point would
    opts = ExportOptions(
        variants=("fp32", "int8"),
        real_dev=synthetic_labels,
        benchmark=False,
        int8_max_binary_drop=-1.0,
        threads=1,
        log=lambda _m: None,
    )
    result = export_checkpoint(checkpoint, tmp_path, opts)
    assert "int8" not in result.config.variants
    assert "real-dev binary accuracy" in result.config.rejected_variants["int8"]
    assert not (result.version_dir / "model.int8.onnx").exists()
    assert load_config(result.version_dir).rejected_variants == result.config.rejected_variants


def test_calibration_reads_a_folder_of_crops(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), rng.integers(0, 256, (40 + i, 40 + i), np.uint8))
    x, source = calibration_crops(3, 0, InputSpec(), PreprocessSpec(), tmp_path)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert str(tmp_path) in source


def test_calibration_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no image files"):
        calibration_crops(3, 0, InputSpec(), PreprocessSpec(), tmp_path)
