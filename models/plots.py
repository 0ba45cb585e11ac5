"""PNG figures for evaluation, calibration and data cleaning, drawn with OpenCV only.

OpenCV (not matplotlib) so that `models.evaluate` runs with the service's runtime dependencies alone:
confusion matrix, annotated crop grids (misclassified crops, cleaning suspects) and reliability diagrams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
RED = (40, 40, 220)  # BGR
GREEN = (60, 160, 60)
ORANGE = (0, 140, 255)
BLUE = (200, 110, 30)


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4, color=BLACK, thick: int = 1) -> None:
    cv2.putText(img, text, org, FONT, scale, color, thick, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.4, thick: int = 1) -> int:
    return cv2.getTextSize(text, FONT, scale, thick)[0][0]


@dataclass(frozen=True)
class Tile:
    """One crop in a grid: the native-size grayscale crop, up to 3 caption lines, a frame colour."""

    crop: np.ndarray
    lines: tuple[str, ...]
    frame: tuple[int, int, int] = GREY


def crop_grid(tiles: Sequence[Tile], title: str, cols: int = 8, side: int = 112) -> np.ndarray:
    """Tiles in a grid: each crop scaled (nearest, so pixels stay visible) into side x side, captions below."""
    line_h, pad = 14, 6
    cap_h = line_h * max((len(t.lines) for t in tiles), default=1) + 4
    cell_w, cell_h = side + 2 * pad, side + cap_h + 2 * pad
    cols = max(1, min(cols, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // cols))
    head = 28
    img = np.full((head + rows * cell_h, max(cols * cell_w, _text_width(title, 0.55) + 20), 3), 255, np.uint8)
    _text(img, title, (8, 19), 0.55)
    if not tiles:
        _text(img, "(none)", (8, head + 20))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        x0, y0 = c * cell_w + pad, head + r * cell_h + pad
        h, w = tile.crop.shape[:2]
        s = side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        small = cv2.resize(tile.crop, (nw, nh), interpolation=cv2.INTER_NEAREST)
        oy, ox = y0 + (side - nh) // 2, x0 + (side - nw) // 2
        img[oy : oy + nh, ox : ox + nw] = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        cv2.rectangle(img, (x0 - 2, y0 - 2), (x0 + side + 1, y0 + side + 1), tile.frame, 2)
        for i, line in enumerate(tile.lines):
            scale = 0.36
            while scale > 0.25 and _text_width(line, scale) > side + pad:
                scale -= 0.02
            _text(img, line, (x0, y0 + side + 14 + i * line_h), scale)
    return img


def confusion_counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix [true, predicted] of class indices."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def confusion_image(cm: np.ndarray, classes: Sequence[str], title: str) -> np.ndarray:
    """Rows = true class, columns = predicted; cell shade by row-normalised rate, counts written in."""
    n = len(classes)
    cell, left, top = 56, 96, 110
    img = np.full((top + n * cell + 40, left + n * cell + 20, 3), 255, np.uint8)
    _text(img, title, (8, 20), 0.5)
    _text(img, "predicted ->", (left, 40), 0.4, GREY)
    row_sum = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, row_sum, out=np.zeros(cm.shape, float), where=row_sum > 0)
    for j, name in enumerate(classes):  # column headers, written diagonally would need rotation: stagger instead
        _text(img, name, (left + j * cell + 2, top - 10 - (j % 2) * 16), 0.36)
    for i, name in enumerate(classes):
        y = top + i * cell
        _text(img, name, (4, y + cell // 2 + 4), 0.38)
        for j in range(n):
            x = left + j * cell
            v = rate[i, j]
            diag = i == j
            if cm[i, j]:
                # diagonal in green, errors in red, intensity by the row-normalised rate
                base = np.array(GREEN if diag else RED, float)
                colour = tuple(int(255 - (255 - b) * (0.25 + 0.75 * v)) for b in base)
            else:
                colour = (248, 248, 248)
            cv2.rectangle(img, (x, y), (x + cell - 2, y + cell - 2), colour, -1)
            label = str(int(cm[i, j]))
            ink = WHITE if cm[i, j] and v > 0.5 else BLACK
            _text(img, label, (x + (cell - _text_width(label, 0.45)) // 2, y + cell // 2 + 4), 0.45, ink)
    _text(img, "true (rows)", (4, top + n * cell + 24), 0.4, GREY)
    return img


def reliability_image(
    counts: np.ndarray, accuracy: np.ndarray, confidence: np.ndarray, title: str, size: int = 360
) -> np.ndarray:
    """Reliability diagram from per-bin (count, accuracy, mean confidence): bars against the diagonal."""
    margin = 48
    n_bins = len(counts)
    img = np.full((size + 2 * margin, size + 2 * margin, 3), 255, np.uint8)
    x0, y0 = margin, margin + size  # origin, y grows downwards
    cv2.rectangle(img, (x0, margin), (x0 + size, y0), GREY, 1)
    cv2.line(img, (x0, y0), (x0 + size, margin), GREY, 1, cv2.LINE_AA)
    bw = size / n_bins
    for b in range(n_bins):
        if not counts[b]:
            continue
        xa, xb = int(x0 + b * bw + 1), int(x0 + (b + 1) * bw - 1)
        cv2.rectangle(img, (xa, int(y0 - accuracy[b] * size)), (xb, y0), BLUE, -1)
        yc = int(y0 - confidence[b] * size)
        cv2.line(img, (xa, yc), (xb, yc), ORANGE, 2)
        _text(img, str(int(counts[b])), (xa, y0 + 12 + (b % 2) * 11), 0.3, GREY)
    for t in (0.0, 0.5, 1.0):
        _text(img, f"{t:.1f}", (x0 + int(t * size) - 8, y0 + 38), 0.35)
        _text(img, f"{t:.1f}", (8, int(y0 - t * size) + 4), 0.35)
    _text(img, title, (8, 20), 0.45)
    _text(img, "bars: accuracy, orange: mean confidence (crops per bin below)", (x0, 36), 0.33, GREY)
    return img
