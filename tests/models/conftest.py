"""Fixtures for the evaluation/calibration/cleaning tests: a real ONNX model whose answers are known, and
real labelled crop folders (PNG files written with OpenCV + a labels.csv).

The model maps a crop's mean intensity m (pixel/255) to logits: empty = 20 (m - 0.5), filled = -empty,
every other class -10. So a dark crop is "filled", a light one "empty", a mid-grey one uncertain; uniform
crops stay uniform under resizing and TTA shifts, so every figure of a test can be worked out by hand.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from service.core.modelconfig import (
    CONFIG_FILE,
    METADATA_KEY,
    ModelConfig,
    TTASpec,
    VariantSpec,
    sha256_file,
)
from service.core.taxonomy import CLASSES, profile_maps

GAIN = 20.0


class MeanToLogits(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))  # [N,1,H,W] -> [N]
        e = (m - 0.5) * GAIN
        other = torch.zeros_like(m) - 10.0
        return torch.stack([e, -e, *([other] * (len(CLASSES) - 2))], dim=1)  # [N, C]


def _known_logits(pixel: float) -> np.ndarray:
    e = (pixel / 255.0 - 0.5) * GAIN
    return np.array([e, -e, *([-10.0] * (len(CLASSES) - 2))], np.float64)


@pytest.fixture
def known_logits() -> Callable[[float], np.ndarray]:
    """known_logits(pixel) -> the logits the model gives a uniform crop of grey level `pixel` (0-255)."""
    return _known_logits


@pytest.fixture(scope="session")
def mean_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare ONNX file (no metadata) of `MeanToLogits`, dynamic batch, opset 18."""
    path = tmp_path_factory.mktemp("onnx") / "mean.onnx"
    torch.onnx.export(
        MeanToLogits(),
        (torch.zeros(2, 1, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    return path


@pytest.fixture
def make_model(mean_onnx: Path, tmp_path: Path) -> Callable[..., Path]:
    """make_model(temperature=1.0, tta_default=False, bare=False) -> a version folder or a bare .onnx with metadata."""

    made = 0

    def make(temperature: float = 1.0, tta_default: bool = False, bare: bool = False) -> Path:
        nonlocal made
        made += 1
        folder = tmp_path / f"repo{made}" / "tiny" / "1"
        folder.mkdir(parents=True)
        onnx_path = folder / "model.onnx"
        onnx_path.write_bytes(mean_onnx.read_bytes())
        config = ModelConfig(
            name="tiny",
            version="1",
            classes=CLASSES,
            profiles=profile_maps(CLASSES),
            temperature=temperature,
            tta=TTASpec(default=tta_default),
            variants={"fp32": VariantSpec(file="model.onnx", precision="fp32", sha256=sha256_file(onnx_path))},
        )
        if bare:
            proto = onnx.load(str(onnx_path))
            onnx.helper.set_model_props(proto, {METADATA_KEY: config.model_dump_json()})
            onnx.save(proto, str(onnx_path))
            return onnx_path
        (folder / CONFIG_FILE).write_text(config.model_dump_json(indent=1))
        return folder

    return make


Row = tuple[str, np.ndarray, str, int | None, str]  # (file name, image, label, binary, sheet_id)


@pytest.fixture
def write_labelled(tmp_path: Path) -> Callable[[Sequence[Row]], Path]:
    """write_labelled(rows) -> labels.csv in a fresh folder, crops as real PNGs under crops/."""

    def write(rows: Sequence[Row], name: str = "set") -> Path:
        root = tmp_path / name
        (root / "crops").mkdir(parents=True)
        csv_path = root / "labels.csv"
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["crop_file", "label", "binary", "sheet_id"])
            for fname, img, label, binary, sheet in rows:
                assert cv2.imwrite(str(root / "crops" / fname), img)
                w.writerow([f"crops/{fname}", label, "" if binary is None else binary, sheet])
        return csv_path

    return write
