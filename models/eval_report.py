"""Evaluation reports: the text table, and the artifacts a person looks at (confusion, misclassified crops).

confusion.png, misclassified.png (most confident errors first, red = the binary decision is wrong too),
reliability.png, predictions.csv (one row per crop, with the served decision) and metrics.json.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from models import plots
from models.calibrate import ECE_BINS, reliability

MAX_GRID = 96


PREDICTION_COLUMNS = "crop_file label predicted confidence marked_truth marked marked_probability review_reasons"


def write_artifacts(out: Path, items, crops, pred, y, truth, report) -> dict[str, str]:
    """confusion.png, misclassified.png (most confident errors first), reliability.png, predictions.csv, JSON."""
    classes, model = report["confusion"]["classes"], report["model"]
    top, conf = pred.probs.argmax(1), pred.probs.max(1)
    wrong = [i for i in np.argsort(-conf, kind="stable") if top[i] != y[i]]
    tiles = [
        plots.Tile(
            crops[i],
            (f"true: {items[i].label}", f"pred: {classes[top[i]]} {conf[i]:.2f}", Path(items[i].crop_file).name[:18]),
            plots.RED if pred.decisions[i].marked != truth[i] else plots.ORANGE,
        )
        for i in wrong[:MAX_GRID]
    ]
    title = f"{model}: {len(wrong)} misclassified of {len(y)} (showing {len(tiles)}; red = binary wrong too)"
    bins = reliability(conf, top == y, ECE_BINS)
    cm = np.array(report["confusion"]["rows_true_cols_pred"])
    paths = {
        "confusion_png": plots.write_png(out / "confusion.png", plots.confusion_image(cm, classes, model)),
        "misclassified_png": plots.write_png(out / "misclassified.png", plots.crop_grid(tiles, title)),
        "reliability_png": plots.write_png(
            out / "reliability.png", plots.reliability_image(*bins, f"{model}: ECE {report['ece']:.4f}")
        ),
        "predictions_csv": out / "predictions.csv",
        "metrics_json": out / "metrics.json",
    }
    with paths["predictions_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PREDICTION_COLUMNS.split())
        for it, d, t in zip(items, pred.decisions, truth, strict=True):
            row = (d.label, f"{d.confidence:.4f}", int(t), int(d.marked), f"{d.marked_probability:.4f}")
            w.writerow([it.crop_file, it.label, *row, ";".join(d.review_reasons)])
    result = {k: str(v) for k, v in paths.items()}
    paths["metrics_json"].write_text(json.dumps({**report, "artifacts": result}, indent=1))
    return result


def format_report(r: dict[str, object], title: str | None = None) -> str:
    b = r["binary"]
    lines = [f"== {title} ==" if title else "",
        f"model {r['model']}  T={r['temperature']:.3f}  tta={r['tta']}  profile={r['profile']}  crops={r['n']}",
        f"multi-class accuracy  {r['accuracy']:.4f}   sure-labelled only {r['accuracy_sure']:.4f} "
        f"({r['n_sure']} crops)",
        f"binary accuracy       {r['binary_accuracy']:.4f}  (truth: {r['binary_truth']}; missed marks "
        f"{b['missed_marked']}, false marks {b['false_marked']}; {r['decided_by_sheet']} decided by sheet context)",
        f"ECE ({ECE_BINS} bins)          {r['ece']:.4f}   NLL {r['nll']:.4f}",
        f"review                flags {r['review_flagged']} ({r['review_rate']:.2%}), catches "
        f"{r['binary_errors_flagged']} of {r['binary_errors']} binary errors ({r['review_catch_rate']:.0%})",
        "",
        f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]  # fmt: skip
    for name, m in r["per_class"].items():
        lines.append(f"{name:<10} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['support']:>8d}")
    classes = r["confusion"]["classes"]
    w = max(6, *(len(c) for c in classes)) + 1
    lines += ["", "confusion (rows true, columns predicted)", " " * w + "".join(f"{c[: w - 1]:>{w}}" for c in classes)]
    for name, row in zip(classes, r["confusion"]["rows_true_cols_pred"], strict=True):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{w}d}" for v in row))
    if r.get("per_source"):
        lines += ["", f"{'held-out source':<28} {'n':>5} {'multi':>7} {'binary':>7} {'missed':>6} {'false':>6} "
                  f"{'review':>7} {'by sheet':>8}"]  # fmt: skip
        for src, m in r["per_source"].items():
            lines.append(
                f"{src:<28} {m['n']:>5d} {m['accuracy']:>7.4f} {m['binary_accuracy']:>7.4f} "
                f"{m['binary']['missed_marked']:>6d} {m['binary']['false_marked']:>6d} {m['review_rate']:>7.2%} "
                f"{m['decided_by_sheet']:>8d}"
            )
    if r.get("label_binary_conflicts"):
        lines.append(f"\nlabel vs binary column conflicts: {r['label_binary_conflicts']}")
    for k, v in r.get("artifacts", {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines if title else lines[1:])
