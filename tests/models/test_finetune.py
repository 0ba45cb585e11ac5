"""Fine-tuning on real crops: sources group sheets of one origin; a tiny run moves the model toward them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.finetune import FinetuneConfig, finetune, source_of
from models.net import build_model
from models.synth import render_dataset
from models.train import predict_logits


def test_source_of_groups_numbered_sheets_of_one_origin() -> None:
    assert source_of("quexf-test_filled_1") == source_of("quexf-test_filled_2") == "quexf-test_filled"
    assert source_of("omrchecker-sample2-adrian_omr_2") == source_of("omrchecker-sample2-adrian_omr")
    assert source_of("omrchecker-dxuian-collegesheet") == "omrchecker-dxuian-collegesheet"
    assert source_of("omrchecker-UPSC-mock-angle-1") != source_of("omrchecker-dxuian-collegesheet")


@pytest.mark.slow
def test_finetune_fits_the_real_crops_it_is_given(tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    save_checkpoint(base, build_model("tiny", 8), "tiny", [str(i) for i in range(8)])
    syn = render_dataset(1024, seed=3, workers=1)
    # "real" crops: a pattern the synthetic data never shows, labelled class 7
    real_x = np.tile(np.eye(32, dtype=np.uint8) * 255, (64, 1, 1))
    real_y = np.full(64, 7, np.int64)
    cfg = FinetuneConfig(steps=60, batch_size=64, real_fraction=0.5, lr=3e-3, threads=1, workers=1)
    model = finetune(base, syn, real_x, real_y, cfg)
    assert (predict_logits(model, real_x).argmax(1) == 7).mean() > 0.9


def test_prior_log_ratio_is_zero_for_uniform_and_refuses_missing_classes() -> None:
    from models.finetune import prior_log_ratio

    classes = ["a", "b", "c"]
    assert np.allclose(prior_log_ratio("a=1,b=1,c=1", classes), 0)
    assert np.allclose(prior_log_ratio("", classes), 0)
    r = prior_log_ratio("a=2,b=1,c=1", classes)
    assert r[0] > 0 > r[1] and np.isclose(np.exp(r).sum(), 3)  # prior * C sums to C
    with pytest.raises(ValueError, match="exactly"):
        prior_log_ratio("a=1,b=1", classes)


def test_apply_prior_shifts_logits_by_the_log_ratio() -> None:
    from models.finetune import apply_prior

    model = build_model("tiny", 8).eval()
    x = torch.rand(4, 1, 32, 32)
    before = model(x).detach()
    shift = np.linspace(-1, 1, 8).astype(np.float32)
    apply_prior(model, shift)
    assert torch.allclose(model(x).detach() - before, torch.from_numpy(shift).expand(4, 8), atol=1e-5)
