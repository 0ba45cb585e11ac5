"""One synthetic crop: layout -> marks -> compose -> capture. Deterministic given the Generator.

Canvas convention: a square of CANVAS px is the crop; the bubble's outer size is CANVAS / margin with
margin in [1.1, 2.0] (the engine's crop is 1.1x-2x the bubble). Reflectances multiply: paper x print x ink.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.synth import layout as L
from models.synth import marks as M
from models.synth.capture import capture

CANVAS = 96


@dataclass
class Sample:
    image: np.ndarray  # uint8 native-size grayscale crop
    label: str
    coverage: float  # fraction of the bubble interior under the mark (0 for unmarked classes)
    info: dict[str, object] = field(default_factory=dict)


def _native_size(rng: np.random.Generator) -> int:
    # engines often crop small (20-32 px) from phone photos: give that regime extra weight
    hi = 32 if rng.random() < 0.35 else 128
    return int(np.clip(np.exp(rng.uniform(np.log(16), np.log(hi))), 16, 128))


def _bubble(rng: np.random.Generator, size: int, shape: str | None = None) -> L.Bubble:
    shape = shape or str(rng.choice(L.SHAPES, p=[0.4, 0.25, 0.12, 0.23]))
    margin = rng.uniform(1.1, 2.0)
    outer = size / margin
    rx = ry = outer / 2
    if shape == "ellipse":
        aspect = rng.uniform(1.15, 2.0)
        if rng.random() < 0.75:
            ry = rx / aspect
        else:
            rx = ry / aspect
    elif shape == "rounded_rect" and rng.random() < 0.5:
        ry = rx / rng.uniform(1.0, 1.5)
    thickness = max(1.0, outer * rng.uniform(0.015, 0.08))
    off = rng.normal(0, 0.04 * size, 2).clip(-0.12 * size, 0.12 * size)
    corner = rng.uniform(0.0, 0.15) if shape == "square" else rng.uniform(0.3, 0.8)
    return L.Bubble(shape, size / 2 + off[0], size / 2 + off[1], rx, ry, thickness, corner)


def _print_tone(rng: np.random.Generator) -> float:
    u = rng.random()
    if u < 0.6:
        return rng.uniform(0.0, 0.35)  # black print
    if u < 0.88:
        return rng.uniform(0.35, 0.6)  # grey print
    return rng.uniform(0.6, 0.75)  # light / orange drop-out print seen in grayscale


def _printed(
    b: L.Bubble, rng: np.random.Generator, size: int, with_bubble: bool, max_tone: float = 1.0
) -> tuple[np.ndarray, list[L.Bubble]]:
    """Alpha x tone of everything printed: (1 - alpha*(1-tone)) is its reflectance factor."""
    outline = L.new_layer(size)
    inner = L.new_layer(size)
    if with_bubble:
        L.draw_outline(outline, b, rng)
        p_glyph = 0.15 if b.shape == "square" else 0.65
        if rng.random() < p_glyph:
            L.draw_glyph(inner, b, rng)
        elif rng.random() < 0.2:
            L.draw_icon(inner, b, rng)  # printed icons, often light grey (not a mark)
    neighbours = L.draw_neighbours(outline, b, size, rng) if rng.random() < 0.5 else []
    if rng.random() < 0.2:
        L.draw_side_text(outline, b, size, rng)
    if rng.random() < (0.45 if b.shape == "square" else 0.15):
        L.draw_lines(outline, b, size, rng)
    if b.shape == "square" and rng.random() < 0.15:
        L.draw_arrow(outline, b, rng)
    tone = min(_print_tone(rng), max_tone)
    glyph_tone = min(0.9, tone + rng.uniform(0.0, 0.5)) if rng.random() < 0.5 else tone
    factor = (1 - L.to_alpha(outline) * (1 - tone)) * (1 - L.to_alpha(inner) * (1 - glyph_tone))
    return factor, neighbours


def _ink(alpha: np.ndarray, tone: float) -> np.ndarray:
    return 1 - alpha * (1 - tone)


def _mark(label: str, b: L.Bubble, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """Reflectance factor of the respondent's mark and its measured interior coverage."""
    d = b.rx + b.ry
    if label in ("empty", "no_bubble"):
        return np.ones((size, size), np.float32), 0.0
    if label == "erased":
        layer, strength = M.mark_erased(b, rng, size)
        alpha = M.texture(L.to_alpha(layer), rng.uniform(0.2, 0.7), rng)
        return _ink(alpha, 1 - strength), 0.0
    interior = L.interior_mask(b, size)
    lo, hi = M.COVERAGE.get(label, (0.0, 1.0))
    strokes_only = ("pen", "ballpoint", "pencil", "marker")
    ins = M.pick_instrument(rng, d, None if label in ("filled", "partial") else strokes_only)
    for _ in range(12):
        layer = M.MARKERS[label](b, rng, size, ins)
        cov = M.coverage(layer, interior)
        if lo <= cov <= hi:
            break
    else:
        raise _Retry
    alpha = M.texture(L.to_alpha(layer), ins.texture, rng)
    return _ink(alpha, ins.tone), cov


class _Retry(Exception):
    """The sampled geometry could not produce the class's coverage band: sample again."""


def _neighbour_ink(neighbours: list[L.Bubble], rng: np.random.Generator, size: int) -> np.ndarray:
    factor = np.ones((size, size), np.float32)
    for nb in neighbours:
        if rng.random() < 0.35:
            ins = M.pick_instrument(rng, nb.rx + nb.ry)
            mark = M.mark_filled(nb, rng, size, ins) if rng.random() < 0.7 else M.mark_cross(nb, rng, size, ins)
            factor *= _ink(M.texture(L.to_alpha(mark), ins.texture, rng), ins.tone)
    return factor


def _no_bubble_layout(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float, str]:
    """Crops where the engine's alignment failed: blank paper, text, a rule, half a bubble, a gap."""
    kind = str(rng.choice(["blank", "text", "line", "half", "gap"], p=[0.2, 0.25, 0.15, 0.3, 0.1]))
    factor = np.ones((size, size), np.float32)
    if kind == "half":
        b = _bubble(rng, size)
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.55, 0.95) * size / 2 + max(b.rx, b.ry) * 0.5
        b.cx, b.cy = size / 2 + dist * np.cos(ang), size / 2 + dist * np.sin(ang)
        f, _ = _printed(b, rng, size, with_bubble=True)
        factor *= f
        if rng.random() < 0.4:
            ins = M.pick_instrument(rng, b.rx + b.ry)
            factor *= _ink(L.to_alpha(M.mark_filled(b, rng, size, ins)), ins.tone)
    elif kind in ("text", "line", "gap"):
        b = _bubble(rng, size)
        layer = L.new_layer(size)
        if kind == "text":
            for _ in range(int(rng.integers(1, 4))):
                b2 = L.Bubble(
                    "circle",
                    rng.uniform(0.1, 0.9) * size,
                    rng.uniform(0.2, 0.9) * size,
                    size * rng.uniform(0.1, 0.25),
                    size * rng.uniform(0.1, 0.25),
                    1,
                    0,
                )
                L.draw_glyph(layer, b2, rng)
        elif kind == "line":
            L.draw_lines(layer, b, size, rng)
        else:
            L.draw_neighbours(layer, b, size, rng)
        factor *= 1 - L.to_alpha(layer) * (1 - _print_tone(rng))
    return factor, 0.0, kind


def render_sample(label: str, rng: np.random.Generator, native: int | None = None) -> Sample:
    """Render one crop of class `label` at a random (or given) native size."""
    size = CANVAS
    for _ in range(20):
        try:
            page = L.paper(size, rng)
            if label == "no_bubble":
                factor, cov, kind = _no_bubble_layout(rng, size)
                info: dict[str, object] = {"kind": kind}
            else:
                b = _bubble(rng, size)
                if label == "partial":  # what tells partial from filled is the visible outline around the ink
                    b.thickness = max(b.thickness, (b.rx + b.ry) * 0.06)
                printed, neighbours = _printed(
                    b, rng, size, with_bubble=True, max_tone=0.45 if label == "partial" else 1.0
                )
                mark, cov = _mark(label, b, rng, size)
                factor = printed * mark * _neighbour_ink(neighbours, rng, size)
                info = {"shape": b.shape}
            break
        except _Retry:
            continue
    else:
        raise RuntimeError(f"could not render a {label!r} crop")
    n = native or _native_size(rng)
    info["native"] = n
    return Sample(capture(page * factor, n, rng), label, cov, info)
