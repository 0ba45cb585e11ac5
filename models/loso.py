"""Leave-one-source-out as served: each fold model predicts the sheets of the sources it never saw.

`models.finetune` writes one ONNX file per fold and a manifest (`models.folds`); here every fold's held-out
crops go through `models.evaluate.predict` — the service's decode/resize/TTA/calibration/sheet-context
decision — under the bundled model's config, so the estimate measures the decision rule that is served,
not a re-implementation of it. The sealed fold is scored only with `unseal=True` (the final evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.evaluate import OnnxModel, Predictions, predict, score
from models.folds import read_manifest
from models.labelled import LabelledCrop
from models.realdev import source_of
from service.core.modelconfig import ModelConfig


@dataclass(frozen=True)
class OutOfFold:
    """Served predictions of the crops `index` points at, each from the fold that held its source out."""

    index: np.ndarray  # [M] positions in the item list
    pred: Predictions


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def out_of_fold(
    folds_dir: Path,
    items: Sequence[LabelledCrop],
    crops: Sequence[np.ndarray],
    config: ModelConfig,
    tta: bool,
    profile: str,
    sealed: bool,
    threads: int = 0,
) -> OutOfFold:
    """The tuning folds' predictions (sealed=False) or the sealed fold's (sealed=True), in item order."""
    folds, _ = read_manifest(folds_dir)
    sources = np.array([source_of(it.sheet_id or "") for it in items])
    parts: list[tuple[np.ndarray, Predictions]] = []
    for fm in folds:
        if fm.fold.sealed != sealed:
            continue
        idx = np.flatnonzero(np.isin(sources, fm.fold.held_out))
        if not len(idx):
            continue
        model = OnnxModel(config, _session(fm.onnx, threads), fm.onnx)
        sheets = [items[i].sheet_id for i in idx]
        parts.append((idx, predict(model, [crops[i] for i in idx], tta, profile, sheets=sheets, config=config)))
    if not parts:
        raise ValueError(f"{folds_dir}: no {'sealed' if sealed else 'tuning'} fold holds out any of these crops")
    index = np.concatenate([i for i, _ in parts])
    order = np.argsort(index, kind="stable")
    agrees = [p.agree for _, p in parts]
    agree = None if any(a is None for a in agrees) else np.concatenate(agrees)[order]  # type: ignore[arg-type]
    decisions = [d for _, p in parts for d in p.decisions]
    pred = Predictions(
        np.concatenate([p.probs for _, p in parts])[order],
        np.concatenate([p.view_probs for _, p in parts])[order],
        agree,
        [decisions[k] for k in order],
    )
    return OutOfFold(index[order], pred)


def report(
    folds_dir: Path,
    items: Sequence[LabelledCrop],
    crops: Sequence[np.ndarray],
    config: ModelConfig,
    tta: bool,
    profile: str,
    sealed: bool,
) -> tuple[dict[str, object], OutOfFold]:
    """Figures of the out-of-fold predictions overall and per held-out source."""
    oof = out_of_fold(folds_dir, items, crops, config, tta, profile, sealed)
    held = [items[i] for i in oof.index]
    rep, _, _ = score(held, oof.pred, config, profile)
    sources = np.array([source_of(it.sheet_id or "") for it in held])
    per_source = {}
    for src in sorted(set(sources)):
        m = sources == src
        sub = Predictions(oof.pred.probs[m], oof.pred.view_probs[m], None,
                          [d for d, k in zip(oof.pred.decisions, m, strict=True) if k])  # fmt: skip
        r, _, _ = score([it for it, k in zip(held, m, strict=True) if k], sub, config, profile)
        per_source[src] = {k: r[k] for k in ("n", "accuracy", "accuracy_sure", "binary_accuracy", "binary",
                                             "review_rate", "review_catch_rate", "decided_by_sheet")}  # fmt: skip
    rep["per_source"] = per_source
    rep["sources"] = sorted(set(sources))
    return rep, oof
