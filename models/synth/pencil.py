"""Graphite: HB shading, dark pencil blobs with a white crescent, open looping scribbles, erasure residue.

Students mostly fill bubbles with pencil. Light HB shading is *lighter* than the printed letter (which shows
through, darker), covers anywhere from a third to all of the bubble and has a streaky grain along the strokes;
a dark soft-pencil blob often misses one side of the bubble (a white crescent) or its rim (a white ring).
An erased fill leaves a faint, smeared, partly removed grey over the printed digit.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.synth.layout import Bubble, new_layer, to_alpha
from models.synth.marks import Instrument, blob, zigzag


def hb(rng: np.random.Generator, d: float) -> Instrument:
    """Light HB pencil: mid-to-light grey graphite with a strong grain."""
    return Instrument("hb", rng.uniform(0.42, 0.72), d * rng.uniform(0.06, 0.13), rng.uniform(0.3, 0.65))


def soft(rng: np.random.Generator, d: float) -> Instrument:
    """Soft (2B) pencil pressed hard: dark graphite, a little grain."""
    return Instrument("graphite", rng.uniform(0.08, 0.32), d * rng.uniform(0.06, 0.12), rng.uniform(0.15, 0.45))


def line_kernel(n: int, angle: float) -> np.ndarray:
    """A normalised n x n motion kernel: a line through the centre at `angle`."""
    k = np.zeros((n, n), np.float32)
    c, dx, dy = (n - 1) / 2, (n - 1) / 2 * np.cos(angle), (n - 1) / 2 * np.sin(angle)
    cv2.line(k, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0)
    return k / k.sum()


def grain(alpha: np.ndarray, amount: float, rng: np.random.Generator, angle: float | None = None) -> np.ndarray:
    """Graphite grain: streaks along the stroke direction plus paper tooth, modulating the alpha."""
    if amount <= 0:
        return alpha
    noise = rng.random(alpha.shape, dtype=np.float32)
    n = int(rng.integers(3, 8))
    streak = cv2.filter2D(noise, -1, line_kernel(n, rng.uniform(0, np.pi) if angle is None else angle))
    tooth = cv2.GaussianBlur(noise, (3, 3), 0)
    g = 0.6 * streak + 0.4 * tooth
    z = (g - g.mean()) / (g.std() + 1e-6)  # standardised: the grain's contrast follows `amount` only
    return alpha * np.clip(1.0 - 0.35 * amount + 0.5 * amount * z, 0.05, 1.0)


def coil(
    b: Bubble,
    rng: np.random.Generator,
    size: int,
    width: float,
    radius: float,
    pitch: float,
    travel: tuple[float, float] = (-0.7, 0.7),
    angle: float | None = None,
) -> np.ndarray:
    """An open looping scribble: a pen circling while it travels across the bubble (unit-circle coordinates)."""
    ang = rng.uniform(0, np.pi) if angle is None else angle
    ux, uy = np.cos(ang), np.sin(ang)
    length = max(travel[1] - travel[0], 0.05)
    turns = max(1.0, length / max(pitch, 0.03))
    t = np.linspace(0, 2 * np.pi * turns, int(turns * 14) + 2)
    along = travel[0] + length * t / t[-1]
    rad = radius * (1 + 0.15 * np.sin(t * rng.uniform(0.2, 0.5) + rng.uniform(0, 6)))
    lx, ly = along + rad * np.cos(t), rad * rng.uniform(0.6, 1.1) * np.sin(t)
    x = b.cx + (lx * ux - ly * uy) * b.rx
    y = b.cy + (lx * uy + ly * ux) * b.ry
    layer = new_layer(size)
    pts = np.round(np.stack([x, y], 1) * 16).astype(np.int32)
    cv2.polylines(layer, [pts], False, 255, max(1, round(width)), cv2.LINE_AA, 4)
    return layer


def pencil_filled(b: Bubble, rng: np.random.Generator, size: int) -> tuple[np.ndarray, Instrument, str]:
    d = b.rx + b.ry
    u = rng.random()
    if u < 0.6:  # light HB shading over the whole bubble
        ins = hb(rng, d)
        if rng.random() < 0.5:
            return blob(b, rng.uniform(0.95, 1.25), rng, size, tuple(rng.normal(0, 0.04 * b.rx, 2))), ins, "hb_shade"
        layer = zigzag(b, rng, size, ins.width, ins.width * rng.uniform(0.35, 0.8), reach=rng.uniform(1.0, 1.2))
        return layer, ins, "hb_shade"
    if u < 0.85:  # dark soft pencil
        ins = soft(rng, d)
        return blob(b, rng.uniform(0.98, 1.3), rng, size, tuple(rng.normal(0, 0.04 * b.rx, 2))), ins, "dark_blob"
    ins = soft(rng, d) if rng.random() < 0.5 else hb(rng, d)  # dense looping scribble
    ins.width = d * rng.uniform(0.1, 0.16)
    return coil(b, rng, size, ins.width, rng.uniform(0.45, 0.75), rng.uniform(0.06, 0.14), (-0.5, 0.5)), ins, "loops"


def pencil_partial(b: Bubble, rng: np.random.Generator, size: int) -> tuple[np.ndarray, Instrument, str]:
    d = b.rx + b.ry
    u = rng.random()
    if u < 0.4:  # dark blob covering 55-75 %: a white crescent (off-centre) or ring (centred)
        ins = soft(rng, d)
        off = rng.uniform(0.08, 0.28) * min(b.rx, b.ry) if rng.random() < 0.65 else 0.0
        a = rng.uniform(0, 2 * np.pi)
        return blob(b, rng.uniform(0.72, 0.9), rng, size, (off * np.cos(a), off * np.sin(a))), ins, "crescent"
    if u < 0.7:  # light HB shading over a third to two thirds of the bubble
        ins = hb(rng, d)
        lo = rng.uniform(-1.0, -0.3)
        region = (lo, lo + rng.uniform(0.6, 1.15))
        layer = zigzag(b, rng, size, ins.width, ins.width * rng.uniform(0.35, 0.8), reach=1.0, region=region)
        return layer, ins, "hb_shade"
    ins = soft(rng, d) if rng.random() < 0.6 else hb(rng, d)  # open looping scribble
    ins.width = d * rng.uniform(0.05, 0.1)
    rad = rng.uniform(0.22, 0.45)
    lo = rng.uniform(-0.7, -0.3)
    return coil(b, rng, size, ins.width, rad, rng.uniform(0.15, 0.35), (lo, lo + rng.uniform(0.6, 1.2))), ins, "loops"


def erased_residue(b: Bubble, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """What an eraser leaves of a pencil fill: (soft alpha, darkness). Smeared, partly removed, faint, uniform."""
    r = min(b.rx, b.ry)
    if rng.random() < 0.6:
        layer = blob(b, rng.uniform(0.75, 1.2), rng, size, tuple(rng.normal(0, 0.08 * b.rx, 2)))
    else:
        layer = zigzag(b, rng, size, r * 0.25, r * 0.15, reach=rng.uniform(0.9, 1.15))
    alpha = to_alpha(layer)
    if rng.random() < 0.6:  # eraser passes removed bands of it more thoroughly than the rest
        bands = new_layer(size)
        ang = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(1, 4))):
            o = rng.uniform(-0.8, 0.8) * r
            cx, cy = b.cx - o * np.sin(ang), b.cy + o * np.cos(ang)
            dx, dy = 2 * r * np.cos(ang), 2 * r * np.sin(ang)
            w = max(1, int(r * rng.uniform(0.3, 0.7)))
            cv2.line(bands, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 255, w)
        alpha = alpha * (1 - rng.uniform(0.5, 0.95) * to_alpha(bands))
    if rng.random() < 0.5:  # smeared in the eraser's direction, past the outline
        n = max(3, int(r * rng.uniform(0.3, 0.8))) | 1
        alpha = cv2.filter2D(alpha, -1, line_kernel(n, rng.uniform(0, np.pi)))
    k = int(max(3, r * rng.uniform(0.2, 0.5))) | 1
    alpha = cv2.GaussianBlur(alpha, (k, k), 0)
    return alpha, float(rng.uniform(0.08, 0.24))
