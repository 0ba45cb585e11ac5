"""Stroke marks: single slashes and row strikes (cross), looped and sloppy ticks in rectangular boxes (cross),
dense scribble-outs over an X (scribble), and small dots / short hesitation strokes (dot).

Each returns a uint8 alpha layer on the canvas; `render.py` gives it the instrument's tone and texture.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.synth.layout import Bubble, new_layer
from models.synth.marks import Instrument, mark_cross, stroke, zigzag
from models.synth.pencil import coil


def _width(ins: Instrument, b: Bubble, cap: float = 0.14) -> float:
    return min(ins.width, max(b.rx, b.ry) * cap)


def slash(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """One stroke through the bubble: from inside to well outside, or clean through it."""
    layer = new_layer(size)
    big = max(b.rx, b.ry)
    a = rng.uniform(0, 2 * np.pi)
    u = np.array([np.cos(a), np.sin(a)])
    c = np.array([b.cx, b.cy])
    if rng.random() < 0.5:
        p0 = c + rng.uniform(-0.5, 0.3) * big * u + rng.normal(0, 0.1 * big, 2)
    else:
        p0 = c - rng.uniform(1.1, 1.8) * big * u + rng.normal(0, 0.15 * big, 2)
    p1 = c + rng.uniform(1.25, 2.2) * big * u
    stroke(layer, tuple(p0), tuple(p1), _width(ins, b), rng)
    return layer


def strike(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """One horizontal strike across the row: through this bubble and on past its neighbours."""
    layer = new_layer(size)
    y = b.cy + rng.uniform(-0.35, 0.35) * b.ry
    slope = np.tan(rng.normal(0, 0.07))
    x0, x1 = -0.1 * size, 1.1 * size
    stroke(layer, (x0, y + (x0 - b.cx) * slope), (x1, y + (x1 - b.cx) * slope), _width(ins, b), rng)
    return layer


def tick(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """A check mark in a (often rectangular) box: looped at the bottom, or sloppy and overshooting."""
    layer = new_layer(size)
    over = rng.uniform(0.8, 1.6)  # sloppy ticks run past the box
    c = np.array([b.cx, b.cy]) + rng.normal(0, 0.08, 2) * (b.rx, b.ry)
    p0 = c + np.array([-0.65 * b.rx, -0.05 * b.ry]) * over + rng.normal(0, 0.08, 2) * (b.rx, b.ry)
    p1 = c + np.array([-0.1 * b.rx, 0.6 * b.ry]) + rng.normal(0, 0.08, 2) * (b.rx, b.ry)
    p2 = c + np.array([0.8 * b.rx, -1.0 * b.ry]) * over + rng.normal(0, 0.1, 2) * (b.rx, b.ry)
    w = _width(ins, b)
    if rng.random() < 0.55:  # looped: the pen circles once at the bottom before going up
        rad = rng.uniform(0.12, 0.3) * min(b.rx, b.ry) * 1.5
        t = np.linspace(0, 2 * np.pi, 16) + rng.uniform(0, np.pi)
        loop = p1 + rad * np.stack([np.cos(t), np.sin(t)], 1) - rad * np.array([np.cos(t[0]), np.sin(t[0])])
        pts = np.vstack([np.linspace(p0, p1, 6), loop, np.linspace(loop[-1], p2, 8)])
        cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], False, 255, max(1, round(w)), cv2.LINE_AA, 4)
    else:
        stroke(layer, tuple(p0), tuple(p1), w, rng)
        stroke(layer, tuple(p1), tuple(p2), w, rng)
    return layer


def scribble_over_x(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """Scribble-out of a box: an X (or tick) hatched over densely, or buried under tight loops."""
    layer = mark_cross(b, rng, size, ins) if rng.random() < 0.8 else tick(b, rng, size, ins)
    w = _width(ins, b, 0.1)
    if rng.random() < 0.65:
        base = rng.uniform(0, np.pi)
        for k in range(int(rng.integers(2, 5))):
            ang = base + k * np.pi / 3 + rng.normal(0, 0.12)
            hatch = zigzag(b, rng, size, w, w * rng.uniform(1.5, 3.0), reach=rng.uniform(1.0, 1.35), angle=ang)
            layer = np.maximum(layer, hatch)
    else:
        for _ in range(int(rng.integers(1, 3))):
            loops = coil(b, rng, size, w, rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.22), (-0.8, 0.8))
            layer = np.maximum(layer, loops)
    return layer


def small_dot(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """A hesitation mark: a pen/pencil dot, a short stroke or a comma, near the centre (over the printed letter)."""
    layer = new_layer(size)
    r = min(b.rx, b.ry)
    cx, cy = b.cx + rng.uniform(-0.4, 0.4) * r, b.cy + rng.uniform(-0.4, 0.4) * r
    u = rng.random()
    w = min(ins.width, r * 0.2)
    if u < 0.4:
        rad = r * rng.uniform(0.12, 0.3)
        axes = (int(rad * 16), int(rad * rng.uniform(0.6, 1.0) * 16))
        cv2.ellipse(layer, (int(cx * 16), int(cy * 16)), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA, 4)
    elif u < 0.75:
        ang, ln = rng.uniform(0, np.pi), r * rng.uniform(0.25, 0.55)
        stroke(layer, (cx, cy), (cx + ln * np.cos(ang), cy + ln * np.sin(ang)), w, rng)
    else:  # comma / tiny hook
        ang, ln = rng.uniform(0, 2 * np.pi), r * rng.uniform(0.15, 0.3)
        mid = (cx + ln * np.cos(ang), cy + ln * np.sin(ang))
        stroke(layer, (cx, cy), mid, w, rng)
        ang2 = ang + rng.choice([-1, 1]) * rng.uniform(1.0, 2.0)
        stroke(layer, mid, (mid[0] + 0.6 * ln * np.cos(ang2), mid[1] + 0.6 * ln * np.sin(ang2)), w, rng)
    return layer
