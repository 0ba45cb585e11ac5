"""A tiny real training run lowers the loss and writes a loadable, calibrated checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.net import ARCHS, build_model, count_macs
from models.synth import render_sample
from models.train import TrainConfig, train
from service.core.taxonomy import CLASSES


@pytest.mark.slow
def test_train_tiny_run_lowers_loss_and_saves_checkpoint(tmp_path: Path, write_labelled) -> None:
    rng = np.random.default_rng(5)
    rows = [(f"{i}.png", render_sample(c, rng).image, c, None, f"sheet{i % 2}") for i, c in enumerate(CLASSES)]
    labels = write_labelled(rows)
    cfg = TrainConfig(
        out=str(tmp_path / "run"),
        arch="tiny",
        train_size=3072,
        val_size=512,
        epochs=3,
        batch_size=128,
        workers=1,
        threads=1,
        real_labels=str(labels),
    )
    ckpt = train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for png in ("curves.png", "confusion_synthetic.png", "confusion_real_dev.png"):
        assert cv2.imread(str(tmp_path / "run" / png)) is not None, png
    model, meta = load_checkpoint(ckpt)
    assert meta["arch"] == "tiny" and meta["config"]["train_size"] == 3072
    assert 0.2 < meta["temperature"] < 10
    assert 0.0 <= meta["metrics"]["real_dev"]["accuracy"] <= 1.0  # monitored, never trained on
    out = model(torch.rand(3, 1, 32, 32))
    assert out.shape == (3, len(meta["classes"]))


def test_count_macs_matches_hand_count_for_small() -> None:
    c1, c2, c3, c4 = ARCHS["small"].widths
    hand = c1 * 9 * 16 * 16 + c2 * c1 * 9 * 16 * 16 + c3 * c2 * 9 * 8 * 8 + c4 * c3 * 9 * 4 * 4 + c4 * 16 * 8
    assert count_macs(build_model("small", 8)) == hand


def test_build_model_logits_shape_for_every_arch() -> None:
    for arch in ARCHS:
        m = build_model(arch, 8).eval()
        assert m(torch.from_numpy(np.zeros((2, 1, 32, 32), np.float32))).shape == (2, 8)


def test_weight_ema_warms_up_then_lags_the_weights() -> None:
    from models.train import WeightEMA

    model = build_model("tiny", 8)
    ema = WeightEMA(model, decay=0.999)
    w0 = model.head[-1].bias.detach().clone()
    with torch.no_grad():
        model.head[-1].bias.add_(1.0)
    ema.update(model)  # warm-up: decay min(0.999, 2/11) -> mostly the new weights
    got = ema.module.head[-1].bias
    assert torch.allclose(got, w0 + 1.0 - 2 / 11, atol=1e-6)
    for _ in range(5000):
        ema.update(model)
    assert torch.allclose(ema.module.head[-1].bias, w0 + 1.0, atol=1e-3)
