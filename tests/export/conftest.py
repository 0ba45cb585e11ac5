"""One small trained checkpoint and one full export per test session (the export is the expensive part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from export.data import DEFAULT_REAL_DEV, LabelledSet, load_labelled
from export.pipeline import ExportOptions, ExportResult, export_checkpoint
from models.checkpoint import load_checkpoint, save_checkpoint
from models.net import BubbleNet, build_model
from models.synth import render_dataset
from service.core.modelconfig import InputSpec, PreprocessSpec
from service.core.taxonomy import CLASSES

requires_real_dev = pytest.mark.skipif(not DEFAULT_REAL_DEV.is_file(), reason=f"real-dev set not at {DEFAULT_REAL_DEV}")


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
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    if not DEFAULT_REAL_DEV.is_file():
        pytest.skip(f"real-dev set not at {DEFAULT_REAL_DEV}")
    repo = tmp_path_factory.mktemp("repository")
    # a lenient INT8 gate here, so the INT8 file exists to be tested; the gate itself has its own test
    opts = ExportOptions(benchmark=False, int8_max_binary_drop=1.0, threads=1, log=lambda _msg: None)
    result = export_checkpoint(checkpoint, repo, opts)
    model, meta = load_checkpoint(checkpoint)
    real = load_labelled(DEFAULT_REAL_DEV, tuple(meta["classes"]), InputSpec(), PreprocessSpec())
    return Exported(checkpoint, repo, result, model, real)
