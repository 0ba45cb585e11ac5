"""Sheet context: the pixel statistic, the size groups, and when the context may (and may not) move a crop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.core.context import decide_by_sheet, decide_request
from service.core.modelconfig import SheetSpec, load_config
from service.core.sheet import STAT_NAMES, crop_stats, sheet_moves, size_groups
from service.settings import BUNDLED_REPOSITORY

CONFIG = load_config(BUNDLED_REPOSITORY / "omr-bubble" / "1")
CLASSES = CONFIG.classes
SPEC = SheetSpec()
BOTH_WAYS = SPEC.model_copy(update={"move_to_unmarked": True})


def bubble(fill_level: int | None, paper: int = 230, side: int = 32, fill_radius: float = 0.3) -> np.ndarray:
    """A model-size crop: paper, a printed outline, optionally an inner fill of grey `fill_level`."""
    img = np.full((side, side), paper, np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 3, 40, 1)
    if fill_level is not None:
        cv2.circle(img, (side // 2, side // 2), int(side * fill_radius), fill_level, -1)
    return img


# -- the statistic ---------------------------------------------------------------------------------


def test_crop_stats_paper_is_zero_and_black_inner_disc_is_one() -> None:
    stats = crop_stats(np.stack([bubble(None), bubble(0)]))
    assert stats.shape == (2, len(STAT_NAMES)) and stats.dtype == np.float32
    inner = STAT_NAMES.index("inner_darkness")
    assert stats[0, inner] == pytest.approx(0.0, abs=1e-6)
    assert stats[1, inner] == pytest.approx(1.0, abs=1e-6)
    assert stats[:, STAT_NAMES.index("bright")] == pytest.approx([230 / 255, 230 / 255])


def test_crop_stats_is_relative_to_the_paper_level() -> None:
    # the same fill on a bright and on a dim capture: 1 - 115/230 = 1 - 60/120 = 0.5
    bright, dim = crop_stats(np.stack([bubble(115, paper=230), bubble(60, paper=120)]))[:, 0]
    assert bright == pytest.approx(0.5, abs=0.01) and dim == pytest.approx(0.5, abs=0.01)


def test_crop_stats_bright_level_survives_ink_in_one_corner() -> None:
    img = bubble(None)
    img[:4, :4] = 0  # a neighbour's ink in the top-left corner
    assert crop_stats(img[None])[0, STAT_NAMES.index("bright")] == pytest.approx(230 / 255)


@pytest.mark.parametrize("n, cut", [(100, 50), (101, 50), (500, 250), (300, 256), (513, 7)])
def test_crop_stats_of_two_parts_equal_the_whole_sheet_bit_for_bit(n: int, cut: int) -> None:
    """A split sheet's far worker sends its crops' statistics, not its rows (`service.core.parts`): each crop's
    numbers must not depend on which other crops were measured with it (nor on the 256-row chunking)."""
    rng = np.random.default_rng(n)
    rows = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    rows[::3] = np.stack([bubble(int(v)) for v in rng.integers(0, 200, len(rows[::3]))])
    whole = crop_stats(rows)
    np.testing.assert_array_equal(np.concatenate([crop_stats(rows[:cut]), crop_stats(rows[cut:])]), whole)


def test_crop_stats_of_no_rows() -> None:
    assert crop_stats(np.zeros((0, 32, 32), np.uint8)).shape == (0, len(STAT_NAMES))


# -- groups ----------------------------------------------------------------------------------------


def test_size_groups_split_by_size_and_aspect_but_not_by_a_pixel() -> None:
    sizes = np.array([[20, 20], [21, 20], [40, 40], [41, 41], [18, 27], [88, 88], [90, 90]])
    g = size_groups(sizes, len(sizes), 1.25)
    assert g[0] == g[1] and g[2] == g[3] and g[5] == g[6]
    assert len({g[0], g[2], g[4], g[5]}) == 4
    assert size_groups(None, 5, 1.25).tolist() == [0] * 5


# -- the rule --------------------------------------------------------------------------------------


def sheet(empties: int, fills: int, doubtful: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(marked_p, darkness): confident empties (mp 0.01, dark 0.05), fills (mp 0.99, dark 0.8), then doubtful."""
    mp = [0.01] * empties + [0.99] * fills + [p for p, _ in doubtful]
    dark = [0.05] * empties + [0.8] * fills + [d for _, d in doubtful]
    return np.array(mp), np.array(dark)


def test_sheet_moves_a_doubtful_dark_crop_to_marked_and_leaves_a_light_one() -> None:
    mp, dark = sheet(10, 5, [(0.3, 0.6), (0.3, 0.2), (0.06, 0.43), (0.06, 0.42)])
    moved = sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC)
    # cut = 0.05 + 0.5 * (0.8 - 0.05) = 0.425: 0.6 and 0.43 move; 0.2 and 0.42 stay
    assert moved.tolist() == [False] * 15 + [True, False, True, False]


def test_sheet_a_dark_confident_empty_raises_the_unmarked_level() -> None:
    # one confident unmarked crop as dark as a fill (a printed glyph, a dot the model is sure of) makes the
    # unmarked level high: the context gets more cautious, never bolder
    mp, dark = sheet(10, 5, [(0.04, 0.9), (0.3, 0.6)])
    assert not sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC).any()


def test_sheet_never_moves_confident_crops() -> None:
    mp, dark = sheet(10, 5, [(0.01, 0.9), (0.99, 0.0)])
    assert not sheet_moves(
        mp, dark, np.zeros(len(mp), np.int64), SPEC.model_copy(update={"move_to_unmarked": True})
    ).any()


@pytest.mark.parametrize(
    ("empties", "fills"),
    [(0, 12), (2, 12), (2, 2), (0, 0)],
    ids=["all-filled", "two-empties", "two-of-each", "only-doubtful"],
)
def test_sheet_without_enough_confident_empties_keeps_the_model(empties: int, fills: int) -> None:
    mp, dark = sheet(empties, fills, [(0.3, 0.7), (0.6, 0.02), (0.45, 0.6)])
    assert not sheet_moves(mp, dark, np.zeros(len(mp), np.int64), BOTH_WAYS).any()


def test_sheet_all_empty_with_doubtful_empties_keeps_the_model() -> None:
    # empties whose printed glyphs or erasure residue make them darker and doubtful: within the jump of the
    # sheet's confident empties, nothing becomes marked
    mp, dark = sheet(12, 0, [(0.3, 0.25), (0.45, 0.39), (0.2, 0.1)])
    assert not sheet_moves(mp, dark, np.zeros(len(mp), np.int64), BOTH_WAYS).any()


def test_sheet_without_confident_marks_moves_only_a_big_jump_above_the_empties() -> None:
    # every mark on the sheet is doubtful to the model: no marked level, but 0.05 + 0.35 = 0.40 is the bar
    mp, dark = sheet(12, 2, [(0.3, 0.41), (0.3, 0.39), (0.6, 0.0)])
    groups = np.zeros(len(mp), np.int64)
    assert sheet_moves(mp, dark, groups, BOTH_WAYS).tolist() == [False] * 14 + [True, False, False]
    assert not sheet_moves(mp, dark, groups, SPEC.model_copy(update={"jump_without_marked": None})).any()


def test_sheet_needs_a_clear_gap_between_the_levels() -> None:
    mp = np.array([0.01] * 5 + [0.99] * 5 + [0.3])
    dark = np.array([0.30] * 5 + [0.36] * 5 + [0.36])  # levels 0.06 apart < min_gap 0.10
    assert not sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC).any()
    assert sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC.model_copy(update={"min_gap": 0.05}))[-1]


def test_sheet_groups_do_not_poison_each_other() -> None:
    # group 0: bubbles with pale empties and dark fills; group 1: boxes whose empties hold dark printed digits
    mp = np.array([0.01] * 5 + [0.99] * 5 + [0.3] + [0.01] * 5 + [0.99] * 3 + [0.3])
    dark = np.array([0.05] * 5 + [0.8] * 5 + [0.5] + [0.45] * 5 + [0.95] * 3 + [0.5])
    groups = np.array([0] * 11 + [1] * 9)
    moved = sheet_moves(mp, dark, groups, SPEC)
    assert moved[10] and not moved[19]  # 0.5 is fill-side for the bubbles (cut 0.425), not for the boxes (0.7)
    one_group = sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC)
    assert not one_group[10]  # pooled, the boxes' dark empties would have hidden the bubble's mark


def test_sheet_move_to_unmarked_only_when_enabled() -> None:
    mp, dark = sheet(10, 5, [(0.6, 0.05), (0.6, 0.3)])
    groups = np.zeros(len(mp), np.int64)
    assert not sheet_moves(mp, dark, groups, SPEC).any()
    # un-mark cut = 0.05 + 0.25 x 0.75 = 0.2375: 0.05 looks like the empties, 0.3 (a light tick?) stays marked
    assert sheet_moves(mp, dark, groups, BOTH_WAYS).tolist() == [False] * 15 + [True, False]


def test_sheet_disabled_moves_nothing() -> None:
    mp, dark = sheet(10, 5, [(0.3, 0.6)])
    assert not sheet_moves(mp, dark, np.zeros(len(mp), np.int64), SPEC.model_copy(update={"enabled": False})).any()


# -- through decide_request ------------------------------------------------------------------------


def probs_for(marked_p: list[float]) -> np.ndarray:
    """Rows with `filled` = mp and `empty` = 1 - mp."""
    out = np.zeros((len(marked_p), len(CLASSES)), np.float32)
    out[:, CLASSES.index("filled")] = marked_p
    out[:, CLASSES.index("empty")] = 1 - np.array(marked_p)
    return out


def test_decide_request_moves_the_doubtful_crop_and_keeps_probabilities() -> None:
    rows = np.stack([bubble(None)] * 6 + [bubble(20)] * 4 + [bubble(60)])
    probs = probs_for([0.01] * 6 + [0.99] * 4 + [0.3])
    decisions = decide_request(probs, crop_stats(rows), CONFIG, "ink")
    d = decisions[-1]
    assert d.marked and d.decided_by == "sheet" and "sheet_context" in d.review_reasons
    assert d.label == "filled" and d.marked_probability == pytest.approx(0.3)
    assert d.probabilities["empty"] == pytest.approx(0.7)
    assert [x.decided_by for x in decisions[:-1]] == ["model"] * 10
    off = decide_request(probs, crop_stats(rows), CONFIG, "ink", sheet_context=False)
    assert off[-1].marked is False and off[-1].decided_by == "model"
    assert decide_request(probs, None, CONFIG, "ink")[-1].marked is False


def test_decide_request_single_crop_and_uniform_sheets_keep_the_model() -> None:
    single = decide_request(probs_for([0.3]), crop_stats(bubble(60)[None]), CONFIG, "ink")
    assert single[0].marked is False and single[0].decided_by == "model"
    all_filled = np.stack([bubble(20)] * 10 + [bubble(120)] * 3)
    got = decide_request(probs_for([0.99] * 10 + [0.3] * 3), crop_stats(all_filled), CONFIG, "ink")
    assert [d.marked for d in got] == [True] * 10 + [False] * 3  # no empties to compare with: unchanged
    all_empty = np.stack([bubble(None)] * 10 + [bubble(200)] * 3)
    got = decide_request(probs_for([0.01] * 10 + [0.3] * 3), crop_stats(all_empty), CONFIG, "ink")
    assert [d.marked for d in got] == [False] * 13
    assert all(d.decided_by == "model" for d in got)


def test_decide_request_groups_by_native_size() -> None:
    rows = np.stack([bubble(None)] * 6 + [bubble(20)] * 4 + [bubble(60)])
    probs = probs_for([0.01] * 6 + [0.99] * 4 + [0.3])
    sizes = np.array([[20, 20]] * 10 + [[60, 60]])  # the doubtful crop is alone in its size group
    assert decide_request(probs, crop_stats(rows), CONFIG, "ink", sizes=sizes)[-1].marked is False


def test_decide_by_sheet_equals_one_request_per_sheet() -> None:
    rows = np.stack([bubble(None)] * 6 + [bubble(20)] * 4 + [bubble(60)])
    probs = probs_for([0.01] * 6 + [0.99] * 4 + [0.3])
    order = np.random.default_rng(5).permutation(2 * len(rows))  # two copies of the sheet, interleaved
    all_rows, all_probs = np.concatenate([rows, rows])[order], np.concatenate([probs, probs])[order]
    sheets = np.array(["a"] * len(rows) + ["b"] * len(rows))[order].tolist()
    got = decide_by_sheet(all_probs, crop_stats(all_rows), CONFIG, "ink", sheets)
    want = decide_request(probs, crop_stats(rows), CONFIG, "ink")
    assert [got[k] for k in np.argsort(order)] == want + want
    assert sum(d.decided_by == "sheet" for d in got) == 2
    alone = decide_by_sheet(all_probs, crop_stats(all_rows), CONFIG, "ink", [None] * len(all_rows))
    assert all(d.decided_by == "model" for d in alone)  # no sheet id: each crop is its own request
