"""Find likely label errors in a labelled crop set: rank crops by loss and disagreement, show the top ones.

    python -m models.clean --model models/repository/omr-bubble/1 --labels ../shared/data/real-dev/labels.csv
    python -m models.clean ... --folds runs/default-ft/folds   # out-of-fold loss: the crops never trained on

The model runs exactly as in `models.evaluate` (the service's decode/preprocess/TTA/calibration code), with
TTA on by default so that views can disagree. Each crop's suspicion score is its loss averaged over the TTA
views, -mean_v log p_v(label) under the calibrated probabilities: a crop the model contradicts confidently
scores high, and so does one where some views contradict the label, which a loss on the averaged
probabilities would dilute. Flags add the reasons: predicted != label, views disagree, the binary decision
contradicts the binary truth, and the CSV's `binary` column contradicting its own `label`.

Writes `suspects.csv` (every flagged crop plus the top N, ranked) and `suspects.png` (the top N, annotated).
A person then looks at the sheet and fixes the labels; nothing is changed automatically.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from models import plots
from models.evaluate import Predictions, load_model, predict
from models.labelled import LabelledCrop, LabelsError, binary_truth, decode_crops, read_labels
from service.core.modelconfig import ModelArtifactError, ModelConfig

EPS = 1e-7


@dataclass(frozen=True)
class Suspect:
    index: int  # row in the labels CSV (0-based, header excluded)
    item: LabelledCrop
    loss: float  # -mean over views of log p_view(label)
    predicted: str
    confidence: float
    p_label: float  # averaged calibrated probability of the labelled class
    views_off_label: float  # share of TTA views whose top class is not the label
    reasons: tuple[str, ...]


def rank(items: Sequence[LabelledCrop], pred: Predictions, config: ModelConfig, profile: str) -> list[Suspect]:
    """Every crop with its score and reasons, most suspicious first (ties: more views off-label first)."""
    y = np.array([config.classes.index(it.label) for it in items], np.int64)
    n = len(items)
    p_view = pred.view_probs[np.arange(n), :, y]  # [N, V] probability of the label in each view
    loss = -np.log(np.maximum(p_view, EPS)).mean(axis=1)
    off = (pred.view_probs.argmax(-1) != y[:, None]).mean(axis=1)
    truth, _ = binary_truth(items, config, profile)
    mapping = config.profiles[profile]
    out = []
    for i, (it, d) in enumerate(zip(items, pred.decisions, strict=True)):
        reasons = []
        if d.label != it.label:
            reasons.append("predicted_differs")
        if pred.agree is not None and not pred.agree[i]:
            reasons.append("views_disagree")
        if d.marked != truth[i]:
            reasons.append("binary_differs")
        if it.binary is not None and profile == "ink" and it.binary != mapping[it.label]:
            reasons.append("label_vs_binary_column")
        out.append(
            Suspect(
                i, it, float(loss[i]), d.label, d.confidence, float(pred.probs[i, y[i]]), float(off[i]), tuple(reasons)
            )
        )
    return sorted(out, key=lambda s: (-s.loss, -s.views_off_label, s.index))


def write_outputs(out: Path, ranked: Sequence[Suspect], crops: Sequence[np.ndarray], top: int, title: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    keep = {s.index for k, s in enumerate(ranked) if k < top or s.reasons}
    csv_path = out / "suspects.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "rank",
                "crop_file",
                "sheet_id",
                "label",
                "predicted",
                "confidence",
                "p_label",
                "loss",
                "views_off_label",
                "reasons",
            ]
        )
        for k, s in enumerate(ranked):
            if s.index in keep:
                w.writerow(
                    [
                        k + 1,
                        s.item.crop_file,
                        s.item.sheet_id or "",
                        s.item.label,
                        s.predicted,
                        f"{s.confidence:.4f}",
                        f"{s.p_label:.4f}",
                        f"{s.loss:.4f}",
                        f"{s.views_off_label:.2f}",
                        ";".join(s.reasons),
                    ]
                )
    tiles = []
    for k, s in enumerate(ranked[:top]):
        frame = plots.RED if "predicted_differs" in s.reasons else plots.ORANGE if s.reasons else plots.GREY
        tiles.append(
            plots.Tile(
                crops[s.index],
                (
                    f"#{k + 1} label: {s.item.label}",
                    f"pred: {s.predicted} {s.confidence:.2f}",
                    f"loss {s.loss:.2f} off {s.views_off_label:.1f}",
                    Path(s.item.crop_file).name[:18],
                ),
                frame,
            )
        )
    png = plots.write_png(out / "suspects.png", plots.crop_grid(tiles, title))
    return {"suspects_csv": str(csv_path), "suspects_png": str(png), "rows_written": len(keep)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model version folder or bare .onnx file")
    ap.add_argument("--labels", type=Path, required=True, help="labels CSV (crop_file, label[, binary, sheet_id])")
    ap.add_argument("--top", type=int, default=48, help="suspects shown on the contact sheet")
    ap.add_argument("--out", type=Path, default=Path("runs/clean"), help="folder for suspects.csv/.png")
    ap.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score over the config's TTA views (default on)",
    )
    ap.add_argument("--profile", default=None, help="binary reading (default: the config's default_profile)")
    ap.add_argument("--folds", type=Path, default=None,
                    help="models.finetune's fold models: rank by OUT-OF-FOLD loss (tuning sources only)")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        model = load_model(args.model)
        cfg = model.config
        profile = args.profile or cfg.default_profile
        if profile not in cfg.profiles:
            raise LabelsError(f"unknown profile {profile!r}; the model has {sorted(cfg.profiles)}")
        items = read_labels(args.labels, cfg.classes)
        crops = decode_crops(items)
    except (LabelsError, ModelArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.folds is not None:  # each crop scored by a model that never saw its source: the seed's cleaning loop
        from models.loso import out_of_fold

        oof = out_of_fold(args.folds, items, crops, cfg, args.tta, profile, sealed=False)
        rows = oof.index.tolist()
        ranked = [replace(s, index=rows[s.index]) for s in rank([items[i] for i in rows], oof.pred, cfg, profile)]
    else:
        ranked = rank(items, predict(model, crops, args.tta, profile), cfg, profile)
    flagged = sum(1 for s in ranked if s.reasons)
    title = (
        f"{cfg.name}/{cfg.version} on {args.labels.name}: top {min(args.top, len(ranked))} of {len(ranked)} "
        f"by loss ({flagged} flagged; red = predicted differs, orange = other flag)"
    )
    result = write_outputs(args.out, ranked, crops, args.top, title)
    print(f"{len(ranked)} crops, {flagged} flagged; {result['rows_written']} rows -> {result['suspects_csv']}")
    print(f"contact sheet -> {result['suspects_png']}")
    for k, s in enumerate(ranked[: min(10, args.top)]):
        print(
            f"{k + 1:>3} {s.loss:7.3f} {s.item.label:>9} -> {s.predicted:<9} {s.confidence:.2f} "
            f"{s.item.crop_file} {','.join(s.reasons)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
