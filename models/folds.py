"""Cross-validation folds over real-dev sources, and the manifest that hands the fold models to evaluation.

Leave-one-source-out: one fold per tuning (non-sealed) source, trained on every other tuning source; plus one
`sealed` fold trained on all tuning sources that predicts the sealed ones (models.realdev). A fold's
training crops never include its held-out sources: `Fold.train` and `Fold.held` are disjoint by
construction, and `check` refuses a manifest where they are not.

The manifest (`folds.json` beside the fold models) is read by `models.evaluate`, which runs each fold's
ONNX file on its held-out sheets through the service's own decision path. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MANIFEST = "folds.json"
SEALED_FOLD = "sealed"


@dataclass(frozen=True)
class Fold:
    name: str
    held_out: tuple[str, ...]  # sources this fold predicts
    trained_on: tuple[str, ...]  # sources it is fine-tuned on
    sealed: bool = False  # True for the fold that predicts the sealed sources

    def masks(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train, held) boolean masks over crops whose source is `sources[i]`."""
        return np.isin(sources, self.trained_on), np.isin(sources, self.held_out)


def make_folds(sources: Sequence[str], sealed: Sequence[str]) -> list[Fold]:
    """One fold per tuning source (leave-one-source-out) + one fold for the sealed sources, if any are present."""
    present = sorted(set(sources))
    sealed_here = tuple(s for s in present if s in set(sealed))
    tuning = [s for s in present if s not in set(sealed_here)]
    folds = [Fold(s, (s,), tuple(t for t in tuning if t != s)) for s in tuning]
    if sealed_here:
        folds.append(Fold(SEALED_FOLD, sealed_here, tuple(tuning), sealed=True))
    for fold in folds:
        check(fold)
    return folds


def check(fold: Fold) -> None:
    overlap = set(fold.held_out) & set(fold.trained_on)
    if overlap or not fold.held_out:
        raise ValueError(f"fold {fold.name!r}: held-out sources {sorted(overlap)} are also trained on (or none held)")


def write_manifest(folder: Path, folds: Sequence[Fold], files: dict[str, str], extra: dict[str, object]) -> Path:
    """folds.json: each fold, its ONNX file (relative to `folder`), plus `extra` (temperature, sealed, ...)."""
    entries = [{**asdict(f), "onnx": files[f.name]} for f in folds]
    path = folder / MANIFEST
    path.write_text(json.dumps({**extra, "folds": entries}, indent=1))
    return path


@dataclass(frozen=True)
class FoldModel:
    fold: Fold
    onnx: Path


def read_manifest(folder: Path) -> tuple[list[FoldModel], dict[str, object]]:
    """The fold models a manifest names (each checked: its file exists, held-out and training sources disjoint)."""
    raw = json.loads((folder / MANIFEST).read_text())
    out: list[FoldModel] = []
    for e in raw["folds"]:
        fold = Fold(e["name"], tuple(e["held_out"]), tuple(e["trained_on"]), bool(e.get("sealed", False)))
        check(fold)
        path = folder / e["onnx"]
        if not path.is_file():
            raise FileNotFoundError(f"{folder / MANIFEST}: fold {fold.name!r} names a missing file {path}")
        out.append(FoldModel(fold, path))
    return out, {k: v for k, v in raw.items() if k != "folds"}
