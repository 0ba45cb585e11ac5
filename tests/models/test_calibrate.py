"""Temperature scaling: the numpy fit recovers known temperatures; the CLI writes T into a real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.calibrate import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    main,
    nll,
    split_groups,
)
from models.checkpoint import load_checkpoint, save_checkpoint
from models.net import build_model
from service.core.taxonomy import CLASSES


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Labels drawn from softmax(logits / temperature): the temperature that calibrates `logits`."""
    z = logits / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5, 6.0])
def test_fit_temperature_recovers_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(int(true_t * 10))
    logits = rng.normal(size=(20_000, 8)) * 4.0
    labels = _sample(logits, true_t, rng)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # it is the NLL minimum: nudging T either way does not help
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 1.05), nll(logits, labels, t / 1.05))


def test_fit_temperature_lowers_ece_of_overconfident_logits() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(10_000, 8)) * 5.0
    labels = _sample(logits, 3.0, rng)  # logits are 3x too sharp
    r = calibration_report(logits, labels, fit_temperature(logits, labels))
    assert r["ece_after"] < r["ece_before"] / 3 and r["nll_after"] < r["nll_before"]


def test_fit_temperature_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="need logits"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, int))


def test_split_groups_keeps_groups_whole_and_both_sides_nonempty() -> None:
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"]
    fit, held = split_groups(groups, 0.5, seed=3)
    assert fit.any() and held.any() and not (fit & held).any()
    for g in set(groups):
        sides = {bool(f) for f, gg in zip(fit, groups, strict=True) if gg == g}
        assert len(sides) == 1
    again, _ = split_groups(groups, 0.5, seed=3)
    np.testing.assert_array_equal(fit, again)
    assert split_groups(groups, 0.99, seed=0)[1].any()  # at least one group held out


def _tiny_checkpoint(path: Path) -> Path:
    save_checkpoint(path, build_model("tiny", len(CLASSES)), "tiny", list(CLASSES), metrics={"note": "kept"})
    return path


def _crops(write_labelled, with_sheet: bool = True) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(24):
        label = CLASSES[k % 3]
        img = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
        rows.append((f"c{k}.png", img, label, None, f"sheet{k % 4}" if with_sheet else ""))
    return write_labelled(rows)


def test_calibrate_cli_writes_temperature_into_checkpoint(write_labelled, tmp_path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    rc = main(["--checkpoint", str(ckpt), "--labels", str(_crops(write_labelled)), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fit"]["groups"] == 2 and r["held_out"]["n"] == 12 and r["fit"]["n"] == 12
    _, meta = load_checkpoint(ckpt)
    assert meta["temperature"] == pytest.approx(r["temperature"]) and r["written"]
    assert meta["calibration"]["held_out"] == r["held_out"]
    assert meta["metrics"] == {"note": "kept"} and meta["arch"] == "tiny"


def test_calibrate_cli_dry_run_leaves_checkpoint(write_labelled, tmp_path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    before = ckpt.read_bytes()
    assert main(["--checkpoint", str(ckpt), "--labels", str(_crops(write_labelled)), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert ckpt.read_bytes() == before


def test_calibrate_cli_without_group_column_fails_clearly(write_labelled, tmp_path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "best.pt")
    labels = _crops(write_labelled, with_sheet=False)
    assert main(["--checkpoint", str(ckpt), "--labels", str(labels)]) == 2
    assert "--group-column ''" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--labels", str(labels), "--group-column", "", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fit"]["n"] == 12


def test_expected_calibration_error_is_zero_for_calibrated_bins() -> None:
    # 10 crops at confidence 0.8, 8 right: perfectly calibrated
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)
