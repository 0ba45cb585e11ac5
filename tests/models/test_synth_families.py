"""The renderer families of issue 12, measured on the rendered pixels (statistics, not snapshots).

Each test renders a few dozen seeded crops of one family and checks what the phenomenon looks like: halftoned
crops are bilevel dot patterns with solid print, HB graphite is lighter than the printed letter and grainy, dark
blobs leave a white crescent, strokes cross the outline, erasure residue is faint, dots are small.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.synth import render_sample
from models.synth.families import MARK_FAMILIES, luma
from models.synth.halftone import halftone_capture
from models.synth.measure import (
    bilevel_fraction,
    mark_darkness,
    outside_mask,
    pixel_coverage,
    printed_darkness,
)
from models.synth.render import CANVAS, Sample


def _render(label: str, family: str | None, n: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [render_sample(label, rng, family=family) for _ in range(n)]


@pytest.mark.parametrize("kind", ["bayer", "clustered", "fs"])
def test_halftone_capture_turns_grey_into_dots_and_keeps_print_solid(kind: str) -> None:
    canvas = np.ones((CANVAS, CANVAS), np.float32)
    canvas[:, :24] = 0.05  # solid black print
    canvas[:, 40:72] = 0.55  # mid-grey graphite
    rng = np.random.default_rng(3)
    for _ in range(6):
        out = halftone_capture(canvas, 64, rng, when="after", kind=kind)
        assert set(np.unique(out).tolist()) <= {0, 255}
        solid, grey, paper = out[:, 2:13], out[:, 30:45], out[:, 52:62]
        assert (solid == 0).mean() > 0.95
        assert 0.2 < (grey == 0).mean() < 0.8
        assert (np.diff(grey.astype(int), axis=1) != 0).mean() > 0.15  # a dot pattern, not a solid patch
        assert (paper == 255).mean() > 0.95


def test_halftone_family_crops_are_near_bilevel_for_every_class() -> None:
    for label in ("empty", "filled", "partial", "cross"):
        fractions = [bilevel_fraction(s.image) for s in _render(label, "halftone", 30, 11)]
        assert np.median(fractions) > 0.75, label
    scans = [bilevel_fraction(render_sample("filled", np.random.default_rng(i), native=32).image) for i in range(30)]
    assert np.median(scans) < 0.75  # the base distribution is not mostly bilevel: the family adds it


def _hb(n: int, seed: int) -> list[Sample]:
    out = []
    for s in _render("filled", "pencil", n, seed) + _render("partial", "pencil", n, seed + 1):
        if s.info["instrument"] == "hb":
            out.append(s)
    return out


def test_pencil_hb_shading_is_lighter_than_the_printed_letter() -> None:
    compared = 0
    for s in _hb(60, 21):
        inter, ink, prn = s.info["interior"], mark_darkness(s), printed_darkness(s)
        inner = cv2.erode(inter.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # off the outline's edge
        if not inner.any() or prn[inner].max() < 0.1:
            continue
        letter = inner & (prn > 0.7 * prn[inner].max())  # the printed glyph, however light its print
        graphite = inter & (ink > 0.1) & (prn < 0.02)
        if letter.sum() < 4 or graphite.sum() < 20:
            continue
        compared += 1
        canvas = s.info["canvas"] / s.info["paper"]
        assert canvas[letter].mean() < canvas[graphite].mean() - 0.1  # the letter stays darker than the graphite
        assert 0.1 < ink[graphite].mean() < 0.62  # light-to-mid grey, not black
    assert compared >= 20


def test_pencil_graphite_has_grain() -> None:
    cvs = []
    for s in _render("filled", "pencil", 40, 31):
        ink = mark_darkness(s)[s.info["interior"]]
        ink = ink[ink > 0.05]
        cvs.append(ink.std() / ink.mean())
    pen = []
    for s in _render("filled", None, 80, 32):
        if s.info["instrument"] == "pen":
            ink = mark_darkness(s)[s.info["interior"]]
            ink = ink[ink > 0.05]
            pen.append(ink.std() / ink.mean())
    assert np.median(cvs) > 0.15 and np.median(cvs) > 2 * np.median(pen)


def test_pencil_dark_blob_leaves_a_white_crescent_or_ring() -> None:
    blobs = [s for s in _render("partial", "pencil", 80, 41) if s.info["style"] == "crescent"]
    assert len(blobs) >= 15
    for s in blobs:
        inter, ink = s.info["interior"], mark_darkness(s)
        white = (ink < 0.05)[inter].mean()
        assert 0.15 < white < 0.6  # a visible white crescent/ring inside the outline
        assert np.percentile(ink[inter & (ink > 0.05)], 75) > 0.45  # and the blob itself is dark


def test_pencil_coverage_on_pixels_follows_the_class_bands() -> None:
    assert min(pixel_coverage(s) for s in _render("filled", "pencil", 40, 51)) >= 0.7
    partial = [pixel_coverage(s) for s in _render("partial", "pencil", 40, 52)]
    assert min(partial) >= 0.2 and max(partial) <= 0.78


def test_pencil_sheets_are_often_small_200dpi_crops() -> None:
    sizes = [s.image.shape[0] for s in _render("filled", "pencil", 60, 61)]
    assert np.mean(np.array(sizes) <= 30) > 0.4


def test_stroke_goes_through_the_outline_and_a_strike_spans_the_row() -> None:
    for s in _render("cross", "stroke", 50, 71):
        ink = mark_darkness(s) > 0.25
        b = s.info["bubble"]
        assert (ink & s.info["interior"]).sum() >= 3
        assert (ink & outside_mask(b, CANVAS)).sum() >= 3
        if s.info["style"] == "strike":
            assert ink[:, :4].any() and ink[:, -4:].any()


def test_tick_boxes_come_in_several_aspect_ratios_with_the_tick_inside() -> None:
    samples = _render("cross", "tick", 60, 81)
    aspects = np.array([s.info["bubble"].rx / s.info["bubble"].ry for s in samples])
    assert np.mean(aspects >= 1.25) > 0.3 and np.mean(aspects <= 0.8) > 0.08
    for s in samples:
        assert ((mark_darkness(s) > 0.25) & s.info["interior"]).sum() >= 3
        assert pixel_coverage(s) < 0.6  # strokes, not a fill


def test_dot_ink_area_is_small_and_often_over_the_printed_letter() -> None:
    over = 0
    samples = _render("dot", "dot", 60, 91)
    for s in samples:
        assert 0 < pixel_coverage(s) <= 0.22
        ink = mark_darkness(s) > 0.2
        over += bool((ink & (printed_darkness(s) > 0.3) & s.info["interior"]).any())
    assert over / len(samples) > 0.3


def test_erased_residue_is_faint_but_present_over_a_printed_glyph() -> None:
    samples = _render("erased", "erased", 60, 101)
    with_glyph = 0
    for s in samples:
        inter, ink = s.info["interior"], mark_darkness(s)
        assert np.percentile(ink[inter], 95) <= 0.3  # faint: far lighter than any fill
        assert ink[inter].mean() > 0.015  # but there: what tells it from an empty
        with_glyph += bool((printed_darkness(s)[inter] > 0.3).sum() >= 4)
    assert with_glyph / len(samples) > 0.5


def test_scribble_hatching_covers_more_than_a_cross_and_overflows_the_box() -> None:
    scribbles = _render("scribble", "scribble", 40, 111)
    crosses = _render("cross", None, 40, 112)
    assert np.median([pixel_coverage(s) for s in scribbles]) > np.median([pixel_coverage(s) for s in crosses]) + 0.15
    out = [((mark_darkness(s) > 0.25) & outside_mask(s.info["bubble"], CANVAS)).sum() >= 10 for s in scribbles]
    assert np.mean(out) > 0.8


def test_colour_print_reads_as_light_grey() -> None:
    assert luma(np.array([255.0, 0, 0])) == pytest.approx(0.299) and luma(np.array([0, 0, 255.0])) == pytest.approx(
        0.114
    )
    colour = [np.percentile(printed_darkness(s), 99.5) for s in _render("empty", "colour", 40, 121)]
    base = [np.percentile(printed_darkness(s), 99.5) for s in _render("empty", None, 40, 122)]
    assert 0.15 < np.median(colour) < 0.75 and np.median(colour) < np.median(base) - 0.1


def test_families_are_a_minority_share_of_each_class() -> None:
    rng = np.random.default_rng(131)
    for label, fams in MARK_FAMILIES.items():
        drawn = [render_sample(label, rng).info["family"] for _ in range(150)]
        for fam, p in fams.items():
            assert abs(np.mean([d == fam for d in drawn]) - p) < 0.12, (label, fam)
        assert np.mean([d is None or d == "colour" for d in drawn]) >= 0.35, label  # the base renderer keeps most
