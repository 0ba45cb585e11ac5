"""Real labelled crops as model-size arrays, decoded and resized by the service's own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.labelled import decode_crops, read_labels
from service.core.modelconfig import InputSpec
from service.core.preprocess import prepare


@dataclass
class RealSet:
    x: np.ndarray  # uint8 [N, side, side]
    y: np.ndarray  # int64 [N] class index
    files: list[Path]
    groups: list[str]  # sheet ids (split by sheet, never by crop)


def load_real_set(labels_csv: Path, classes: list[str], side: int = 32) -> RealSet:
    items = read_labels(labels_csv, classes)
    x = prepare(decode_crops(items), InputSpec(height=side, width=side))  # the service's resize path
    y = np.array([classes.index(it.label) for it in items], np.int64)
    return RealSet(x, y, [it.path for it in items], [it.sheet_id or "" for it in items])
