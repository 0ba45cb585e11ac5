"""The `make model` chain after training, end to end on a tiny model and a labelled folder of four sources:
finetune (folds + manifest) -> serving_fit -> export --serving -> evaluate --folds [--unseal]."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.folds import read_manifest
from models.net import build_model
from service.core.modelconfig import load_config
from service.core.taxonomy import CLASSES

#: sheets of three tuning sources and one sealed source (models.realdev.SEALED has formscanner)
SHEETS = ("amc-test_1", "amc-test_2", "quexf-form_1", "omrchecker-alice-page", "formscanner-T00001")


def _rows() -> list[tuple[str, np.ndarray, str, int, str]]:
    rng = np.random.default_rng(0)
    rows = []
    for s, sheet in enumerate(SHEETS):
        for k in range(6):
            dark = k % 2 == 0
            img = np.full((24, 24), 40 if dark else 220, np.uint8)
            img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
            rows.append((f"{s}_{k}.png", img, "filled" if dark else "empty", int(dark), sheet))
    return rows


@pytest.mark.slow
def test_model_chain_writes_folds_serving_config_and_reports(tmp_path: Path, write_labelled, capsys) -> None:
    from export.__main__ import main as export_main
    from models.evaluate import main as evaluate_main
    from models.finetune import main as finetune_main
    from models.serving_fit import main as fit_main

    torch.manual_seed(0)
    base = tmp_path / "base.pt"
    save_checkpoint(base, build_model("tiny", len(CLASSES)), "tiny", list(CLASSES))
    labels = write_labelled(_rows())
    ft = tmp_path / "ft"
    finetune_main(["--base", str(base), "--out", str(ft), "--real-labels", str(labels), "--synthetic-size", "256",
                   "--steps", "5", "--batch-size", "32", "--threads", "1", "--workers", "1"])  # fmt: skip
    folds, extra = read_manifest(ft / "folds")
    assert {f.fold.name for f in folds} == {"amc", "quexf", "omrchecker-alice", "sealed"}
    sealed = next(f.fold for f in folds if f.fold.sealed)
    assert sealed.held_out == ("formscanner",) and "formscanner" not in sealed.trained_on
    assert extra["classes"] == list(CLASSES) and extra["temperature"] > 0

    assert fit_main(["--folds", str(ft / "folds"), "--labels", str(labels), "--out", str(ft / "serving.json")]) == 0
    serving = json.loads((ft / "serving.json").read_text())
    assert serving["evidence"]["n"] == 24  # the four tuning sheets' crops; the sealed sheet is never read
    assert "formscanner" not in serving["evidence"]["sources"]

    repo = tmp_path / "repo"
    argv = [str(ft / "best.pt"), "--out", str(repo), "--serving", str(ft / "serving.json"), "--variants", "fp32",
            "--no-benchmark", "--real-dev", str(labels)]  # fmt: skip
    assert export_main(argv) == 0
    cfg = load_config(repo / "omr-bubble" / "1")
    assert cfg.tta.mode == serving["tta"]["mode"] and cfg.sheet.enabled == serving["sheet"]["enabled"]
    assert cfg.review.min_confidence == serving["review"]["min_confidence"]
    assert cfg.training["serving_evidence"] == serving["evidence"]
    capsys.readouterr()

    model = str(repo / "omr-bubble" / "1")
    assert evaluate_main(["--model", model, "--labels", str(labels), "--folds", str(ft / "folds"), "--json",
                          "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    reports = json.loads(capsys.readouterr().out)
    assert set(reports) == {"bundled", "loso"}  # sealed only with --unseal
    assert reports["loso"]["n"] == 24 and set(reports["loso"]["per_source"]) == {"amc", "quexf", "omrchecker-alice"}
    assert evaluate_main(["--model", model, "--labels", str(labels), "--folds", str(ft / "folds"), "--json",
                          "--unseal", "--out", str(tmp_path / "ev2")]) == 0  # fmt: skip
    reports = json.loads(capsys.readouterr().out)
    assert reports["sealed"]["n"] == 6 and reports["sealed"]["sources"] == ["formscanner"]
    for key in ("accuracy", "accuracy_sure", "binary_accuracy", "review_rate", "review_catch_rate", "ece"):
        assert key in reports["sealed"]

    from models.clean import main as clean_main

    assert clean_main(["--model", model, "--labels", str(labels), "--folds", str(ft / "folds"), "--top", "30",
                       "--out", str(tmp_path / "clean")]) == 0  # fmt: skip
    ranked = (tmp_path / "clean" / "suspects.csv").read_text()
    assert "crops/4_" not in ranked  # the sealed sheet (index 4 in SHEETS) is never ranked out of fold
    assert ranked.count("crops/0_") == 6  # every tuning crop is ranked (top 30 >= 24)
