"""Real labelled crops as model-size arrays, decoded and resized by the service's own preprocessing."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.preprocess import decode_image, resize


@dataclass
class RealSet:
    x: np.ndarray  # uint8 [N, 32, 32]
    y: np.ndarray  # int64 [N] class index
    files: list[Path]
    groups: list[str]  # sheet ids (split by sheet, never by crop)


def load_real_set(labels_csv: Path, classes: list[str], side: int = 32) -> RealSet:
    rows = list(csv.DictReader(labels_csv.open()))
    files = [labels_csv.parent / r["crop_file"] for r in rows]
    x = np.stack([resize(decode_image(f.read_bytes()), side, side) for f in files])
    y = np.array([classes.index(r["label"]) for r in rows], np.int64)
    return RealSet(x, y, files, [r.get("sheet_id", "") for r in rows])
