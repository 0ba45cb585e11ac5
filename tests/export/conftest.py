"""One small trained checkpoint and one full export per test session (the export is the expensive part).

The full export (`exported`) is checked on the real-dev set (`real_dev` fixture, tests/conftest.py: skips
without it, fails with CI=true). Tests about the export's mechanics (CLI, gates, reproducibility, --force) use
`synthetic_labels` instead, a labelled set written here, so they run on any clone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from export.data import LabelledSet, load_labelled
from export.pipeline import ExportOptions, ExportResult, export_checkpoint
from models.checkpoint import load_checkpoint, save_checkpoint
from models.net import BubbleNet, build_model
from models.synth import render_dataset
from service.core.modelconfig import InputSpec, PreprocessSpec
from service.core.taxonomy import CLASSES, PROFILES


def train_tiny(path: Path, n: int = 2048, steps: int = 300, seed: int = 0) -> Path:
    """A tiny BubbleNet trained briefly on synthetic crops: logits far from trivial, in a few seconds.

    One torch thread: on a busy 2-core CI machine, torch's spinning worker threads make it 5x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(path, n, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(path: Path, n: int, steps: int, seed: int) -> Path:
    torch.manual_seed(seed)
    x, y = render_dataset(n, seed=seed + 5, workers=1)
    model = build_model("tiny", len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x).unsqueeze(1).float() / 255.0, torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (128,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_checkpoint(path, model, "tiny", list(CLASSES), temperature=1.2, data="test: synthetic crops", metrics={})
    return path


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    repository: Path
    result: ExportResult
    model: BubbleNet
    real: LabelledSet

    @property
    def version_dir(self) -> Path:
        return self.result.version_dir

    def reference(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def synthetic_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labels.csv of 128 rendered crops (16 per class) as real PNGs, in the real-dev CSV format."""
    root = tmp_path_factory.mktemp("synthetic-labelled")
    (root / "crops").mkdir()
    x, y = render_dataset(128, seed=21, workers=1)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["crop_file", "label", "binary", "sheet_id"])
        for i, (img, k) in enumerate(zip(x, y, strict=True)):
            assert cv2.imwrite(str(root / "crops" / f"{i:04d}.png"), img)
            label = CLASSES[int(k)]
            w.writerow([f"crops/{i:04d}.png", label, int(label in PROFILES["ink"]), f"sheet{i // 16}"])
    return root / "labels.csv"


@pytest.fixture(scope="session")
def synthetic_export(checkpoint: Path, synthetic_labels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full export (every variant) checked on `synthetic_labels`: its version folder. For tests of the artifact
    itself (refusal of damaged copies), which need no real data."""
    opts = ExportOptions(
        real_dev=synthetic_labels, benchmark=False, int8_max_binary_drop=1.0, threads=1, log=lambda _m: None
    )
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("synthetic-repository"), opts).version_dir


@pytest.fixture(scope="session")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, real_dev: Path) -> Exported:
    repo = tmp_path_factory.mktemp("repository")
    # a lenient INT8 gate here, so the INT8 file exists to be tested; the gate itself has its own test
    opts = ExportOptions(real_dev=real_dev, benchmark=False, int8_max_binary_drop=1.0, threads=1, log=lambda _m: None)
    result = export_checkpoint(checkpoint, repo, opts)
    model, meta = load_checkpoint(checkpoint)
    real = load_labelled(real_dev, tuple(meta["classes"]), InputSpec(), PreprocessSpec())
    return Exported(checkpoint, repo, result, model, real)
