"""Every figure of an evaluation, from calibrated probabilities and the service's own decisions (numpy only).

The binary prediction is the decision the service served (`Decision.marked`, after sheet context), never a
rule re-implemented here, so "accuracy measured" is "accuracy served".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models import plots
from models.calibrate import expected_calibration_error
from service.core.postprocess import Decision


def binary_counts(marked: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    return {
        "marked_as_marked": int((marked & truth).sum()),
        "unmarked_as_unmarked": int((~marked & ~truth).sum()),
        "false_marked": int((marked & ~truth).sum()),
        "missed_marked": int((~marked & truth).sum()),
    }


def review_figures(review: np.ndarray, marked: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    """How often review flags, and how many of the binary errors it catches (the errors a person would fix)."""
    wrong = marked != truth
    n = len(review)
    return {
        "review_flagged": int(review.sum()),
        "review_rate": float(review.mean()) if n else 0.0,
        "binary_errors": int(wrong.sum()),
        "binary_errors_flagged": int((wrong & review).sum()),
        "review_catch_rate": float((wrong & review).sum() / wrong.sum()) if wrong.any() else 1.0,
    }


def metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    decisions: Sequence[Decision],
    binary_true: np.ndarray,
    sure: np.ndarray | None = None,
) -> dict[str, object]:
    """All figures for true class indices [N], calibrated probabilities [N, C] and the served decisions.

    `binary_true`: the marked truth per crop; `sure`: crops labelled without doubt (no UNCERTAIN/BORDERLINE
    note), for the "sure" multi-class accuracy.
    """
    n, c = len(y), len(classes)
    pred = np.array([classes.index(d.label) for d in decisions], np.int64) if n else np.zeros(0, np.int64)
    marked = np.array([d.marked for d in decisions], bool)
    review = np.array([d.review for d in decisions], bool)
    truth = np.asarray(binary_true, bool)
    cm = plots.confusion_counts(y, pred, c)
    per_class = {}
    for k, name in enumerate(classes):
        tp, support, predicted = int(cm[k, k]), int(cm[k].sum()), int(cm[:, k].sum())
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": support, "predicted": predicted}
    present = [v["f1"] for v in per_class.values() if v["support"]]
    sure_mask = np.ones(n, bool) if sure is None else np.asarray(sure, bool)
    eps = 1e-12
    out: dict[str, object] = {
        "n": n,
        "accuracy": float((pred == y).mean()) if n else 0.0,
        "n_sure": int(sure_mask.sum()),
        "accuracy_sure": float((pred == y)[sure_mask].mean()) if sure_mask.any() else 0.0,
        "binary_accuracy": float((marked == truth).mean()) if n else 0.0,
        "binary": binary_counts(marked, truth),
        **review_figures(review, marked, truth),
        "decided_by_sheet": int(sum(getattr(d, "decided_by", "model") == "sheet" for d in decisions)),
        "macro_f1_present": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "confusion": {"classes": list(classes), "rows_true_cols_pred": cm.tolist()},
        "ece": expected_calibration_error(probs, y) if n else 0.0,
        "nll": float(-np.log(probs[np.arange(n), y] + eps).mean()) if n else 0.0,
        "mean_confidence": float(probs.max(1).mean()) if n else 0.0,
    }
    return out
