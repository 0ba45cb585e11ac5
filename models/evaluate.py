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
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.eval_report import format_report, write_artifacts
from models.labelled import (
    LabelledCrop,
    LabelsError,
    binary_truth,
    decode_crops,
    label_binary_conflicts,
    read_labels,
)
from models.scoring import metrics
from service.core.context import combine_views, crop_stats, decide_by_sheet
from service.core.modelconfig import METADATA_KEY, ModelArtifactError, ModelConfig, load_config, verified_model_path
from service.core.postprocess import Decision, calibrated_probabilities, decide
from service.core.preprocess import normalize, prepare
from service.core.tta import expand

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
    model: OnnxModel,
    crops: Sequence[np.ndarray],
    tta: bool,
    profile: str,
    batch_rows: int = 256,
    sheets: Sequence[str | None] | None = None,
    config: ModelConfig | None = None,
) -> Predictions:
    """Decoded uint8 crops -> calibrated probabilities and the service's decisions, each sheet's crops decided
    together as one request (sheet context included). `config` overrides the model's own (fold models are
    bare ONNX files served under the bundled model's config)."""
    cfg = config or model.config
    views = tuple(cfg.tta.views) if tta else ("identity",)
    per_chunk = max(1, batch_rows // len(views))  # a batch counts rows = crops x views, as the service does
    x = prepare(crops, cfg.input) if len(crops) else np.zeros((0, cfg.input.height, cfg.input.width), np.uint8)
    view_probs = []
    for start in range(0, len(x), per_chunk):
        chunk = x[start : start + per_chunk]  # uint8 [n, H, W]
        rows = expand(chunk, views) if tta else chunk  # [n*V, H, W], view-major per crop
        feed = normalize(rows, cfg.preprocess, cfg.input.dtype)  # [n*V, 1, H, W]
        (logits,) = model.session.run([cfg.output_name], {cfg.input.name: feed})
        probs = calibrated_probabilities(np.asarray(logits, np.float32), cfg.temperature)  # [n*V, C]
        view_probs.append(probs.reshape(len(chunk), len(views), -1))
    vp = np.concatenate(view_probs) if view_probs else np.zeros((0, len(views), len(cfg.classes)), np.float32)
    mean, agree = combine_views(vp, cfg, views)
    stats = crop_stats(x)  # [N, k] on the identity-view rows, as the service computes them in its decode pass
    sizes = np.array([c.shape[:2] for c in crops], np.float64).reshape(len(x), 2)
    # one request per sheet, as an engine sends them; a crop without a sheet id is a request of its own
    by_sheet = [None] * len(x) if sheets is None else list(sheets)
    decisions = decide_by_sheet(mean, stats, cfg, profile, by_sheet, agree if tta else None, sizes)
    return Predictions(mean, vp, agree if tta else None, decisions)


def evaluate_arrays(
    logits: np.ndarray,
    y: np.ndarray,
    config: ModelConfig,
    profile: str | None = None,
    binary_true: np.ndarray | None = None,
    stats: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    sheets: Sequence[str | None] | None = None,
) -> dict[str, object]:
    """Metrics for raw logits [N, C] under a model config (its temperature, profile, review and sheet rules).

    With `sheets` (and the rows' `crop_stats` and native `sizes`), each sheet is decided as one request, with
    its sheet context, exactly as `predict` and the service do; without, each row is a request of its own."""
    prof = profile or config.default_profile
    probs = calibrated_probabilities(logits, config.temperature)
    if sheets is None:
        decisions = decide(probs, config, prof)
    else:
        decisions = decide_by_sheet(probs, stats, config, prof, sheets, None, sizes)
    truth = np.asarray(config.marked_mask(prof), bool)[y] if binary_true is None else np.asarray(binary_true, bool)
    return metrics(y, probs, config.classes, decisions, truth)


def is_sure(item: LabelledCrop) -> bool:
    """Labelled without doubt: the labeller's notes flag neither UNCERTAIN nor BORDERLINE."""
    notes = item.extra.get("notes", "").upper()
    return "UNCERTAIN" not in notes and "BORDERLINE" not in notes


def score(
    items: Sequence[LabelledCrop], pred: Predictions, cfg: ModelConfig, profile: str
) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    """The metrics of served predictions against the labels (+ the true classes and the binary truth)."""
    y = np.array([cfg.classes.index(it.label) for it in items], np.int64)
    truth, source = binary_truth(items, cfg, profile)
    sure = np.array([is_sure(it) for it in items], bool)
    report = metrics(y, pred.probs, cfg.classes, pred.decisions, truth, sure)
    report["binary_truth"] = source
    return report, y, truth


def evaluate(
    model: OnnxModel,
    items: Sequence[LabelledCrop],
    tta: bool,
    profile: str,
    out: Path | None,
    batch_rows: int = 256,
    config: ModelConfig | None = None,
) -> dict[str, object]:
    """Every crop through the service's path, each sheet's crops as one request; figures and artifacts."""
    cfg = config or model.config
    crops = decode_crops(items)
    pred = predict(model, crops, tta, profile, batch_rows, [it.sheet_id for it in items], cfg)
    report, y, truth = score(items, pred, cfg, profile)
    report.update(
        model=f"{cfg.name}/{cfg.version}",
        onnx=str(model.path),
        temperature=cfg.temperature,
        tta=tta,
        views=list(cfg.tta.views) if tta else ["identity"],
        profile=profile,
        label_binary_conflicts=label_binary_conflicts(items, cfg),
    )
    if out is not None:
        report["artifacts"] = write_artifacts(out, items, crops, pred, y, truth, report)
    return report


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
    ap.add_argument(
        "--folds", type=Path, default=None, help="models.finetune's fold models (folds.json): add leave-one-source-out"
    )
    ap.add_argument("--unseal", action="store_true", help="with --folds: also score the sealed sources (final only)")
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
        reports = {"bundled": evaluate(model, items, tta, profile, out, args.batch)}
        if args.folds is not None:
            reports.update(_fold_reports(args.folds, items, model, tta, profile, args.unseal, out))
    except (LabelsError, ModelArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports["bundled"]))
    else:
        titles = {"loso": "leave-one-source-out (tuning sources; each predicted by a fold that never saw it)",
                  "sealed": "sealed sources (never tuned on; predicted by the model fine-tuned on all tuning sources)",
                  "bundled": "bundled model on every crop (trained on them: NOT an estimate)"}  # fmt: skip
        print("\n\n".join(format_report(r, titles[k] if len(reports) > 1 else None) for k, r in reports.items()))
    return 0


def _fold_reports(folds: Path, items, model: OnnxModel, tta: bool, profile: str, unseal: bool, out: Path) -> dict:
    from models import loso  # the fold machinery imports this module

    crops = decode_crops(items)
    base = {"model": f"{model.config.name}/{model.config.version} recipe", "onnx": str(folds),
            "temperature": model.config.temperature, "tta": tta, "profile": profile}  # fmt: skip
    found: dict[str, dict[str, object]] = {}
    for key, sealed in (("loso", False), ("sealed", True)) if unseal else (("loso", False),):
        rep, oof = loso.report(folds, items, crops, model.config, tta, profile, sealed)
        rep.update(base)
        held = [items[i] for i in oof.index]
        y = np.array([model.config.classes.index(it.label) for it in held], np.int64)
        truth, _ = binary_truth(held, model.config, profile)
        rep["artifacts"] = write_artifacts(out / key, held, [crops[i] for i in oof.index], oof.pred, y, truth, rep)
        found[key] = rep
    return found


if __name__ == "__main__":
    sys.exit(main())
