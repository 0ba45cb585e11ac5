"""Evaluate an exported ONNX model on a labelled crop folder, through the service's own code path.

    python -m models.evaluate --model models/repository/omr-bubble/1 --labels ../shared/data/real-dev/labels.csv
    python -m models.evaluate --model model.onnx --labels labels.csv --tta --json --out runs/eval

Every step a served crop goes through is the service's function, not a copy: `decode_image` on the file's
bytes, `prepare` + `normalize`, TTA `expand`/`reduce` with the config's views, `calibrated_probabilities`
with the config's temperature and `decide` under a binary profile. So the accuracy measured here is the
accuracy served. No torch: numpy, onnxruntime and OpenCV only. Exit status 2 on unusable input.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models import plots
from models.calibrate import ECE_BINS, expected_calibration_error, reliability
from models.labelled import (
    LabelledCrop,
    LabelsError,
    binary_truth,
    decode_crops,
    label_binary_conflicts,
    read_labels,
)
from service.core.modelconfig import METADATA_KEY, ModelArtifactError, ModelConfig, load_config, verified_model_path
from service.core.postprocess import Decision, calibrated_probabilities, decide
from service.core.preprocess import normalize, prepare
from service.core.tta import expand, reduce

MAX_GRID = 96


@dataclass(frozen=True)
class OnnxModel:
    config: ModelConfig
    session: ort.InferenceSession
    path: Path


def load_model(path: Path, variant: str | None = None, threads: int = 0) -> OnnxModel:
    """A version folder (config.json + verified ONNX file) or a bare .onnx carrying its config as metadata."""
    if path.is_dir():
        config = load_config(path)
        onnx_path = verified_model_path(path, config, variant)
    elif path.suffix == ".onnx" and path.is_file():
        onnx_path = path
        config = None
    else:
        raise ModelArtifactError(f"{path} is neither a model version folder nor an .onnx file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    if config is None:
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelArtifactError(
                f"{path} has no {METADATA_KEY!r} metadata (not written by the export helper); "
                "pass its version folder (with config.json) instead"
            )
        try:
            config = ModelConfig.model_validate(json.loads(raw))
        except ValueError as exc:
            raise ModelArtifactError(f"invalid {METADATA_KEY!r} metadata in {path}: {exc}") from exc
    return OnnxModel(config, session, onnx_path)


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # [N, C] calibrated, averaged over TTA views
    view_probs: np.ndarray  # [N, V, C] calibrated, per view
    agree: np.ndarray | None  # [N] TTA views agree on the label; None without TTA
    decisions: list[Decision]


def predict(
    model: OnnxModel, crops: Sequence[np.ndarray], tta: bool, profile: str, batch_rows: int = 256
) -> Predictions:
    """Decoded uint8 crops -> calibrated probabilities and the service's decisions, in batches of rows."""
    cfg = model.config
    views = tuple(cfg.tta.views) if tta else ("identity",)
    per_chunk = max(1, batch_rows // len(views))  # a batch counts rows = crops x views, as the service does
    view_probs = []
    for start in range(0, len(crops), per_chunk):
        x = prepare(crops[start : start + per_chunk], cfg.input)  # uint8 [n, H, W]
        rows = expand(x, views) if tta else x  # [n*V, H, W], view-major per crop
        feed = normalize(rows, cfg.preprocess, cfg.input.dtype)  # [n*V, 1, H, W]
        (logits,) = model.session.run([cfg.output_name], {cfg.input.name: feed})
        probs = calibrated_probabilities(np.asarray(logits, np.float32), cfg.temperature)  # [n*V, C]
        view_probs.append(probs.reshape(len(x), len(views), -1))
    vp = np.concatenate(view_probs) if view_probs else np.zeros((0, len(views), len(cfg.classes)), np.float32)
    mean, agree = reduce(vp.reshape(-1, vp.shape[-1]), len(views))
    return Predictions(mean, vp, agree if tta else None, decide(mean, cfg, profile, agree if tta else None))


def metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    marked_mask: Sequence[bool],
    binary_true: np.ndarray | None = None,
    review: np.ndarray | None = None,
) -> dict[str, object]:
    """All figures from calibrated probabilities [N, C] and true class indices [N] (numpy only).

    Binary prediction = sum of the marked classes' probabilities >= 0.5 (the rule of `postprocess.decide`);
    binary truth = `binary_true` if given, else the true class's marking under `marked_mask`.
    """
    mask = np.asarray(marked_mask, bool)
    n, c = len(y), len(classes)
    pred = probs.argmax(1)
    cm = plots.confusion_counts(y, pred, c)
    truth = mask[y] if binary_true is None else np.asarray(binary_true, bool)
    marked = probs[:, mask].sum(1) >= 0.5
    per_class = {}
    for k, name in enumerate(classes):
        tp, support, predicted = int(cm[k, k]), int(cm[k].sum()), int(cm[:, k].sum())
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": p, "recall": r, "f1": f1, "support": support, "predicted": predicted}
    present = [v["f1"] for v in per_class.values() if v["support"]]
    eps = 1e-12
    out: dict[str, object] = {
        "n": n,
        "accuracy": float((pred == y).mean()) if n else 0.0,
        "binary_accuracy": float((marked == truth).mean()) if n else 0.0,
        "binary": {
            "marked_as_marked": int((marked & truth).sum()),
            "unmarked_as_unmarked": int((~marked & ~truth).sum()),
            "false_marked": int((marked & ~truth).sum()),
            "missed_marked": int((~marked & truth).sum()),
        },
        "macro_f1_present": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "confusion": {"classes": list(classes), "rows_true_cols_pred": cm.tolist()},
        "ece": expected_calibration_error(probs, y),
        "nll": float(-np.log(probs[np.arange(n), y] + eps).mean()) if n else 0.0,
        "mean_confidence": float(probs.max(1).mean()) if n else 0.0,
    }
    if review is not None:
        out["review_flagged"] = int(np.asarray(review, bool).sum())
    return out


def evaluate_arrays(
    logits: np.ndarray,
    y: np.ndarray,
    config: ModelConfig,
    profile: str | None = None,
    binary_true: np.ndarray | None = None,
) -> dict[str, object]:
    """Metrics for raw logits [N, C] under a model config (its temperature, profile and review rules)."""
    prof = profile or config.default_profile
    probs = calibrated_probabilities(logits, config.temperature)
    review = np.array([d.review for d in decide(probs, config, prof)], bool)
    return metrics(y, probs, config.classes, config.marked_mask(prof), binary_true, review)


def evaluate(
    model: OnnxModel, items: Sequence[LabelledCrop], tta: bool, profile: str, out: Path | None, batch_rows: int = 256
) -> dict[str, object]:
    cfg = model.config
    crops = decode_crops(items)
    pred = predict(model, crops, tta, profile, batch_rows)
    y = np.array([cfg.classes.index(it.label) for it in items], np.int64)
    truth, source = binary_truth(items, cfg, profile)
    review = np.array([d.review for d in pred.decisions], bool)
    report = metrics(y, pred.probs, cfg.classes, cfg.marked_mask(profile), truth, review)
    report.update(
        model=f"{cfg.name}/{cfg.version}",
        onnx=str(model.path),
        temperature=cfg.temperature,
        tta=tta,
        views=list(cfg.tta.views) if tta else ["identity"],
        profile=profile,
        binary_truth=source,
        label_binary_conflicts=label_binary_conflicts(items, cfg),
    )
    if out is not None:
        report["artifacts"] = write_artifacts(out, items, crops, pred, y, truth, report)
    return report


PREDICTION_COLUMNS = "crop_file label predicted confidence marked_truth marked marked_probability review_reasons"


def write_artifacts(out: Path, items, crops, pred: Predictions, y, truth, report) -> dict[str, str]:
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


def format_report(r: dict[str, object]) -> str:
    b = r["binary"]
    lines = [
        f"model {r['model']}  T={r['temperature']:.3f}  tta={r['tta']}  profile={r['profile']}  crops={r['n']}",
        f"multi-class accuracy  {r['accuracy']:.4f}",
        f"binary accuracy       {r['binary_accuracy']:.4f}  (truth: {r['binary_truth']}; false marked "
        f"{b['false_marked']}, missed marks {b['missed_marked']})",
        f"ECE ({ECE_BINS} bins)          {r['ece']:.4f}   NLL {r['nll']:.4f}",
        f"flagged for review    {r['review_flagged']}",
        "",
        f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for name, m in r["per_class"].items():
        lines.append(f"{name:<10} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['support']:>8d}")
    classes = r["confusion"]["classes"]
    w = max(6, *(len(c) for c in classes)) + 1
    lines += ["", "confusion (rows true, columns predicted)", " " * w + "".join(f"{c[: w - 1]:>{w}}" for c in classes)]
    for name, row in zip(classes, r["confusion"]["rows_true_cols_pred"], strict=True):
        lines.append(f"{name:<{w}}" + "".join(f"{v:>{w}d}" for v in row))
    if r["label_binary_conflicts"]:
        lines.append(f"\nlabel vs binary column conflicts: {r['label_binary_conflicts']}")
    for k, v in r.get("artifacts", {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model version folder or bare .onnx file")
    ap.add_argument("--labels", type=Path, required=True, help="labels CSV (crop_file, label[, binary, sheet_id])")
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation with the config's views (default: the config's tta.default)",
    )
    ap.add_argument("--profile", default=None, help="binary reading (default: the config's default_profile)")
    ap.add_argument("--variant", default=None, help="ONNX variant of a version folder (default: its default)")
    ap.add_argument("--out", type=Path, default=None, help="folder for PNGs/CSV/JSON (default runs/evaluate/...)")
    ap.add_argument("--batch", type=int, default=256, help="rows (crops x views) per ONNX Runtime call")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    try:
        model = load_model(args.model, args.variant)
        cfg = model.config
        profile = args.profile or cfg.default_profile
        if profile not in cfg.profiles:
            raise LabelsError(f"unknown profile {profile!r}; the model has {sorted(cfg.profiles)}")
        items = read_labels(args.labels, cfg.classes)
        tta = cfg.tta.default if args.tta is None else args.tta
        out = args.out or Path("runs/evaluate") / f"{cfg.name}-{cfg.version}{'-tta' if tta else ''}"
        report = evaluate(model, items, tta, profile, out, args.batch)
    except (LabelsError, ModelArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
