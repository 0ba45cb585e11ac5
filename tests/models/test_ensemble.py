"""Ensembles: members combined from checkpoints, served as one graph whose softmax is the ensemble posterior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.torch_onnx import to_onnx
from models.checkpoint import load_checkpoint, save_checkpoint
from models.ensemble import combine
from models.finetune import FinetuneConfig, apply_prior, finetune
from models.net import BubbleNet, Ensemble, build_model, count_macs, parse_arch
from models.synth import render_dataset
from models.train import predict_logits

CLASSES = [str(i) for i in range(8)]


def _members(tmp_path: Path, n: int = 2) -> list[Path]:
    paths = []
    for seed in range(n):
        torch.manual_seed(seed)
        p = tmp_path / f"m{seed}.pt"
        save_checkpoint(p, build_model("tiny", 8), "tiny", CLASSES)
        paths.append(p)
    return paths


def test_parse_arch_reads_ensembles_and_refuses_unknown_names() -> None:
    assert parse_arch("small") == ("small", 1)
    assert parse_arch("tiny*3") == ("tiny", 3)
    for bad in ("huge", "small*0", "small*x", "huge*2"):
        with pytest.raises(ValueError, match="unknown arch"):
            parse_arch(bad)
    assert count_macs(build_model("tiny*3", 8)) == 3 * count_macs(build_model("tiny", 8))


def test_combined_checkpoint_outputs_the_mean_member_log_probability(tmp_path: Path) -> None:
    paths = _members(tmp_path)
    model, metas = combine(paths)
    assert [m["arch"] for m in metas] == ["tiny", "tiny"] and "state_dict" not in metas[0]
    x = torch.rand(5, 1, 32, 32)
    singles = [load_checkpoint(p)[0] for p in paths]
    expected = torch.stack([torch.log_softmax(m(x), 1) for m in singles]).mean(0)
    assert torch.allclose(model(x), expected, atol=1e-6)
    # round trip through the checkpoint format under the 'tiny*2' arch name
    save_checkpoint(tmp_path / "ens.pt", model, "tiny*2", CLASSES)
    again, meta = load_checkpoint(tmp_path / "ens.pt")
    assert isinstance(again, Ensemble) and meta["arch"] == "tiny*2"
    assert torch.allclose(again(x), expected, atol=1e-6)


def test_combine_refuses_mixed_architectures(tmp_path: Path) -> None:
    a = _members(tmp_path, 1)[0]
    b = tmp_path / "small.pt"
    save_checkpoint(b, build_model("small", 8), "small", CLASSES)
    with pytest.raises(ValueError, match="differ"):
        combine([a, b])


def test_prior_on_an_ensemble_shifts_its_posterior_like_on_one_model(tmp_path: Path) -> None:
    model, _ = combine(_members(tmp_path))
    x = torch.rand(6, 1, 32, 32)
    shift = np.linspace(-1.5, 1.5, 8).astype(np.float32)
    expected = torch.softmax(model(x) + torch.from_numpy(shift), 1)
    apply_prior(model, shift)
    assert torch.allclose(torch.softmax(model(x), 1), expected, atol=1e-5)


def test_ensemble_exports_to_onnx_with_matching_outputs(tmp_path: Path) -> None:
    model, _ = combine(_members(tmp_path, 3))
    proto = to_onnx(model, 32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((7, 1, 32, 32), dtype=np.float32)
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert np.allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


@pytest.mark.slow
def test_finetuning_an_ensemble_trains_every_member(tmp_path: Path) -> None:
    model, _ = combine(_members(tmp_path))
    base = tmp_path / "ens.pt"
    save_checkpoint(base, model, "tiny*2", CLASSES)
    syn = render_dataset(512, seed=3, workers=1)
    real_x = np.tile(np.eye(32, dtype=np.uint8) * 255, (64, 1, 1))
    real_y = np.full(64, 7, np.int64)
    cfg = FinetuneConfig(steps=60, batch_size=64, real_fraction=0.5, lr=3e-3, threads=1, workers=1)
    tuned = finetune(base, syn, real_x, real_y, cfg)
    assert isinstance(tuned, Ensemble)
    for member in tuned.members:
        assert isinstance(member, BubbleNet)
        assert (predict_logits(member, real_x).argmax(1) == 7).mean() > 0.9
