"""Respondent marks, one function per class, drawn as (alpha, tone) ink layers.

Coverage (the fraction of the bubble interior under dark ink) is what separates filled / partial / dot;
`render.py` measures it on the mark's *shape* (before pencil texture) and re-draws until it falls in the
class band, so labels follow the definitions in shared/data/real-dev/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.synth.layout import Bubble, fill_polygon, new_layer, shape_polygon, to_alpha

#: interior coverage bands per class (inclusive), from the label definitions
COVERAGE = {
    "filled": (0.75, 1.0),
    "partial": (0.25, 0.72),
    "dot": (0.005, 0.18),
}


@dataclass
class Instrument:
    name: str
    tone: float  # reflectance of the ink (0 black .. 1 paper)
    width: float  # stroke width in canvas px
    texture: float  # 0 = solid ink, 1 = very grainy (pencil)


def pick_instrument(rng: np.random.Generator, d: float, kinds: tuple[str, ...] | None = None) -> Instrument:
    kind = str(rng.choice(kinds or ("pen", "ballpoint", "pencil", "marker", "shade")))
    if kind == "pen":
        return Instrument(kind, rng.uniform(0.02, 0.3), d * rng.uniform(0.05, 0.1), 0.0)
    if kind == "ballpoint":
        return Instrument(kind, rng.uniform(0.08, 0.45), d * rng.uniform(0.03, 0.07), 0.15)
    if kind == "pencil":
        return Instrument(kind, rng.uniform(0.2, 0.6), d * rng.uniform(0.04, 0.1), rng.uniform(0.3, 0.8))
    if kind == "shade":  # even pencil/graphite shading: light-to-mid grey, printed letters show through
        return Instrument(kind, rng.uniform(0.3, 0.62), d * rng.uniform(0.06, 0.12), rng.uniform(0.0, 0.3))
    return Instrument(kind, rng.uniform(0.0, 0.22), d * rng.uniform(0.12, 0.22), 0.0)


def blob(b: Bubble, scale: float, rng: np.random.Generator, size: int, off: tuple[float, float] = (0, 0)) -> np.ndarray:
    """Hand-filled blob: the interior shape scaled, with a wobbly edge (low harmonics)."""
    pts = shape_polygon(b, grow=-b.thickness / 2)
    c = np.array([b.cx, b.cy])
    v = pts - c
    t = np.linspace(0, 2 * np.pi, len(pts), endpoint=False)
    wobble = 1 + sum(rng.normal(0, 0.04) * np.cos(k * t + rng.uniform(0, 6.28)) for k in range(1, 5))
    pts = c + np.asarray(off) + v * (scale * wobble)[:, None]
    layer = new_layer(size)
    fill_polygon(layer, pts)
    return layer


def zigzag(
    b: Bubble,
    rng: np.random.Generator,
    size: int,
    width: float,
    spacing: float,
    reach: float = 1.0,
    angle: float | None = None,
    region: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """Back-and-forth strokes across the bubble (ballpoint fill, hatching, partial scribble).

    reach scales the span the strokes cover (1 = to the outline, > 1 overflows); region limits the
    offsets (as fractions of the radius) across which lines are laid, for partial coverage.
    """
    ang = rng.uniform(0, np.pi) if angle is None else angle
    ux, uy = np.cos(ang), np.sin(ang)
    # lay the strokes in a unit circle, then stretch it onto the bubble's ellipse
    unit = max(spacing, 1.0) / ((b.rx + b.ry) / 2)
    offs = np.arange(region[0] * reach, region[1] * reach + 1e-6, unit)
    pts = []
    for i, o in enumerate(offs):
        half = np.sqrt(max(reach * reach - o * o, 0.0)) * rng.uniform(0.85, 1.1)
        s = half if i % 2 == 0 else -half
        jx, jy = rng.normal(0, unit * 0.2, 2)
        pts.append((b.cx + (o * -uy + s * ux + jx) * b.rx, b.cy + (o * ux + s * uy + jy) * b.ry))
    layer = new_layer(size)
    if len(pts) >= 2:
        arr = np.round(np.array(pts) * 16).astype(np.int32)
        cv2.polylines(layer, [arr], False, 255, max(1, round(width)), cv2.LINE_AA, 4)
    return layer


def stroke(
    layer: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], width: float, rng: np.random.Generator
) -> None:
    """A slightly curved hand stroke from p0 to p1."""
    n = 8
    t = np.linspace(0, 1, n)[:, None]
    p0a, p1a = np.asarray(p0), np.asarray(p1)
    normal = np.array([-(p1a - p0a)[1], (p1a - p0a)[0]]) / (np.linalg.norm(p1a - p0a) + 1e-6)
    bend = rng.normal(0, 0.06) * np.linalg.norm(p1a - p0a)
    pts = p0a + t * (p1a - p0a) + normal * (bend * 4 * t * (1 - t))
    cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], False, 255, max(1, round(width)), cv2.LINE_AA, 4)


def mark_filled(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    style = rng.random()
    if style < 0.55 or ins.name == "marker":
        # a hand fill usually covers the printed outline too (blurred scans then show no outline at all)
        return blob(b, rng.uniform(1.0, 1.4), rng, size, tuple(rng.normal(0, 0.04 * b.rx, 2)))
    spacing = ins.width * rng.uniform(0.5, 1.1)
    layer = zigzag(b, rng, size, ins.width, spacing, reach=rng.uniform(1.0, 1.2))
    if rng.random() < 0.5:  # a second pass at another angle
        layer = np.maximum(layer, zigzag(b, rng, size, ins.width, spacing * 1.5, reach=rng.uniform(0.9, 1.15)))
    return layer


def mark_partial(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    style = rng.random()
    if style < 0.55:  # the common real case: a dark blob leaving a white ring inside the outline
        return blob(b, rng.uniform(0.5, 0.84), rng, size, tuple(rng.normal(0, 0.06 * b.rx, 2)))
    if style < 0.8:  # half-filled: a blob cut by a chord
        layer = blob(b, rng.uniform(1.0, 1.1), rng, size)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        side = (xx - b.cx) * np.cos(ang) + (yy - b.cy) * np.sin(ang)
        layer[side > rng.uniform(-0.35, 0.35) * b.rx] = 0
        return layer
    lo = rng.uniform(-1.0, -0.2)
    return zigzag(b, rng, size, ins.width, ins.width * 0.7, reach=0.95, region=(lo, lo + rng.uniform(0.6, 1.1)))


def mark_dot(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    layer = new_layer(size)
    r = min(b.rx, b.ry)
    cx, cy = b.cx + rng.uniform(-0.45, 0.45) * r, b.cy + rng.uniform(-0.45, 0.45) * r
    if rng.random() < 0.6:
        rad = r * rng.uniform(0.1, 0.36)
        cv2.ellipse(
            layer,
            (int(cx * 16), int(cy * 16)),
            (int(rad * 16), int(rad * rng.uniform(0.7, 1.0) * 16)),
            rng.uniform(0, 180),
            0,
            360,
            255,
            -1,
            cv2.LINE_AA,
            4,
        )
    else:  # a short stroke
        ang, ln = rng.uniform(0, np.pi), r * rng.uniform(0.2, 0.6)
        stroke(layer, (cx, cy), (cx + ln * np.cos(ang), cy + ln * np.sin(ang)), min(ins.width, r * 0.2), rng)
    return layer


def mark_cross(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    layer = new_layer(size)
    # on check-box forms people cross sloppily: often far past the box, off-centre, strokes not meeting
    # in the middle (real queXF crosses reach ~2x the box and off the crop)
    big = rng.random() < 0.35
    r = max(b.rx, b.ry) * (rng.uniform(1.3, 2.2) if big else rng.uniform(0.7, 1.5))
    w = min(ins.width, max(b.rx, b.ry) * 0.14)
    c = np.array([b.cx, b.cy]) + rng.normal(0, (0.15 if big else 0.08) * b.rx, 2)
    if rng.random() < 0.7:  # X
        for base in (np.pi / 4, 3 * np.pi / 4):
            a = base + rng.normal(0, 0.18)
            ext = r * rng.uniform(0.8, 1.1)
            cs = c + rng.normal(0, 0.1 * b.rx, 2) if big else c
            stroke(
                layer,
                tuple(cs - ext * np.array([np.cos(a), np.sin(a)])),
                tuple(cs + ext * np.array([np.cos(a), np.sin(a)])),
                w,
                rng,
            )
    else:  # tick
        p0 = c + r * np.array([-0.6, 0.0]) + rng.normal(0, 0.05 * r, 2)
        p1 = c + r * np.array([-0.1, 0.55]) + rng.normal(0, 0.05 * r, 2)
        p2 = c + r * np.array([0.7, -0.8]) + rng.normal(0, 0.08 * r, 2)
        stroke(layer, tuple(p0), tuple(p1), w, rng)
        stroke(layer, tuple(p1), tuple(p2), w, rng)
    return layer


def mark_scribble(b: Bubble, rng: np.random.Generator, size: int, ins: Instrument) -> np.ndarray:
    """Scribble-out: dense hatching in two or more directions over (often) an X, overflowing the box."""
    layer = mark_cross(b, rng, size, ins) if rng.random() < 0.6 else new_layer(size)
    w = min(ins.width, max(b.rx, b.ry) * 0.08)
    base = rng.uniform(0, np.pi)
    for k in range(int(rng.integers(2, 4))):  # cross-hatching: passes at clearly different angles
        ang = base + k * np.pi / 3 + rng.normal(0, 0.15)
        layer = np.maximum(
            layer, zigzag(b, rng, size, w, w * rng.uniform(1.8, 3.5), reach=rng.uniform(1.0, 1.3), angle=ang)
        )
    return layer


def mark_erased(b: Bubble, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Residue of an erased fill: a faint, smudgy blob (alpha, strength). Returns a soft alpha layer."""
    layer = blob(b, rng.uniform(0.7, 1.15), rng, size, tuple(rng.normal(0, 0.08 * b.rx, 2)))
    if rng.random() < 0.4:
        layer = np.maximum(layer, zigzag(b, rng, size, b.rx * 0.12, b.rx * 0.15, reach=1.05))
    k = int(max(3, b.rx * 0.3)) | 1
    layer = cv2.GaussianBlur(layer, (k, k), 0)
    return layer, float(rng.uniform(0.05, 0.2))


MARKERS = {
    "filled": mark_filled,
    "partial": mark_partial,
    "dot": mark_dot,
    "cross": mark_cross,
    "scribble": mark_scribble,
}


def texture(alpha: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Pencil/ballpoint grain: modulate alpha with smoothed noise (amount 0 = solid)."""
    if amount <= 0:
        return alpha
    noise = cv2.GaussianBlur(rng.random(alpha.shape).astype(np.float32), (3, 3), 0)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-6)
    return alpha * np.clip(1.0 - amount + amount * 1.6 * noise, 0.0, 1.0)


def coverage(mark: np.ndarray, interior: np.ndarray) -> float:
    return float((to_alpha(mark)[interior] > 0.5).mean()) if interior.any() else 0.0
