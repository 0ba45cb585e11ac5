"""Printed form content on a square canvas: paper, the bubble/box outline, printed glyphs inside,
neighbouring bubbles, table lines, connectors and routing arrows.

All layers are *alpha* maps in [0, 1] (how much of the light a layer absorbs, before its tone); the
compositor in `render.py` multiplies reflectances, which is how ink on paper behaves (ink over print
never lightens it).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SHIFT = 4  # fixed-point bits for sub-pixel OpenCV drawing
_ONE = 1 << SHIFT
SHAPES = ("circle", "ellipse", "rounded_rect", "square")
GLYPHS = [*list("ABCDEabcde0123456789"), "T", "F", "Y", "N", "10", "x2", "#"]
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX)


@dataclass
class Bubble:
    """Geometry of the bubble under test, in canvas pixels."""

    shape: str
    cx: float
    cy: float
    rx: float  # half width of the outline
    ry: float  # half height
    thickness: float
    corner: float  # corner radius fraction for rounded_rect


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * _ONE), round(y * _ONE)


def new_layer(size: int) -> np.ndarray:
    return np.zeros((size, size), np.uint8)


def to_alpha(layer: np.ndarray) -> np.ndarray:
    return layer.astype(np.float32) * (1.0 / 255.0)


def shape_polygon(b: Bubble, grow: float = 0.0, n: int = 72) -> np.ndarray:
    """Outline polygon (float Nx2) of a bubble, grown (or shrunk if negative) by `grow` pixels."""
    rx, ry = max(b.rx + grow, 0.5), max(b.ry + grow, 0.5)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if b.shape in ("circle", "ellipse"):
        return np.stack([b.cx + rx * np.cos(t), b.cy + ry * np.sin(t)], 1)
    # superellipse approximates rounded rectangles (square: nearly sharp corners)
    p = 2.0 + (1.0 - b.corner) * 14.0
    ct, st = np.cos(t), np.sin(t)
    x = rx * np.sign(ct) * np.abs(ct) ** (2 / p)
    y = ry * np.sign(st) * np.abs(st) ** (2 / p)
    return np.stack([b.cx + x, b.cy + y], 1)


def fill_polygon(layer: np.ndarray, pts: np.ndarray, value: int = 255) -> None:
    cv2.fillPoly(layer, [np.round(pts * _ONE).astype(np.int32)], value, cv2.LINE_AA, SHIFT)


def stroke_polygon(layer: np.ndarray, pts: np.ndarray, thickness: float, closed: bool = True) -> None:
    th = max(1, round(thickness))
    cv2.polylines(layer, [np.round(pts * _ONE).astype(np.int32)], closed, 255, th, cv2.LINE_AA, SHIFT)


def interior_mask(b: Bubble, size: int) -> np.ndarray:
    """Boolean mask of the bubble's interior (inside the outline stroke)."""
    layer = new_layer(size)
    fill_polygon(layer, shape_polygon(b, grow=-b.thickness / 2))
    return layer > 127


def draw_outline(layer: np.ndarray, b: Bubble, rng: np.random.Generator) -> None:
    pts = shape_polygon(b)
    if rng.random() < 0.06:  # dashed/dotted outline (some survey forms)
        n = len(pts)
        for i in range(0, n, 3):
            stroke_polygon(layer, pts[i : i + 2], b.thickness, closed=False)
    else:
        stroke_polygon(layer, pts, b.thickness)


def draw_glyph(layer: np.ndarray, b: Bubble, rng: np.random.Generator, value: int = 255) -> None:
    """A printed letter/digit/icon centred in the bubble (sized to the interior)."""
    text = str(rng.choice(GLYPHS))
    font = int(rng.choice(FONTS))
    target_h = 2 * min(b.rx, b.ry) * rng.uniform(0.4, 0.8)
    (w, h), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = target_h / max(h, 1)
    if w * scale > 1.5 * b.rx:
        scale = 1.5 * b.rx / w
    th = max(1, round(scale * rng.uniform(1.0, 2.6)))
    (w, h), _ = cv2.getTextSize(text, font, scale, th)
    org = (int(b.cx - w / 2 + rng.normal(0, 0.5)), int(b.cy + h / 2 + rng.normal(0, 0.5)))
    cv2.putText(layer, text, org, font, scale, value, th, cv2.LINE_AA)


def draw_icon(layer: np.ndarray, b: Bubble, rng: np.random.Generator) -> None:
    """A small printed icon (triangle, star-ish blob, hand-like shape) inside the bubble."""
    r = min(b.rx, b.ry) * rng.uniform(0.35, 0.75)
    k = int(rng.integers(3, 7))
    t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, np.pi)
    pts = np.stack([b.cx + r * np.cos(t), b.cy + r * np.sin(t)], 1)
    if rng.random() < 0.6:  # shaded icon: a light grey printed blob
        fill_polygon(layer, pts, int(rng.uniform(40, 220)))
    else:
        stroke_polygon(layer, pts, max(1.0, r / 5))


def draw_neighbours(layer: np.ndarray, b: Bubble, size: int, rng: np.random.Generator) -> list[Bubble]:
    """Outlines of the bubbles next to this one (same row/column); returns them for optional ink."""
    out: list[Bubble] = []
    pitch_x = 2 * b.rx * rng.uniform(1.15, 1.9)
    pitch_y = 2 * b.ry * rng.uniform(1.15, 2.2)
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        if rng.random() < 0.45:
            continue
        nb = Bubble(b.shape, b.cx + dx * pitch_x, b.cy + dy * pitch_y, b.rx, b.ry, b.thickness, b.corner)
        if abs(nb.cx - size / 2) - nb.rx > size / 2 or abs(nb.cy - size / 2) - nb.ry > size / 2:
            continue
        draw_outline(layer, nb, rng)
        out.append(nb)
    return out


def draw_side_text(layer: np.ndarray, b: Bubble, size: int, rng: np.random.Generator) -> None:
    """Question numbers / labels printed beside the bubble (they reach into wide crops)."""
    text = str(rng.integers(1, 120))
    scale = b.ry / 14.0 * rng.uniform(0.7, 1.2)
    side = -1 if rng.random() < 0.7 else 1
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = b.cx + side * (b.rx + b.thickness + rng.uniform(2, 8)) - (w if side < 0 else 0)
    cv2.putText(
        layer,
        text,
        (int(x), int(b.cy + h / 2)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        255,
        max(1, int(scale * 2)),
        cv2.LINE_AA,
    )


def draw_lines(layer: np.ndarray, b: Bubble, size: int, rng: np.random.Generator) -> None:
    """Table rules or dotted connector lines (queXF-style) running past the bubble."""
    th = max(1.0, b.thickness * rng.uniform(0.4, 1.0))
    dotted = rng.random() < 0.5
    if rng.random() < 0.7:  # horizontal through the centre (connector) or a rule above/below
        y = b.cy if rng.random() < 0.6 else b.cy + rng.choice([-1, 1]) * (b.ry + rng.uniform(3, size / 4))
        segs = [(0.0, y, size, y)]
    else:
        x = b.cx + rng.choice([-1, 1]) * (b.rx + rng.uniform(3, size / 4))
        segs = [(x, 0.0, x, size)]
    for x0, y0, x1, y1 in segs:
        n = 40 if dotted else 1
        xs, ys = np.linspace(x0, x1, n + 1), np.linspace(y0, y1, n + 1)
        for i in range(n):
            if dotted and i % 2:
                continue
            cv2.line(layer, _pt(xs[i], ys[i]), _pt(xs[i + 1], ys[i + 1]), 255, max(1, round(th)), cv2.LINE_AA, SHIFT)
    # keep the bubble's interior clear of connector lines (they stop at the outline)
    layer[interior_mask(b, size)] = 0


def draw_arrow(layer: np.ndarray, b: Bubble, rng: np.random.Generator) -> None:
    """A solid routing triangle attached to one side of a box (queXF skip arrows)."""
    side = int(rng.integers(0, 4))
    w = rng.uniform(0.5, 1.0) * b.rx
    d = rng.uniform(0.25, 0.5) * b.rx
    if side == 0:  # below
        y0 = b.cy + b.ry
        pts = [(b.cx - b.rx, y0), (b.cx + b.rx, y0), (b.cx + w, y0 + d), (b.cx - w, y0 + d)]
    elif side == 1:  # right
        x0 = b.cx + b.rx
        pts = [(x0, b.cy - b.ry), (x0 + d, b.cy - w), (x0 + d, b.cy + w), (x0, b.cy + b.ry)]
    elif side == 2:  # left
        x0 = b.cx - b.rx
        pts = [(x0, b.cy - b.ry), (x0 - d, b.cy - w), (x0 - d, b.cy + w), (x0, b.cy + b.ry)]
    else:  # above
        y0 = b.cy - b.ry
        pts = [(b.cx - b.rx, y0), (b.cx + b.rx, y0), (b.cx + w, y0 - d), (b.cx - w, y0 - d)]
    fill_polygon(layer, np.array(pts, np.float64))


def paper(size: int, rng: np.random.Generator) -> np.ndarray:
    """Paper reflectance with uneven light: a tilted plane plus a soft blob, a little fibre noise."""
    base = rng.uniform(0.72, 1.0) if rng.random() < 0.6 else rng.uniform(0.88, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = rng.normal(0, 0.06, 2)
    light = base + g[0] * xx + g[1] * yy
    if rng.random() < 0.3:
        cx, cy, s = [*rng.uniform(-0.5, 0.5, 2).tolist(), rng.uniform(0.2, 0.6)]
        light -= rng.uniform(0, 0.12) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return np.clip(light, 0.3, 1.0).astype(np.float32)
