"""Question-level evaluation: which labelled questions are complete, the figures of `question_report`, and the
CLI end to end on real PNGs with a model whose answers are known (excluded sources are never decoded)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models import questions_eval as qe
from models.labelled import LabelledCrop


def item(sheet: str, field: str, option: str, selection: str = "all") -> LabelledCrop:
    notes = f"field={field} option={option}; shape=bubble; selection={selection}; darkness=0.1"
    return LabelledCrop(Path("x.png"), f"crops/{sheet}_{field}_{option}.png", "empty", False, sheet, {"notes": notes})


def test_parse_field_reads_notes_with_spaces_and_unknowns() -> None:
    assert qe.parse_field("blurry; field=How clean was it? option=C; shape=bubble") == ("How clean was it?", "C")
    assert qe.parse_field("pen X; field=? option=?; shape=square-checkbox") is None
    assert qe.parse_field("no field here") is None


def test_group_questions_keeps_complete_questions_only() -> None:
    items = [item("full", "q1", o) for o in "ABC"] + [item("full", "q2", o) for o in "AB"]
    # a sampled sheet: 10 fields of family q#, options A-D seen over the sheet; only q3 has all four
    for k in range(1, 11):
        opts = "ABCD" if k == 3 else "AB" if k % 2 else "CD"
        items += [item("sampled", f"q{k}", o, "random-empty-sample") for o in opts]
    # a small family (2 fields) whose union looks complete but is only what the sample caught
    items += [item("sampled", f"roll{k}", o, "random-empty-sample") for k in (1, 2) for o in "05"]
    items += [item("full", "dup", "A"), item("full", "dup", "A")]  # one option twice: not a clean question
    items.append(LabelledCrop(Path("x.png"), "crops/q.png", "cross", True, "full", {"notes": "field=? option=?"}))
    got = [(q.sheet_id, q.field, q.options) for q in qe.group_questions(items)]
    assert got == [("full", "q1", ("A", "B", "C")), ("full", "q2", ("A", "B")), ("sampled", "q3", tuple("ABCD"))]


def _row(truth_status, truth_marked, status, marked, review, decided_by="crops", crop_right=True) -> dict:
    return {"sheet_id": "s", "question": f"q{truth_status}{status}{marked}", "truth_status": truth_status,
            "truth_marked": truth_marked, "status": status, "marked": marked, "review": review,
            "decided_by": decided_by, "right": truth_status == status and truth_marked == marked,
            "crop_right": crop_right}  # fmt: skip


def test_question_report_counts_right_flagged_and_detection() -> None:
    rows = [
        _row("answered", ["A"], "answered", ["A"], False),
        _row("answered", ["B"], "answered", ["B"], False, "context", crop_right=False),
        _row("blank", [], "blank", [], False),
        _row("blank", [], "ambiguous", [], True, crop_right=False),
        _row("multiple", ["A", "C"], "multiple", ["A", "C"], False),
        _row("answered", ["C"], "answered", ["A"], False, crop_right=False),  # wrong, not flagged
    ]
    r = qe.question_report(rows)
    assert (r["questions"], r["accuracy"], r["review_rate"]) == (6, 4 / 6, 1 / 6)
    assert r["right_or_flagged"] == 5 / 6 and r["wrong_unflagged"] == ["s/qansweredanswered['A']"]
    assert r["crop_reading_accuracy"] == 3 / 6 and r["context_decisions"] == 1
    assert r["blank"] == {"support": 2, "predicted": 1, "recall": 0.5, "precision": 1.0}
    assert r["multiple"] == {"support": 1, "predicted": 1, "recall": 1.0, "precision": 1.0}
    assert r["status_confusion_truth_pred"]["blank"] == {"blank": 1, "ambiguous": 1}


LIGHT, DARK, FAINT = 255, 0, 1000  # the known model: empty / filled / a weak mark (drawn below)


def _crop(level: int) -> np.ndarray:
    """Uniform grey, or for FAINT a grey disc (45) on white paper: p(marked) about 0.14 under the known model,
    and clearly darker inside than its paper, as the question layer's appearance check wants."""
    if level != FAINT:
        return np.full((24, 24), level, np.uint8)
    img = np.full((24, 24), 255, np.uint8)
    cv2.circle(img, (12, 12), 10, 45, -1)
    return img


def _write_set(root: Path, rows: list[tuple[str, str, str, int, int, str]]) -> Path:
    """rows: (sheet, field, option, grey level or -1 for a corrupt file, binary truth, selection)."""
    (root / "crops").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["crop_file", "label", "binary", "sheet_id", "notes"])
        for k, (sheet, field, option, grey, binary, selection) in enumerate(rows):
            name = f"crops/{k:03d}.png"
            if grey < 0:
                (root / name).write_bytes(b"not a png")
            else:
                assert cv2.imwrite(str(root / name), _crop(grey))
            label = "filled" if binary else "empty"
            w.writerow([name, label, binary, sheet, f"field={field} option={option}; selection={selection}"])
    return root / "labels.csv"


def test_questions_eval_cli_end_to_end(make_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = [
        ("s1", "q1", "A", LIGHT, 0), ("s1", "q1", "B", DARK, 1), ("s1", "q1", "C", LIGHT, 0),
        ("s1", "q2", "A", LIGHT, 0), ("s1", "q2", "B", LIGHT, 0), ("s1", "q2", "C", LIGHT, 0),
        ("s1", "q3", "A", DARK, 1), ("s1", "q3", "B", DARK, 1), ("s1", "q3", "C", LIGHT, 0),
        ("s1", "q4", "A", LIGHT, 0), ("s1", "q4", "B", FAINT, 1), ("s1", "q4", "C", LIGHT, 0),
        ("s1", "q4", "D", LIGHT, 0),
        ("s1", "q5", "A", DARK, 0), ("s1", "q5", "B", LIGHT, 0), ("s1", "q5", "C", LIGHT, 1),  # read A, truth C
        ("s2", "q1", "A", DARK, 1), ("s2", "q1", "B", LIGHT, 0),  # sampled: incomplete, left out
        ("sealed-x", "q1", "A", -1, 1), ("sealed-x", "q1", "B", -1, 0),  # corrupt: must never be decoded
    ]  # fmt: skip
    rows = [(*r, "random-empty-sample" if r[0] == "s2" else "all") for r in q]
    labels = _write_set(tmp_path / "set", rows)
    model = make_model()
    out = tmp_path / "out"
    argv = ["--model", str(model), "--labels", str(labels), "--exclude-sources", "sealed-", "--json", "--out", str(out)]
    assert qe.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["questions"], r["sheets"], r["accuracy"]) == (5, 1, 4 / 5)
    assert r["wrong_unflagged"] == ["s1/q5"]
    saved = {row["question"]: row for row in json.loads((out / "questions.json").read_text())["rows"]}
    q4 = saved["q4"]  # the weak mark: found by the sheet context (its crop then reads marked) or by the question's
    assert (q4["status"], q4["marked"]) == ("answered", ["B"])
    assert q4["review"] and r["review_rate"] == 1 / 5  # context answer or a weak (sheet-moved) mark: flagged
    assert q4["crop_right"] == (q4["decided_by"] == "crops") and r["context_decisions"] == int(not q4["crop_right"])
    assert r["crop_reading_accuracy"] == (4 if q4["crop_right"] else 3) / 5
    assert (saved["q3"]["status"], saved["q2"]["status"]) == ("multiple", "blank")
    # without the exclusion the sealed sheet is read, and its corrupt crops are an error (exit 2)
    assert qe.main(["--model", str(model), "--labels", str(labels), "--exclude-sources", ""]) == 2
    assert "cannot be decoded" in capsys.readouterr().err


def test_questions_eval_out_of_fold_matches_the_same_model(make_model, mean_onnx, tmp_path, capsys) -> None:
    """--folds: each source predicted by its fold's ONNX file; a fold file equal to the model gives its figures."""
    from models.folds import Fold, write_manifest

    rows = [("s1", "q1", o, g, int(g == DARK), "all") for o, g in zip("ABC", (LIGHT, DARK, LIGHT), strict=True)]
    rows += [
        ("s1", "q2", o, g, int(g == FAINT), "all") for o, g in zip("ABCD", (LIGHT, FAINT, LIGHT, LIGHT), strict=True)
    ]
    labels = _write_set(tmp_path / "set", rows)
    model = make_model()
    folds = tmp_path / "folds"
    folds.mkdir()
    (folds / "s.onnx").write_bytes(mean_onnx.read_bytes())
    write_manifest(folds, [Fold("s", ("s",), ("other",))], {"s": "s.onnx"}, {})
    base = ["--model", str(model), "--labels", str(labels), "--json"]
    assert qe.main(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert qe.main([*base, "--folds", str(folds)]) == 0
    oof = json.loads(capsys.readouterr().out)
    assert oof["predictions"].startswith("out of fold") and "NOT an estimate" in plain["predictions"]
    keys = ("questions", "accuracy", "review_rate", "wrong_unflagged", "status_confusion_truth_pred")
    assert {k: oof[k] for k in keys} == {k: plain[k] for k in keys} and oof["questions"] == 2
    assert qe.main([*base, "--sealed"]) == 2  # the sealed fold needs --folds and the sealed sources unexcluded
