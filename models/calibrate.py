"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

    python -m models.calibrate --checkpoint runs/default/best.pt --labels ../shared/data/real-dev/labels.csv
    python -m models.calibrate --checkpoint runs/default/best.pt --synthetic 8000

T is fitted on one part of a validation set by minimising the negative log-likelihood, and NLL/ECE before
(T = 1) and after are reported on the *other* part, so the reported gain is not measured on the data it was
fitted to. A labelled real set is split by `sheet_id` (crops of one sheet look alike, so a crop-level split
would leak); synthetic crops are split at random. The fitted T is written into the checkpoint
(`temperature`, with the figures under `calibration`); export copies it into the model config, where the
service applies it. Dividing logits by T > 0 never changes the argmax, so accuracy is unchanged.

`fit_temperature` is numpy-only (training calls it); the CLI imports torch to get the checkpoint's logits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.labelled import LabelsError, decode_crops, read_labels
from service.core.modelconfig import PreprocessSpec
from service.core.postprocess import calibrated_probabilities
from service.core.preprocess import normalize, resize

T_BOUNDS = (0.05, 20.0)
ECE_BINS = 15


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS):
    """Equal-width bins (lo, hi] over [0, 1]: (count, accuracy, mean confidence) per bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    safe = np.maximum(counts, 1)
    acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) / safe
    conf = np.bincount(idx, weights=confidence.astype(float), minlength=n_bins) / safe
    return counts, acc, conf


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE on the max-class probability: sum over bins of |accuracy - confidence| x bin share."""
    if len(y) == 0:
        return 0.0
    counts, acc, conf = reliability(probs.max(1), probs.argmax(1) == y, n_bins)
    return float(np.sum(counts / len(y) * np.abs(acc - conf)))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T), in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-5
) -> float:
    """The T in `bounds` minimising NLL(softmax(logits / T)): golden-section search over log T.

    NLL is convex in 1/T (log-sum-exp of a linear function minus a linear term), hence unimodal in log T,
    so a bounded 1-D golden-section search finds the global minimum without gradients or torch.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need logits [N, C] and labels [N] with N > 0, got {logits.shape} and {labels.shape}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, previous: float | None = None
) -> dict[str, float]:
    """NLL, ECE (15 bins) and accuracy with T = 1 ("before"), with `temperature` ("after") and, if given,
    with the `previous` temperature (e.g. the one already in the checkpoint), on the given crops."""
    temps = {"before": 1.0, "after": temperature, **({"previous": previous} if previous is not None else {})}
    out: dict[str, float] = {"n": len(labels), "accuracy": float((logits.argmax(1) == labels).mean())}
    for name, t in temps.items():
        out[f"nll_{name}"] = nll(logits, labels, t)
        out[f"ece_{name}"] = expected_calibration_error(calibrated_probabilities(logits, t), labels)
    return out


def split_groups(groups: Sequence[str], fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, held_out) assigning whole groups, at least one group to each side."""
    names = sorted(set(groups))
    if len(names) < 2:
        raise LabelsError(f"need at least 2 groups to split by group, found {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_fit = min(len(names) - 1, max(1, round(fit_fraction * len(names))))
    fit_names = {names[i] for i in order[:n_fit]}
    fit = np.array([g in fit_names for g in groups], bool)
    return fit, ~fit


def checkpoint_logits(model, x_u8: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Logits of a PyTorch checkpoint on model-size uint8 crops [N, H, W], preprocessed as the config says."""
    import torch

    spec = PreprocessSpec()  # export writes this spec (pixel / 255) for checkpoints of models.train
    with torch.no_grad():
        parts = [model(torch.from_numpy(normalize(x_u8[i : i + batch], spec))) for i in range(0, len(x_u8), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels", type=Path, help="labelled crops CSV (crop_file, label[, sheet_id])")
    src.add_argument("--synthetic", type=int, metavar="N", help="render N synthetic validation crops instead")
    ap.add_argument("--group-column", default="sheet_id", help="CSV column to split by; '' splits by crop")
    ap.add_argument("--fit-fraction", type=float, default=0.5, help="share of groups (or crops) to fit T on")
    ap.add_argument("--seed", type=int, default=0, help="split seed (and synthetic render seed offset)")
    ap.add_argument("--dry-run", action="store_true", help="report only; leave the checkpoint unchanged")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not 0 < args.fit_fraction < 1:
        ap.error("--fit-fraction must be between 0 and 1")

    from models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    classes: list[str] = list(meta["classes"])
    side = model.input_size
    try:
        if args.labels is not None:
            items = read_labels(args.labels, classes)
            x = np.stack([resize(c, side, side) for c in decode_crops(items)])
            y = np.array([classes.index(it.label) for it in items], np.int64)
            if args.group_column:
                groups = [
                    it.sheet_id if args.group_column == "sheet_id" else it.extra.get(args.group_column) for it in items
                ]
                if any(g is None for g in groups):
                    raise LabelsError(
                        f"column {args.group_column!r} is missing or empty in some rows; "
                        "pass --group-column '' to split by crop"
                    )
            else:
                groups = [str(i) for i in range(len(items))]
            source = f"{args.labels} split by {args.group_column or 'crop'}"
        else:
            from models.synth import render_dataset

            seed = 7_000_003 + args.seed  # far from models.train's render seeds (seed*1000 + 1, 2)
            x, y = render_dataset(args.synthetic, seed=seed, classes=classes, side=side, workers=2)
            groups = [str(i) for i in range(len(y))]
            source = f"{args.synthetic} synthetic crops (models.synth seed {seed}) split by crop"
        fit, held = split_groups(groups, args.fit_fraction, args.seed)
    except LabelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logits = checkpoint_logits(model, x)
    temperature = fit_temperature(logits[fit], y[fit])
    report = {
        "checkpoint": str(args.checkpoint),
        "source": source,
        "temperature": temperature,
        "previous_temperature": float(meta.get("temperature", 1.0)),
        "fit": {"n": int(fit.sum()), "groups": len({g for g, f in zip(groups, fit, strict=True) if f})},
        "held_out": calibration_report(logits[held], y[held], temperature, float(meta.get("temperature", 1.0))),
        "written": not args.dry_run,
        # at a bound the search did not find an interior optimum (e.g. an untrained model: T -> infinity)
        "at_bound": bool(min(abs(math.log(temperature / b)) for b in T_BOUNDS) < 1e-3),
    }
    if not args.dry_run:
        rest = {k: v for k, v in meta.items() if k not in ("arch", "classes", "temperature", "calibration")}
        calibration = {k: report[k] for k in ("source", "fit", "held_out")}
        save_checkpoint(
            args.checkpoint, model, meta["arch"], classes, temperature=temperature, calibration=calibration, **rest
        )
    if args.json:
        print(json.dumps(report))
    else:
        h = report["held_out"]
        print(
            f"temperature {temperature:.4f} (was {report['previous_temperature']:.4f}), fitted on "
            f"{report['fit']['n']} crops / {report['fit']['groups']} groups of {source}"
        )
        print(
            f"held-out ({h['n']} crops): NLL {h['nll_before']:.4f} -> {h['nll_after']:.4f}, "
            f"ECE {h['ece_before']:.4f} -> {h['ece_after']:.4f}, accuracy {h['accuracy']:.4f}; with the previous "
            f"T: NLL {h['nll_previous']:.4f}, ECE {h['ece_previous']:.4f}"
        )
        if report["at_bound"]:
            print(f"warning: T is at the search bound {T_BOUNDS}; the model's logits carry little signal")
        print(f"{'wrote' if not args.dry_run else 'dry run, did not write'} {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
