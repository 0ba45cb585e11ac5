"""Measurements on rendered pixels (for tests and contact-sheet checks), independent of how a mark was drawn.

They compare the pre-capture canvas with the same canvas without the respondent's mark (both kept in
`Sample.info`), so they see exactly the ink a crop shows: coverage is measured on pixels, not taken from the
renderer's shape layer.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.synth.layout import Bubble, fill_polygon, new_layer, shape_polygon
from models.synth.render import Sample


def mark_darkness(s: Sample) -> np.ndarray:
    """Per-pixel darkening the mark adds on the canvas: 1 - marked / unmarked (0 = no ink, 1 = black ink)."""
    return np.clip(1 - s.info["canvas"] / np.maximum(s.info["unmarked"], 1e-3), 0, 1).astype(np.float32)


def pixel_coverage(s: Sample, smooth: int = 5) -> float:
    """Fraction of the bubble interior under the mark: darkening (box-smoothed over grain) above half its peak."""
    inter = s.info["interior"]
    if not inter.any():
        return 0.0
    dark = cv2.blur(mark_darkness(s), (smooth, smooth))
    peak = float(dark[inter].max())
    return 0.0 if peak < 0.04 else float((dark[inter] > 0.5 * peak).mean())


def outside_mask(b: Bubble, size: int, margin: float = 1.0) -> np.ndarray:
    """Pixels clearly outside the bubble's printed outline (beyond its outer edge + margin px)."""
    layer = new_layer(size)
    fill_polygon(layer, shape_polygon(b, grow=b.thickness / 2 + margin))
    return layer < 128


def printed_darkness(s: Sample) -> np.ndarray:
    """Per-pixel darkness of the print alone (outline, glyphs), 0 = paper."""
    return np.clip(1 - s.info["printed"], 0, 1).astype(np.float32)


def bilevel_fraction(img: np.ndarray, lo: int = 48, hi: int = 207) -> float:
    """Share of a crop's pixels that are near black or near white."""
    return float(((img <= lo) | (img >= hi)).mean())
