"""Halftoned (dithered) captures: what 1-bit scanners and "document" scan apps do to grey.

A dithering scanner turns every grey (graphite, light print, shading) into a pattern of black dots whose density
follows the grey, while solid black print stays solid and white paper stays white. Three generic kinds:
ordered (Bayer), clustered-dot (a rotated screen) and error diffusion (Floyd-Steinberg). The dither happens at
the *scanner's* resolution (150-300 dpi); the engine then resizes the crop, which turns the dots back into a
grainy grey, and some pipelines binarise again after that resize.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

_BAYER2 = np.array([[0, 2], [3, 1]], np.float32)


def _bayer(n: int) -> np.ndarray:
    """Bayer index matrix of side n (a power of two), as thresholds in (0, 1)."""
    m = _BAYER2
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / m.size


def _clustered(period: float, angle: float, shape: tuple[int, int], phase: tuple[float, float]) -> np.ndarray:
    """Clustered-dot screen thresholds: a round-dot spot function on a rotated grid, rank-equalised."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase[0]
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period + phase[1]
    spot = np.cos(2 * np.pi * u) + np.cos(2 * np.pi * v)  # high at cell centres: they turn black first
    ranks = np.argsort(np.argsort(-spot.ravel())).reshape(shape)
    return ((ranks + 0.5) / ranks.size).astype(np.float32)


def floyd_steinberg(img: np.ndarray) -> np.ndarray:
    """Error-diffusion dither (Floyd-Steinberg, PIL's C implementation) of a [0, 1] float image -> {0, 1}."""
    u8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return (np.asarray(Image.fromarray(u8).convert("1"), dtype=np.float32) > 0).astype(np.float32)


def dither(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Float reflectance [0, 1] -> bilevel {0, 1} with the given dither kind (bayer | clustered | fs)."""
    h, w = img.shape
    if kind == "fs":
        return floyd_steinberg(img)
    if kind == "bayer":
        n = int(rng.choice([2, 4, 8], p=[0.2, 0.5, 0.3]))
        t = np.tile(_bayer(n), (h // n + 2, w // n + 2))
        oy, ox = rng.integers(0, n, 2)
        t = t[oy : oy + h, ox : ox + w]
    else:
        angle = float(rng.choice([0.0, np.pi / 4])) + rng.normal(0, 0.05)
        t = _clustered(rng.uniform(2.5, 5.0), angle, (h, w), tuple(rng.uniform(0, 1, 2)))
    return (img > t).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.15:
        return img
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(img, (k, k), sigma)


def halftone_capture(
    img: np.ndarray, native: int, rng: np.random.Generator, when: str | None = None, kind: str | None = None
) -> np.ndarray:
    """Geometry-warped canvas (float reflectance) -> uint8 crop of side `native`, dithered.

    when: "before" (dither at scan resolution, then the engine's area resize: a grainy grey), "after" (resize,
    then dither at the crop's size: bilevel), "both" (dither, resize, binarise again: bilevel, dots merged).
    """
    when = when or str(rng.choice(["before", "after", "both"], p=[0.4, 0.35, 0.25]))
    kind = kind or str(rng.choice(["bayer", "clustered", "fs"], p=[0.3, 0.3, 0.4]))
    # the scanner's exposure puts paper at (nearly) white; a dark setting leaves the paper a little grey, which
    # dithers into sparse speckle all over the sheet (empties of such sheets look dirty)
    # and its black point maps dark print to solid black (no dither pinholes in the print)
    paper_level = float(np.percentile(img, 85)) * rng.uniform(0.87, 1.03)
    black = rng.uniform(0.08, 0.22)
    img = np.clip((img - black) / max(paper_level - black, 0.2), 0, 1)
    if rng.random() < 0.3:  # bold print: a dark scan setting thickens strokes (and marks) before the dither
        img = cv2.erode(img, np.ones((2, 2), np.uint8))
    # scanner sampling: 150-300 dpi relative to the crop, i.e. the scan is 1-2.5x the crop's side
    scan = int(np.clip(native * rng.uniform(1.0, 2.5), native, 192)) if when != "after" else native
    img = cv2.resize(img, (scan, scan), interpolation=cv2.INTER_AREA if scan < img.shape[0] else cv2.INTER_LINEAR)
    img = _blur(img, rng.uniform(0.0, 0.6))
    if when == "after":
        out = dither(img, kind, rng)
    else:
        out = dither(img, kind, rng)
        if scan != native:
            out = cv2.resize(out, (native, native), interpolation=cv2.INTER_AREA)
        if when == "both":
            out = (out > rng.uniform(0.4, 0.6)).astype(np.float32)
    if rng.random() < 0.4:  # scanner speckle: isolated black (and a few white) pixels
        speck = rng.random(out.shape) < rng.uniform(0.0, 0.012)
        out[speck] = np.where(rng.random(int(speck.sum())) < 0.85, 0.0, 1.0)
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)
