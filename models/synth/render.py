"""One synthetic crop: layout -> marks -> compose -> capture. Deterministic given the Generator.

Canvas convention: a square of CANVAS px is the crop; the bubble's outer size is CANVAS / margin with
margin in [1.1, 2.0] (the engine's crop is 1.1x-2x the bubble). Reflectances multiply: paper x print x ink.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.synth import families as F
from models.synth import layout as L
from models.synth import marks as M
from models.synth import pencil as P
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
    elif shape == "square" and rng.random() < 0.3:  # rectangular check boxes, wide (27x18 px) or tall
        if rng.random() < 0.7:
            ry = rx / rng.uniform(1.15, 1.8)
        else:
            rx = ry / rng.uniform(1.15, 1.8)
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
    b: L.Bubble,
    rng: np.random.Generator,
    size: int,
    with_bubble: bool,
    max_tone: float = 1.0,
    glyph: bool = False,
    colour: bool = False,
) -> tuple[np.ndarray, list[L.Bubble]]:
    """Alpha x tone of everything printed: (1 - alpha*(1-tone)) is its reflectance factor.

    glyph forces a printed letter/digit inside; colour prints in a coloured ink seen as grey (BT.601 luma).
    """
    outline = L.new_layer(size)
    inner = L.new_layer(size)
    if with_bubble:
        L.draw_outline(outline, b, rng)
        p_glyph = 0.15 if b.shape == "square" else 0.65
        if glyph or rng.random() < p_glyph:
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
    tone = min(F.colour_tone(rng) if colour else _print_tone(rng), max_tone)
    glyph_tone = min(0.9, max_tone, tone + rng.uniform(0.0, 0.5)) if rng.random() < 0.5 else tone
    factor = (1 - L.to_alpha(outline) * (1 - tone)) * (1 - L.to_alpha(inner) * (1 - glyph_tone))
    return factor, neighbours


def _ink(alpha: np.ndarray, tone: float) -> np.ndarray:
    return 1 - alpha * (1 - tone)


@dataclass
class _Mark:
    factor: np.ndarray  # reflectance factor of the respondent's mark
    coverage: float  # measured interior coverage of its shape
    max_print_tone: float = 1.0  # print must be at least this dark (HB graphite is lighter than the letter)
    glyph: bool = False  # force a printed glyph under the mark
    style: str = ""  # the family's variant, "" for the base renderer
    instrument: str = ""


def _mark(
    label: str, b: L.Bubble, rng: np.random.Generator, size: int, family: str | None = None, colour: bool = False
) -> _Mark:
    """The respondent's mark for `label`, from the base renderer or from a mark family (families.py)."""
    d = b.rx + b.ry
    if label in ("empty", "no_bubble"):
        return _Mark(np.ones((size, size), np.float32), 0.0)
    if label == "erased":
        if family == "erased":  # pencil ID grids: smeared, partly removed residue over the printed digit
            alpha, strength = P.erased_residue(b, rng, size)
            alpha = M.texture(alpha, rng.uniform(0.0, 0.3), rng)
            return _Mark(_ink(alpha, 1 - strength), 0.0, glyph=rng.random() < 0.75, style="residue")
        layer, strength = M.mark_erased(b, rng, size)
        alpha = M.texture(L.to_alpha(layer), rng.uniform(0.2, 0.7), rng)
        return _Mark(_ink(alpha, 1 - strength), 0.0)
    interior = L.interior_mask(b, size)
    lo, hi = M.COVERAGE.get(label, (0.0, 1.0))
    strokes_only = ("pen", "ballpoint", "pencil", "marker")
    ins = M.pick_instrument(rng, d, None if label in ("filled", "partial") else strokes_only)
    cap, glyph, style = None, False, ""
    for _ in range(12):
        if family:
            fm = F.draw(family, label, b, rng, size)
            layer, ins, cap, glyph, style = fm.layer, fm.ins, fm.glyph_max_tone, fm.glyph, fm.style
        else:
            layer = M.MARKERS[label](b, rng, size, ins)
        cov = M.coverage(layer, interior)
        if lo <= cov <= hi:
            break
    else:
        raise _Retry
    if colour and ins.name != "hb" and rng.random() < 0.35:  # a coloured pen (red fills read light grey)
        ins.tone = F.colour_tone(rng, ink=True)
    if ins.name in ("hb", "graphite"):
        alpha = P.grain(L.to_alpha(layer), ins.texture, rng)
    else:
        alpha = M.texture(L.to_alpha(layer), ins.texture, rng)
    return _Mark(_ink(alpha, ins.tone), cov, 1.0 if cap is None else max(cap, 0.0), glyph, style, ins.name)


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


def render_sample(label: str, rng: np.random.Generator, native: int | None = None, family: str | None = None) -> Sample:
    """Render one crop of class `label` at a random (or given) native size.

    family forces one family of families.py (contact sheets, tests); None draws them at their usual rates.
    info keeps the pre-capture canvas ("canvas", reflectance), the same without the mark ("unmarked"), the
    bubble interior mask ("interior") and the family, so tests can measure marks on the pixels.
    """
    if family is not None and family not in F.FAMILY_LABELS:
        raise ValueError(f"unknown family {family!r}; one of {F.FAMILIES}")
    if family and F.FAMILY_LABELS[family] and label not in F.FAMILY_LABELS[family]:
        raise ValueError(f"family {family!r} draws {F.FAMILY_LABELS[family]}, not {label!r}")
    size = CANVAS
    keep_white: float | None = None
    for _ in range(20):
        try:
            page = L.paper(size, rng)
            fam = family if family is not None else F.pick(label, rng)
            mark_fam = fam if fam and F.FAMILY_LABELS[fam] else None
            colour = fam == "colour" or (family is None and rng.random() < F.P_COLOUR)
            if label == "no_bubble":
                factor, cov, kind = _no_bubble_layout(rng, size)
                unmarked = factor
                info: dict[str, object] = {"kind": kind, "interior": np.zeros((size, size), bool)}
            else:
                b = _bubble(rng, size, F.shape_for(mark_fam, rng))
                F.reshape(b, mark_fam, rng)
                if label == "partial":  # what tells partial from filled is the visible outline around the ink
                    b.thickness = max(b.thickness, (b.rx + b.ry) * 0.06)
                mk = _mark(label, b, rng, size, mark_fam, colour)
                max_tone = min(0.45 if label == "partial" else 1.0, mk.max_print_tone)
                printed, neighbours = _printed(b, rng, size, True, max_tone, glyph=mk.glyph, colour=colour)
                unmarked = printed * _neighbour_ink(neighbours, rng, size)
                factor, cov = unmarked * mk.factor, mk.coverage
                if label == "erased":  # a 1-bit scan drops residue out to white, never to solid black
                    keep_white = float((page * mk.factor).min())
                info = {"shape": b.shape, "interior": L.interior_mask(b, size), "bubble": b}
                info.update(style=mk.style, instrument=mk.instrument, printed=printed)
            break
        except _Retry:
            continue
    else:
        raise RuntimeError(f"could not render a {label!r} crop")
    small = fam == "pencil" and native is None and rng.random() < 0.5  # 200-dpi pencil sheets: 16-30 px crops
    n = native or (int(rng.integers(16, 31)) if small else _native_size(rng))
    mode = "halftone" if fam == "halftone" or (fam == "pencil" and rng.random() < 0.15) else None
    info.update(native=n, family=fam, capture=mode, paper=page, canvas=page * factor, unmarked=page * unmarked)
    return Sample(capture(page * factor, n, rng, mode, keep_white), label, cov, info)
