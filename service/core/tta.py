"""Test-time augmentation views, applied to model-size uint8 crops [N,H,W].

Views are small geometric perturbations a crop would plausibly show anyway (the engine's crop box is never
exactly centred): one-pixel shifts and a slight zoom in/out. Predictions are averaged in probability
space (after calibration), and a label disagreement between views is a reason for review.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np


def _affine(batch: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    n, h, w = batch.shape
    out = np.empty_like(batch)
    for i in range(n):
        out[i] = cv2.warpAffine(batch[i], matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out


def _shift(dx: int, dy: int) -> Callable[[np.ndarray], np.ndarray]:
    def view(batch: np.ndarray) -> np.ndarray:
        return _affine(batch, np.float32([[1, 0, dx], [0, 1, dy]]))

    return view


def _zoom(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    def view(batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[1:]
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0.0, scale)
        return _affine(batch, m)

    return view


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda batch: batch,
    "shift_left": _shift(-1, 0),
    "shift_right": _shift(1, 0),
    "shift_up": _shift(0, -1),
    "shift_down": _shift(0, 1),
    "zoom_in": _zoom(1.08),
    "zoom_out": _zoom(0.92),
}


def expand(batch: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """uint8 [N,H,W] -> uint8 [N*V,H,W], view-major within each crop: row i*V+v is crop i, view v."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown TTA views {unknown}; known: {sorted(VIEWS)}")
    stacked = np.stack([VIEWS[v](batch) for v in views], axis=1)  # [N, V, H, W]
    return stacked.reshape(-1, *batch.shape[1:])


def reduce(probs: np.ndarray, n_views: int) -> tuple[np.ndarray, np.ndarray]:
    """[N*V, C] calibrated probabilities -> (mean probabilities [N, C], views-agree [N] bool)."""
    per_view = probs.reshape(-1, n_views, probs.shape[-1])
    labels = per_view.argmax(-1)
    agree = (labels == labels[:, :1]).all(axis=1)
    return per_view.mean(axis=1), agree
