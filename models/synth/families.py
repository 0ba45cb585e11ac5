"""Families of captures and marks that real unseen sheets showed and the base renderer lacked (issue 12).

A *family* is one generic phenomenon. Capture families apply to every class: `halftone` (dithered 1-bit scans,
see halftone.py) and `colour` (print, and sometimes the mark, in coloured ink seen through BT.601 luma). Mark
families replace the base drawing of one or two classes: `pencil` (filled/partial: HB shading, dark blobs with a
white crescent, open loops), `stroke` (cross: one slash or row strike), `tick` (cross: looped/sloppy ticks in
rectangular boxes), `dot` (dot: hesitation dots and strokes over the printed letter), `erased` (erased: smeared,
partly removed residue over a printed digit), `scribble` (scribble: dense hatching over an X).

The probabilities are a minority share of each class, so the phenomena real-dev already shows well keep most
of the distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.synth import marks as M
from models.synth import pencil as P
from models.synth import strokes as S
from models.synth.layout import Bubble

#: label -> {mark family: probability} for crops rendered without a forced family
MARK_FAMILIES: dict[str, dict[str, float]] = {
    "filled": {"pencil": 0.25},
    "partial": {"pencil": 0.4},
    "cross": {"stroke": 0.12, "tick": 0.18},
    "dot": {"dot": 0.5},
    "erased": {"erased": 0.6},
    "scribble": {"scribble": 0.5},
}
#: share of crops (any label) printed in coloured ink
P_COLOUR = 0.1
#: which labels each family can render (capture families: all)
FAMILY_LABELS: dict[str, tuple[str, ...]] = {
    "halftone": (),
    "colour": (),
    "pencil": ("filled", "partial"),
    "stroke": ("cross",),
    "tick": ("cross",),
    "dot": ("dot",),
    "erased": ("erased",),
    "scribble": ("scribble",),
}
FAMILIES = tuple(FAMILY_LABELS)

# print colours (RGB) as forms use them: light/dark blue, cyan, green, red/pink drop-out, orange, violet
_PRINT_RGB = np.array(
    [[40, 90, 200], [110, 160, 230], [70, 170, 210], [60, 160, 90], [220, 60, 70], [240, 120, 140], [245, 150, 50],
     [130, 80, 180]],
    np.float32,
)  # fmt: skip
_INK_RGB = np.array([[30, 50, 170], [200, 30, 40], [40, 120, 60]], np.float32)  # blue, red, green pens


def luma(rgb: np.ndarray) -> float:
    """BT.601 luma of an RGB colour (0-255), as a reflectance 0..1 (what OpenCV's grey decode gives)."""
    return float(np.dot(rgb, [0.299, 0.587, 0.114]) / 255.0)


def colour_tone(rng: np.random.Generator, ink: bool = False) -> float:
    """Grey tone of a random coloured print (or pen) colour, varied a little in saturation and lightness."""
    table = _INK_RGB if ink else _PRINT_RGB
    rgb = table[rng.integers(len(table))] + rng.normal(0, 18, 3)
    return float(np.clip(luma(np.clip(rgb, 0, 255)), 0.05, 0.85))


def pick(label: str, rng: np.random.Generator) -> str | None:
    """The mark family a crop of `label` is drawn from (None: the base renderer)."""
    fams = MARK_FAMILIES.get(label)
    if not fams:
        return None
    u = rng.random()
    for name, p in fams.items():
        if u < p:
            return name
        u -= p
    return None


def shape_for(family: str | None, rng: np.random.Generator) -> str | None:
    """Bubble shape a family implies (check boxes for ticks and scribble-outs), None for the usual mix."""
    if family == "tick":
        return "square" if rng.random() < 0.8 else "rounded_rect"
    if family == "scribble" and rng.random() < 0.75:
        return "square"
    return None


def reshape(b: Bubble, family: str | None, rng: np.random.Generator) -> None:
    """Rectangular check boxes of several aspect ratios (e.g. 27x18 px, also tall ones) for ticks."""
    if family == "tick" and rng.random() < 0.75:
        aspect = rng.uniform(1.3, 1.8)
        if rng.random() < 0.7:
            b.ry = b.rx / aspect
        else:
            b.rx = b.ry / aspect


@dataclass
class FamilyMark:
    layer: np.ndarray  # alpha of the mark's shape (uint8), before grain
    ins: M.Instrument
    glyph_max_tone: float | None = None  # the printed letter must be darker than this (HB graphite)
    glyph: bool = False  # force a printed glyph inside the bubble
    style: str = ""  # which variant of the family was drawn (tests, contact sheets)


def draw(family: str, label: str, b: Bubble, rng: np.random.Generator, size: int) -> FamilyMark:
    """One mark of a mark family for `label` (raises KeyError if the family cannot draw that label)."""
    if label not in FAMILY_LABELS[family]:
        raise KeyError(f"family {family!r} does not draw {label!r}")
    d = b.rx + b.ry
    if family == "pencil":
        layer, ins, style = (P.pencil_filled if label == "filled" else P.pencil_partial)(b, rng, size)
        cap = ins.tone - rng.uniform(0.15, 0.3) if ins.name == "hb" else None
        return FamilyMark(layer, ins, cap, glyph=ins.name == "hb" and rng.random() < 0.8, style=style)
    if family == "dot":
        ins = M.pick_instrument(rng, d, ("pen", "ballpoint", "pencil"))
        return FamilyMark(S.small_dot(b, rng, size, ins), ins, glyph=rng.random() < 0.75, style="dot")
    ins = M.pick_instrument(rng, d, ("pen", "ballpoint", "pencil", "marker"))
    if family == "stroke":
        style = "slash" if rng.random() < 0.55 else "strike"
        return FamilyMark((S.slash if style == "slash" else S.strike)(b, rng, size, ins), ins, style=style)
    if family == "tick":
        return FamilyMark(S.tick(b, rng, size, ins), ins, style="tick")
    return FamilyMark(S.scribble_over_x(b, rng, size, ins), ins, style="scribble_x")
