"""models.evaluate on a real ONNX model with known answers and a real labelled PNG folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.calibrate import expected_calibration_error
from models.evaluate import evaluate_arrays, main
from models.labelled import LabelsError, read_labels
from service.core.modelconfig import ModelConfig, VariantSpec
from service.core.taxonomy import CLASSES, profile_maps

DARK, LIGHT, GREY = 30, 225, 120


def uniform(value: int, h: int = 32, w: int = 32, color: bool = False) -> np.ndarray:
    img = np.full((h, w), value, np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if color else img


# 11 crops: 8 right, 3 wrong (one mislabelled dark "empty", a light "cross", a dark "partial").
ROWS = [
    ("f1.png", uniform(DARK, 20, 20), "filled", 1, "s1"),
    ("f2.png", uniform(DARK, 40, 40), "filled", 1, "s1"),
    ("f3.png", uniform(DARK, 48, 64, color=True), "filled", 1, "s2"),
    ("f4.png", uniform(DARK), "filled", 1, "s2"),
    ("e1.png", uniform(LIGHT, 24, 24), "empty", 0, "s1"),
    ("e2.png", uniform(LIGHT, 90, 90), "empty", 0, "s2"),
    ("e3.png", uniform(LIGHT), "empty", 0, "s3"),
    ("m1.png", uniform(DARK), "empty", 0, "s3"),
    ("c1.png", uniform(LIGHT), "cross", 1, "s3"),
    ("p1.png", uniform(DARK), "partial", 1, "s3"),
    ("g1.png", uniform(GREY), "filled", 1, "s3"),
]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_cli_reports_known_figures(tta, make_model, write_labelled, known_logits, tmp_path, capsys) -> None:
    labels = write_labelled(ROWS)
    out = tmp_path / "eval"
    argv = ["--model", str(make_model()), "--labels", str(labels), "--json", "--out", str(out)]
    rc, stdout, _ = _run([*argv, "--tta" if tta else "--no-tta"], capsys)
    assert rc == 0
    r = json.loads(stdout)
    assert r["n"] == 11 and r["tta"] is tta
    assert r["accuracy"] == pytest.approx(8 / 11)
    assert r["binary_accuracy"] == pytest.approx(9 / 11)
    assert r["binary"] == {"marked_as_marked": 6, "unmarked_as_unmarked": 3, "false_marked": 1, "missed_marked": 1}
    pc = r["per_class"]
    assert set(pc) == set(CLASSES)  # every model class, support 0 included
    assert pc["empty"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4, "predicted": 4}
    assert pc["filled"]["precision"] == pytest.approx(5 / 7) and pc["filled"]["recall"] == 1.0
    assert pc["filled"]["support"] == 5 and pc["filled"]["predicted"] == 7
    assert pc["partial"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}
    assert pc["dot"]["support"] == 0 and pc["no_bubble"]["support"] == 0
    cm = np.array(r["confusion"]["rows_true_cols_pred"])
    expected = np.zeros((8, 8), int)
    i = {c: k for k, c in enumerate(CLASSES)}
    expected[i["empty"], i["empty"]] = 3
    expected[i["empty"], i["filled"]] = 1
    expected[i["filled"], i["filled"]] = 5
    expected[i["partial"], i["filled"]] = 1
    expected[i["cross"], i["empty"]] = 1
    np.testing.assert_array_equal(cm, expected)
    # confidences by hand: 10 crops near 1 (7 right), the grey one p_filled ~ 0.764 (right) -> 2 bins
    conf_sure, conf_grey = _softmax(known_logits(DARK)).max(), _softmax(known_logits(GREY)).max()
    assert 0.76 < conf_grey < 0.77
    assert r["ece"] == pytest.approx((10 * abs(0.7 - conf_sure) + abs(1 - conf_grey)) / 11, abs=1e-5)
    assert r["review_flagged"] == 1  # the grey crop: low confidence and small binary margin
    assert r["binary_truth"] == "csv binary column" and r["label_binary_conflicts"] == []
    for name in ("confusion.png", "misclassified.png", "reliability.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 50 and img.shape[1] > 50
    preds = (out / "predictions.csv").read_text().splitlines()
    assert len(preds) == 12 and preds[8].startswith("crops/m1.png,empty,filled,")
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == r["accuracy"]


def test_evaluate_cli_text_output_names_every_figure(make_model, write_labelled, tmp_path, capsys) -> None:
    rc, stdout, _ = _run(
        ["--model", str(make_model()), "--labels", str(write_labelled(ROWS)), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 0
    for needle in (
        "multi-class accuracy  0.7273",
        "binary accuracy       0.8182",
        "ECE (15 bins)",
        "review                flags 1 (9.09%), catches",
        "confusion (rows true, columns predicted)",
        "no_bubble",
    ):
        assert needle in stdout
    assert "filled        0.7143  1.0000  0.8333        5" in stdout


def test_evaluate_bare_onnx_with_metadata_matches_version_folder(make_model, write_labelled, tmp_path, capsys):
    labels = str(write_labelled(ROWS))
    _, a, _ = _run(["--model", str(make_model()), "--labels", labels, "--json", "--out", str(tmp_path / "a")], capsys)
    _, b, _ = _run(
        ["--model", str(make_model(bare=True)), "--labels", labels, "--json", "--out", str(tmp_path / "b")], capsys
    )
    ra, rb = json.loads(a), json.loads(b)
    for key in ("accuracy", "binary_accuracy", "per_class", "confusion", "ece", "review_flagged"):
        assert ra[key] == rb[key]


def test_evaluate_bare_onnx_without_metadata_fails_clearly(mean_onnx, write_labelled, capsys) -> None:
    rc, _, err = _run(["--model", str(mean_onnx), "--labels", str(write_labelled(ROWS))], capsys)
    assert rc == 2 and "'omr.config' metadata" in err and "version folder" in err


def test_evaluate_tampered_model_file_is_refused(make_model, write_labelled, capsys) -> None:
    folder = make_model()
    (folder / "model.onnx").write_bytes((folder / "model.onnx").read_bytes() + b"\0")
    rc, _, err = _run(["--model", str(folder), "--labels", str(write_labelled(ROWS))], capsys)
    assert rc == 2 and "sha256 mismatch" in err


def test_evaluate_temperature_from_config_changes_probabilities(
    make_model, write_labelled, known_logits, tmp_path, capsys
):
    labels = str(write_labelled(ROWS))
    _, s, _ = _run(
        ["--model", str(make_model(temperature=4.0)), "--labels", labels, "--json", "--out", str(tmp_path / "t")],
        capsys,
    )
    r = json.loads(s)
    sure, grey = _softmax(known_logits(DARK) / 4).max(), _softmax(known_logits(GREY) / 4).max()
    assert r["temperature"] == 4.0
    assert r["mean_confidence"] == pytest.approx((10 * sure + grey) / 11, abs=1e-5)
    assert r["accuracy"] == pytest.approx(8 / 11)  # dividing by T never changes the argmax


def test_evaluate_derives_binary_truth_and_lists_conflicts(make_model, write_labelled, tmp_path, capsys) -> None:
    rows = [
        ("a.png", uniform(DARK), "filled", 1, "s"),
        ("b.png", uniform(LIGHT), "empty", 1, "s"),
        ("c.png", uniform(LIGHT), "empty", None, "s"),
    ]
    _, s, _ = _run(
        ["--model", str(make_model()), "--labels", str(write_labelled(rows)), "--json", "--out", str(tmp_path / "d")],
        capsys,
    )
    r = json.loads(s)
    # truth is the column where given (b: marked, though labelled empty), else the label; b's column conflicts
    assert r["binary_truth"] == "csv binary column where given, else labels under profile 'ink'"
    assert r["binary_accuracy"] == pytest.approx(2 / 3) and r["binary"]["missed_marked"] == 1
    assert r["label_binary_conflicts"] == ["crops/b.png"]


def test_evaluate_bad_labels_are_named(make_model, write_labelled, capsys) -> None:
    labels = write_labelled([("a.png", uniform(DARK), "filled", 1, "s"), ("b.png", uniform(DARK), "smudge", 1, "s")])
    (labels.parent / "crops" / "junk.png").write_bytes(b"not an image")
    with labels.open("a") as f:
        f.write("crops/missing.png,empty,0,s\ncrops/junk.png,empty,0,s\n")
    rc, _, err = _run(["--model", str(make_model()), "--labels", str(labels)], capsys)
    assert rc == 2
    assert "line 3 (crops/b.png): label 'smudge' is not a model class" in err
    assert "line 4 (crops/missing.png): file not found" in err
    labels.write_text("crop_file,label\ncrops/junk.png,empty\n")
    rc, _, err = _run(["--model", str(make_model()), "--labels", str(labels)], capsys)
    assert rc == 2 and "crops/junk.png: undecodable" in err


def test_read_labels_missing_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,label\na.png,empty\n")
    with pytest.raises(LabelsError, match=r"missing column\(s\) \['crop_file'\]"):
        read_labels(tmp_path / "labels.csv")


def test_expected_calibration_error_matches_hand_count() -> None:
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.8, 0.2]])
    y = np.array([0, 1, 0])  # right (0.9), wrong (0.65), right (0.8): three separate bins
    assert expected_calibration_error(probs, y) == pytest.approx((0.1 + 0.65 + 0.2) / 3)
    assert expected_calibration_error(np.array([[1.0, 0.0]] * 4), np.zeros(4, int)) == 0.0


def test_evaluate_arrays_binary_is_the_served_decision_not_the_top_class() -> None:
    # top class "empty" but filled + partial mass = 0.6: the served rule decides marked (postprocess.decide)
    cfg = ModelConfig(
        name="x",
        version="1",
        classes=CLASSES,
        profiles=profile_maps(CLASSES),
        variants={"fp32": VariantSpec(file="m.onnx", precision="fp32", sha256="0" * 64)},
    )
    p = np.full(len(CLASSES), 1e-4)
    p[:3] = [0.4, 0.3, 0.3]
    r = evaluate_arrays(np.log(p)[None].astype(np.float32), np.array([1]), cfg)
    assert r["binary_accuracy"] == 1.0 and r["binary"]["marked_as_marked"] == 1


@pytest.mark.integration
def test_evaluate_predictions_equal_the_services_answers(make_model, write_labelled, live_server, tmp_path, capsys):
    """The same crops, sent as one request per sheet to a real server: every decision evaluate reports is the
    one the service serves (label, marked, marked_probability, review reasons)."""
    import base64
    import csv

    import httpx

    from service.app import create_app
    from service.settings import Settings

    folder = make_model()
    labels = write_labelled(ROWS)
    assert main(["--model", str(folder), "--labels", str(labels), "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    with (tmp_path / "ev" / "predictions.csv").open() as f:
        measured = {row["crop_file"]: row for row in csv.DictReader(f)}
    settings = Settings(model_repository=folder.parent.parent, default_model="tiny")
    served: dict[str, dict] = {}
    with live_server(create_app(settings)) as url:
        for sheet in sorted({r[4] for r in ROWS}):
            names = [f"crops/{r[0]}" for r in ROWS if r[4] == sheet]
            crops = [{"id": n, "image": base64.b64encode((labels.parent / n).read_bytes()).decode()} for n in names]
            resp = httpx.post(f"{url}/classify", json={"crops": crops, "sheet": sheet}, timeout=30)
            assert resp.status_code == 200, resp.text
            served.update({r["id"]: r for r in resp.json()["results"]})
    assert set(served) == set(measured)
    for name, m in measured.items():
        s = served[name]
        assert (s["label"], int(s["marked"]), ";".join(s["review_reasons"])) == (
            m["predicted"], int(m["marked"]), m["review_reasons"]), name  # fmt: skip
        assert s["marked_probability"] == pytest.approx(float(m["marked_probability"]), abs=1e-4)


def test_evaluate_arrays_applies_config_temperature_and_review(known_logits) -> None:
    cfg = ModelConfig(
        name="x",
        version="1",
        classes=CLASSES,
        profiles=profile_maps(CLASSES),
        temperature=2.0,
        variants={"fp32": VariantSpec(file="m.onnx", precision="fp32", sha256="0" * 64)},
    )
    logits = np.stack([known_logits(DARK), known_logits(GREY)]).astype(np.float32)
    r = evaluate_arrays(logits, np.array([1, 1]), cfg)
    assert r["accuracy"] == 1.0 and r["review_flagged"] == 1 and r["review_rate"] == 0.5
    p = [_softmax(known_logits(v) / 2.0) for v in (DARK, GREY)]
    assert r["nll"] == pytest.approx(-np.mean([np.log(q[1]) for q in p]), rel=1e-5)


def test_evaluate_batch_size_does_not_change_results(make_model, write_labelled, tmp_path, capsys) -> None:
    labels, model = str(write_labelled(ROWS)), str(make_model())
    reports = []
    for batch in ("1", "7", "256"):  # with 5 TTA views: 1 crop per call, 1 crop, 51 crops
        argv = [
            "--model",
            model,
            "--labels",
            labels,
            "--tta",
            "--json",
            "--batch",
            batch,
            "--out",
            str(tmp_path / batch),
        ]
        assert main(argv) == 0
        reports.append(json.loads(capsys.readouterr().out))
    for r in reports[1:]:
        for key in ("accuracy", "binary_accuracy", "confusion", "ece", "nll", "review_flagged"):
            assert r[key] == reports[0][key]
