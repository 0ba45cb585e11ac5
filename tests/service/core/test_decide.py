"""The served decision on hand-made probability rows: marked, label, confidence, review reasons, decided_by.

Expectations are written out from the documented rule (docs/api.md, "Decision"), not computed with the code
under test: which classes each profile counts as marked is spelled out below as the README of real-dev and
`service/core/taxonomy.py` define it.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.core.context import combine_views, decide_request
from service.core.modelconfig import ModelConfig, ReviewSpec, SheetSpec, TTASpec, load_config
from service.core.postprocess import decide
from service.settings import BUNDLED_REPOSITORY

CONFIG = load_config(BUNDLED_REPOSITORY / "omr-bubble" / "1")
CLASSES = ("empty", "filled", "partial", "dot", "cross", "erased", "scribble", "no_bubble")
#: profile -> classes that count as marked, written out independently of the code
MARKED = {
    "ink": {"filled", "partial", "cross", "scribble"},
    "fill": {"filled", "partial"},
    "check-correct": {"filled", "partial", "cross"},
}


def row(**p: float) -> np.ndarray:
    """One probability row from class=probability pairs; the rest of the mass goes to `no_bubble`."""
    out = np.array([p.get(c, 0.0) for c in CLASSES], np.float64)
    out[CLASSES.index("no_bubble")] += 1.0 - out.sum()
    return out


def rows(*r: np.ndarray) -> np.ndarray:
    return np.stack(r).astype(np.float32)


def with_review(**kw: object) -> ModelConfig:
    return CONFIG.model_copy(update={"review": ReviewSpec(**{**CONFIG.review.model_dump(), **kw})})


def test_bundled_config_has_the_classes_these_tests_assume() -> None:
    assert CONFIG.classes == CLASSES
    for profile, marked in MARKED.items():
        assert {c for c, m in CONFIG.profiles[profile].items() if m} == marked


def test_decide_top_class_unmarked_but_marked_mass_0_6_is_marked_with_a_marked_label() -> None:
    cfg = with_review(min_confidence=0.8, min_binary_margin=0.6)  # thresholds of the test, not the bundled ones
    (d,) = decide(rows(row(empty=0.4, filled=0.35, cross=0.25)), cfg, "ink")
    assert d.marked is True
    assert d.marked_probability == pytest.approx(0.6, abs=1e-6)
    # one story: the label is the best class on the decided (marked) side, its probability the confidence
    assert d.label == "filled"
    assert d.confidence == pytest.approx(0.35, abs=1e-6)
    assert "label_marked_conflict" in d.review_reasons
    assert "low_confidence" in d.review_reasons and "small_binary_margin" in d.review_reasons
    assert d.probabilities["empty"] == pytest.approx(0.4, abs=1e-6)  # probabilities unchanged


def test_decide_top_class_marked_but_marked_mass_0_4_is_unmarked_with_an_unmarked_label() -> None:
    (d,) = decide(rows(row(cross=0.4, empty=0.3, dot=0.3)), CONFIG, "ink")
    assert d.marked is False and d.label in {"empty", "dot"} and d.label != "cross"
    assert "label_marked_conflict" in d.review_reasons


@pytest.mark.parametrize("profile", sorted(MARKED))
@pytest.mark.parametrize("cls", ["cross", "scribble", "filled", "partial", "dot", "empty", "erased"])
def test_decide_confident_class_under_every_profile(profile: str, cls: str) -> None:
    (d,) = decide(rows(row(**{cls: 0.95})), CONFIG, profile)
    assert d.marked is (cls in MARKED[profile])
    assert d.label == cls  # a confident class keeps its label under every profile: no conflict
    assert d.review_reasons == [] and d.review is False
    assert d.decided_by == "model"


def test_decide_cross_and_scribble_split_by_profile() -> None:
    probs = rows(row(cross=0.9), row(scribble=0.9), row(cross=0.45, scribble=0.45))
    ink = [d.marked for d in decide(probs, CONFIG, "ink")]
    fill = [d.marked for d in decide(probs, CONFIG, "fill")]
    check = [d.marked for d in decide(probs, CONFIG, "check-correct")]
    assert ink == [True, True, True]
    assert fill == [False, False, False]
    assert check == [True, False, False]  # cross 0.45 alone is below one half under check-correct
    assert [d.marked_probability for d in decide(probs, CONFIG, "check-correct")] == pytest.approx([0.9, 0, 0.45])


def test_decide_the_half_boundary_is_marked() -> None:
    probs = rows(row(filled=0.5, empty=0.5), row(filled=0.4999, empty=0.5001), row(filled=0.5001, empty=0.4999))
    assert [d.marked for d in decide(probs, CONFIG, "ink")] == [True, False, True]


@pytest.mark.parametrize(("top", "flagged"), [(0.79, True), (0.81, False)])
def test_decide_confidence_threshold_either_side(top: float, flagged: bool) -> None:
    config = with_review(min_confidence=0.8, min_binary_margin=0.0)
    (d,) = decide(rows(row(filled=top)), config, "ink")
    assert ("low_confidence" in d.review_reasons) is flagged
    assert d.review is flagged


@pytest.mark.parametrize(("mp", "flagged"), [(0.79, True), (0.81, False), (0.21, True), (0.19, False)])
def test_decide_binary_margin_threshold_either_side(mp: float, flagged: bool) -> None:
    config = with_review(min_confidence=0.0, min_binary_margin=0.6)  # flag when |mp - 0.5| * 2 < 0.6
    (d,) = decide(rows(row(filled=mp, empty=1 - mp)), config, "ink")
    assert ("small_binary_margin" in d.review_reasons) is flagged
    assert d.review is flagged


def test_decide_tta_disagreement_is_a_review_reason_when_configured() -> None:
    probs = rows(row(filled=0.99), row(filled=0.99))
    agree = np.array([True, False])
    got = [d.review_reasons for d in decide(probs, CONFIG, "ink", agree)]
    assert got == [[], ["tta_disagreement"]]
    off = with_review(tta_disagreement=False)
    assert [d.review_reasons for d in decide(probs, off, "ink", agree)] == [[], []]
    assert [d.review_reasons for d in decide(probs, CONFIG, "ink", None)] == [[], []]


def test_decide_sheet_moved_flips_the_decision_and_says_so() -> None:
    probs = rows(row(empty=0.7, partial=0.3), row(filled=0.99), row(empty=0.99))
    decisions = decide(probs, CONFIG, "ink", sheet_moved=np.array([True, False, False]))
    d = decisions[0]
    assert d.marked is True and d.decided_by == "sheet" and d.label == "partial"
    assert d.marked_probability == pytest.approx(0.3, abs=1e-6)
    assert d.probabilities == pytest.approx(dict(zip(CLASSES, probs[0].tolist(), strict=True)))
    assert {"sheet_context", "label_marked_conflict"} <= set(d.review_reasons)
    assert [x.decided_by for x in decisions[1:]] == ["model", "model"]


def test_decide_review_equals_bool_of_reasons_on_random_rows() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(len(CLASSES), 0.3), size=500).astype(np.float32)
    agree = rng.random(500) > 0.2
    for profile, marked in MARKED.items():
        mask = np.array([c in marked for c in CLASSES])
        for d, p in zip(decide(probs, CONFIG, profile, agree), probs, strict=True):
            assert d.review == bool(d.review_reasons)
            assert d.marked == (float(p[mask].sum()) >= 0.5)
            assert (d.label in marked) == d.marked  # label and marked never contradict
            assert d.confidence == pytest.approx(float(p[CLASSES.index(d.label)]))


def test_combine_views_average_and_review_modes() -> None:
    identity = row(empty=0.6, filled=0.4)
    shifted = row(filled=0.9)
    view_probs = np.stack([np.stack([identity, shifted, shifted])]).astype(np.float32)  # [1, 3, C]
    views = ("identity", "shift_left", "shift_right")
    avg_cfg = CONFIG.model_copy(update={"tta": TTASpec(views=views, mode="average")})
    rev_cfg = CONFIG.model_copy(update={"tta": TTASpec(views=views, mode="review")})
    probs, agree = combine_views(view_probs, avg_cfg, views)
    assert probs[0, CLASSES.index("filled")] == pytest.approx((0.4 + 0.9 + 0.9) / 3, abs=1e-6)
    assert agree.tolist() == [False]
    probs_r, agree_r = combine_views(view_probs, rev_cfg, views)
    np.testing.assert_array_equal(probs_r[0], view_probs[0, 0])  # the identity view decides
    assert agree_r.tolist() == [False]
    assert decide_request(probs, None, avg_cfg, "ink", agree)[0].marked is True
    (d,) = decide_request(probs_r, None, rev_cfg, "ink", agree_r)
    assert d.marked is False and "tta_disagreement" in d.review_reasons


def test_tta_review_mode_requires_the_identity_view() -> None:
    with pytest.raises(ValueError, match="identity"):
        TTASpec(views=("shift_left", "shift_right"), mode="review")


def test_bundled_config_defaults_keep_average_tta_and_enable_sheet_context() -> None:
    # the bundled model's serving settings, chosen out of fold by models.serving_fit (evidence in the config)
    assert CONFIG.tta.mode == "average"
    assert CONFIG.sheet == SheetSpec(move_to_unmarked=True)
    assert CONFIG.sheet.enabled is True
    evidence = CONFIG.training["serving_evidence"]
    assert evidence["unmark_newly_missed"] == 0


def test_decide_refuses_probabilities_of_another_width() -> None:
    """One probability per class: a model whose output is wider or narrower than the config's classes never
    yields decisions with a wrong `probabilities` map (checked once per call, not per crop)."""
    with pytest.raises(ValueError, match="columns"):
        decide(np.full((3, len(CONFIG.classes) + 1), 0.1, np.float32), CONFIG, "ink")
