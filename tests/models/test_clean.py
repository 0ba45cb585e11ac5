"""models.clean ranks a deliberately mislabelled crop first and flags TTA disagreement, on real PNGs."""

from __future__ import annotations

import csv

import cv2
import numpy as np

from models.clean import main

DARK, LIGHT = 30, 225


def _half_and_half() -> np.ndarray:
    """32x32, left half dark, right half light: mean exactly 0.5, so one-pixel shifts flip the answer."""
    img = np.full((32, 32), 255, np.uint8)
    img[:, :16] = 0
    return img


def _rows() -> list:
    rows = [(f"f{k}.png", np.full((30 + k, 30 + k), DARK, np.uint8), "filled", 1, "s1") for k in range(4)]
    rows += [(f"e{k}.png", np.full((40, 40), LIGHT, np.uint8), "empty", 0, "s2") for k in range(4)]
    rows.append(("wrong.png", np.full((36, 36), DARK, np.uint8), "empty", 0, "s2"))  # mislabelled
    rows.append(("half.png", _half_and_half(), "empty", 0, "s2"))
    rows.append(("conflict.png", np.full((40, 40), LIGHT, np.uint8), "empty", 1, "s2"))  # binary contradicts label
    return rows


def test_clean_ranks_mislabelled_crop_first(make_model, write_labelled, tmp_path, capsys) -> None:
    out = tmp_path / "clean"
    rc = main(["--model", str(make_model()), "--labels", str(write_labelled(_rows())), "--out", str(out), "--top", "3"])
    assert rc == 0
    assert "11 crops" in capsys.readouterr().out
    with (out / "suspects.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["crop_file"] == "crops/wrong.png" and rows[0]["rank"] == "1"
    assert rows[0]["label"] == "empty" and rows[0]["predicted"] == "filled"
    assert "predicted_differs" in rows[0]["reasons"] and float(rows[0]["loss"]) > 10
    by_file = {r["crop_file"]: r for r in rows}
    assert "views_disagree" in by_file["crops/half.png"]["reasons"]
    assert rows[1]["crop_file"] == "crops/half.png"  # second-highest loss: half its views contradict the label
    assert "label_vs_binary_column" in by_file["crops/conflict.png"]["reasons"]
    # top 3 plus every other flagged crop, nothing else
    assert set(by_file) == {"crops/wrong.png", "crops/half.png", "crops/conflict.png", rows[2]["crop_file"]}
    sheet = cv2.imread(str(out / "suspects.png"))
    assert sheet is not None and sheet.shape[1] >= 3 * 112


def test_clean_without_tta_has_no_view_disagreement(make_model, write_labelled, tmp_path, capsys) -> None:
    out = tmp_path / "clean"
    labels = str(write_labelled(_rows()))
    assert main(["--model", str(make_model()), "--labels", labels, "--out", str(out), "--no-tta"]) == 0
    capsys.readouterr()
    with (out / "suspects.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["crop_file"] == "crops/wrong.png"
    assert not any("views_disagree" in r["reasons"] for r in rows)


def test_clean_unknown_profile_is_refused(make_model, write_labelled, tmp_path, capsys) -> None:
    labels = str(write_labelled(_rows()))
    assert main(["--model", str(make_model()), "--labels", labels, "--out", str(tmp_path), "--profile", "x"]) == 2
    assert "unknown profile 'x'" in capsys.readouterr().err
