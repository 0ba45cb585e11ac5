"""The question layer on hand-made per-crop decisions: every status, the context outlier, max_marks, the
confidence formula, and the request checks that name the offending question."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.postprocess import Decision
from service.core.questions import (
    MAX_OPTIONS,
    Question,
    QuestionRule,
    decide_question,
    decide_questions,
    plan_questions,
)
from service.errors import InvalidQuestions


def crop(p: float, marked: bool | None = None) -> Decision:
    """A per-crop decision with marked probability `p` (marked = p >= 0.5 unless the sheet context moved it)."""
    is_marked = p >= 0.5 if marked is None else marked
    return Decision("filled" if is_marked else "empty", 0.99, is_marked, p, {"empty": 1 - p, "filled": p})


def run(ps: list[float], max_marks: int = 1, **rule: float):
    status, marked, candidates, confidence, decided_by, reasons = decide_question(
        [crop(p) for p in ps], max_marks, QuestionRule(**rule)
    )
    return status, marked, candidates, confidence, decided_by, reasons


def test_decide_single_choice_one_clear_mark_is_answered() -> None:
    status, marked, candidates, confidence, decided_by, reasons = run([0.002, 0.99, 0.003, 0.001])
    assert (status, marked, candidates, decided_by, reasons) == ("answered", [1], [], "crops", [])
    assert confidence == pytest.approx(0.998 * 0.99 * 0.997 * 0.999)


def test_decide_two_clear_marks_are_multiple() -> None:
    status, marked, _, confidence, _, reasons = run([0.98, 0.01, 0.995, 0.01])
    assert (status, marked) == ("multiple", [0, 2])
    assert confidence > 0.9 and reasons == []


def test_decide_no_mark_is_blank() -> None:
    status, marked, candidates, confidence, decided_by, reasons = run([0.01, 0.004, 0.02, 0.001, 0.03])
    assert (status, marked, candidates, decided_by, reasons) == ("blank", [], [], "crops", [])
    assert confidence == pytest.approx(0.99 * 0.996 * 0.98 * 0.999 * 0.97)


@pytest.mark.parametrize("p", [0.13, 0.49])
def test_decide_weak_outlier_among_clean_empties_is_the_answer(p: float) -> None:
    """The issue's looped tick: p(marked) 0.13 / 0.49 alone, beside five clean boxes of its row."""
    ps = [0.001, 0.002, p, 0.001, 0.0015, 0.001]
    status, marked, _, confidence, decided_by, reasons = run(ps)
    assert (status, marked, decided_by) == ("answered", [2], "context")
    odds = [x / (1 - x) for x in ps]
    assert confidence == pytest.approx(odds[2] / sum(odds))
    assert reasons == ["context_answer"]  # flagged by default (flag_context) ...
    assert run(ps, flag_context=False)[5] == []  # ... clearly the answer without it


def test_decide_weak_outlier_needs_clean_neighbours() -> None:
    """The same weak mark beside options that are not clean is not picked by context: it is ambiguous."""
    status, marked, candidates, _, decided_by, reasons = run([0.08, 0.07, 0.3, 0.09])
    assert (status, marked, candidates, decided_by) == ("ambiguous", [], [2], "crops")
    assert "weak_mark" in reasons


def test_decide_small_gap_is_blank_not_context() -> None:
    """A faint difference among empties (print, noise) never becomes an answer."""
    status, marked, _, _, _, _ = run([0.002, 0.01, 0.001, 0.002])
    assert (status, marked) == ("blank", [])


def test_decide_two_options_give_no_context_decision() -> None:
    """A weak mark beside a single other option: no row to compare with, so no context answer; it stands out
    (no option clearly marked while one stands out), so it is ambiguous."""
    status, marked, candidates, _, decided_by, reasons = run([0.15, 0.001])
    assert (status, marked, candidates, decided_by, reasons) == ("ambiguous", [], [0], "crops", ["weak_mark"])
    assert run([0.05, 0.001])[:2] == ("blank", [])


def test_decide_strong_mark_and_weaker_rival_is_ambiguous() -> None:
    """A strong mark and a weaker one that may be an erasure."""
    status, marked, candidates, _, _, reasons = run([0.99, 0.001, 0.3, 0.002])
    assert (status, marked, candidates) == ("ambiguous", [0], [2])
    assert "possible_second_mark" in reasons


def test_decide_strong_mark_and_weak_outlier_is_ambiguous() -> None:
    status, marked, candidates, _, _, reasons = run([0.99, 0.001, 0.12, 0.002, 0.001])
    assert (status, marked, candidates) == ("ambiguous", [0], [2])
    assert "possible_second_mark" in reasons


def test_decide_strong_and_weak_marks_over_max_marks_are_ambiguous() -> None:
    status, marked, candidates, _, _, reasons = run([0.99, 0.62, 0.01, 0.01])
    assert (status, marked, candidates) == ("ambiguous", [0, 1], [1])
    assert "weak_extra_mark" in reasons and "low_confidence" in reasons


def test_decide_multi_select_within_max_marks_is_answered() -> None:
    ps = [0.99, 0.01, 0.97, 0.02, 0.995]
    assert run(ps, max_marks=3)[:2] == ("answered", [0, 2, 4])
    assert run(ps, max_marks=2)[:2] == ("multiple", [0, 2, 4])
    assert run(ps, max_marks=1)[:2] == ("multiple", [0, 2, 4])


def test_decide_lone_weak_mark_in_clean_row_is_confirmed_by_context() -> None:
    """p 0.6 beside clean options: as sure as the 0.49 outlier is (confidence never drops as p rises)."""
    status, marked, candidates, confidence, decided_by, reasons = run([0.01, 0.6, 0.01], flag_context=False)
    assert (status, marked, candidates, decided_by, reasons) == ("answered", [1], [], "crops", [])
    assert confidence == pytest.approx(1.5 / (1.5 + 2 * 0.01 / 0.99))
    assert confidence >= run([0.001, 0.49, 0.001], flag_context=False)[3] - 0.02
    # while context answers are flagged (default), the lone weak mark keeps its own confidence: flagged too
    status, marked, candidates, confidence, _, reasons = run([0.01, 0.6, 0.01])
    assert (status, marked, candidates, reasons) == ("answered", [1], [1], ["low_confidence"])
    assert confidence == pytest.approx(0.6 * 0.99 * 0.99)


def test_decide_lone_weak_mark_beside_unclean_options_is_flagged() -> None:
    status, marked, candidates, confidence, _, reasons = run([0.08, 0.6, 0.1])
    assert (status, marked, candidates) == ("answered", [1], [1])
    assert confidence < 0.8 and reasons == ["low_confidence"]


def test_decide_mark_moved_by_sheet_context_counts_on_its_decided_side() -> None:
    """A crop the per-sheet adaptation turned marked (p 0.3 but marked) is a weak mark, never read against:
    q = 0.5. Beside options that are not clean it stays in doubt; standing out of a clean row, it is confirmed."""
    options = [crop(0.06), crop(0.3, marked=True), crop(0.07)]
    status, marked, candidates, confidence, decided_by, reasons = decide_question(options, 1)
    assert (status, marked, candidates, decided_by) == ("answered", [1], [1], "crops")
    assert confidence == pytest.approx(0.5 * 0.94 * 0.93)
    assert "low_confidence" in reasons
    clean = [crop(0.001), crop(0.3, marked=True), crop(0.002)]
    status, marked, candidates, confidence, _, reasons = decide_question(clean, 1, QuestionRule(flag_context=False))
    assert (status, marked, candidates, reasons) == ("answered", [1], [], [])
    assert confidence == pytest.approx(1.0 / (1.0 + 0.001 / 0.999 + 0.002 / 0.998))
    assert decide_question(clean, 1)[5] == ["low_confidence"]  # default: flagged, like the crop itself


def test_decide_mark_the_sheet_context_ruled_out_is_not_brought_back() -> None:
    """A printed icon the model read as a weak mark (p 0.6) that the sheet context un-marked (it looked like the
    sheet's empties) counts as a clean empty: the row is blank, not a context answer; beside a real mark it is
    no rival (out of fold on real-dev: sample4's "x2" icons turned answered rows ambiguous and a blank one
    answered)."""
    from dataclasses import replace

    icon = replace(crop(0.6, marked=False), decided_by="sheet")
    blank = [crop(0.001), crop(0.002), icon, crop(0.001)]
    assert decide_question(blank, 1)[0] == "blank"
    answered = [crop(0.001), crop(0.99), icon, crop(0.002)]
    status, marked, candidates, *_ = decide_question(answered, 1)
    assert (status, marked, candidates) == ("answered", [1], [])
    model_only = replace(icon, decided_by="model")  # the same crop unmarked by the model itself stays a rival
    assert decide_question([crop(0.001), crop(0.99), model_only, crop(0.002)], 1)[0] == "ambiguous"


def test_decide_single_option_question() -> None:
    assert run([0.97])[:2] == ("answered", [0])
    assert run([0.02])[:2] == ("blank", [])
    assert run([0.3])[:3] == ("ambiguous", [], [0])


def test_decide_confidence_survives_many_options() -> None:
    status, _, _, confidence, _, _ = run([0.0] * (MAX_OPTIONS - 1) + [1.0])
    assert status == "answered" and 0.99 < confidence <= 1.0 and math.isfinite(confidence)


def test_decide_questions_in_order_with_crop_ids_and_untouched_decisions() -> None:
    decisions = [crop(0.01), crop(0.99), crop(0.02), crop(0.98), crop(0.97), crop(0.5)]
    before = [(d.marked, d.marked_probability, dict(d.probabilities)) for d in decisions]
    ids = ["a1", "a2", "free", "b1", "b2", "b3"]
    plan = plan_questions(["qB", "qA", None, "qB", "qA", "qB"])
    assert [q.id for q in plan] == ["qB", "qA"]
    assert plan[0] == Question("qB", (0, 3, 5), 1)
    results = decide_questions(plan, decisions, ids)
    assert [(r.id, r.status, r.marked) for r in results] == [
        ("qB", "ambiguous", ["b1", "b3"]),  # a strong and a weak (0.5) mark, one allowed
        ("qA", "multiple", ["a2", "b2"]),
    ]
    assert [(d.marked, d.marked_probability, dict(d.probabilities)) for d in decisions] == before


def test_plan_applies_request_and_per_question_max_marks() -> None:
    plan = plan_questions(["q1", "q2", "q1"], max_marks=2, overrides={"q2": 3})
    assert [(q.id, q.max_marks) for q in plan] == [("q1", 2), ("q2", 3)]
    assert plan_questions([None, None]) == []


@pytest.mark.parametrize(
    ("kwargs", "qid", "reason"),
    [
        ({"question_ids": ["q1", "q1"], "overrides": {"q9": 2}}, "q9", "unknown_question"),
        ({"question_ids": ["q1"], "overrides": {"q1": 0}}, "q1", "invalid_max_marks"),
        ({"question_ids": ["q1"], "overrides": {"q1": True}}, "q1", "invalid_max_marks"),
        ({"question_ids": ["q1"], "overrides": {"q1": 1.5}}, "q1", "invalid_max_marks"),
        ({"question_ids": ["q1"], "max_marks": 0}, "(request)", "invalid_max_marks"),
        ({"question_ids": ["q7"] * (MAX_OPTIONS + 1)}, "q7", "too_many_options"),
        ({"question_ids": ["q1", 12]}, "12", "invalid_id"),
        ({"question_ids": [None, None], "max_marks": 2}, "(request)", "no_questions"),
    ],
)
def test_plan_refuses_bad_grouping_naming_the_question(kwargs, qid: str, reason: str) -> None:
    with pytest.raises(InvalidQuestions) as err:
        plan_questions(**kwargs)
    body = err.value.body()
    assert body["code"] == "invalid_questions" and err.value.status == 422
    assert {"id": qid, "reason": reason} in [{"id": p["id"], "reason": p["reason"]} for p in body["questions"]]
    assert repr(qid) in body["error"] or qid in body["error"]


def test_plan_reports_every_problem_at_once() -> None:
    with pytest.raises(InvalidQuestions) as err:
        plan_questions(["q1"] * 3, overrides={"q2": 2, "q3": 0}, max_options=2)
    reasons = sorted((p["id"], p["reason"]) for p in err.value.body()["questions"])
    assert reasons == [
        ("q1", "too_many_options"),
        ("q2", "unknown_question"),
        ("q3", "invalid_max_marks"),
        ("q3", "unknown_question"),
    ]
    assert "and 3 more" in err.value.message


def run_dark(ps: list[float], dark: list[float], max_marks: int = 1, **rule: float):
    return decide_question([crop(p) for p in ps], max_marks, QuestionRule(**rule), dark)


def test_decide_probability_standout_must_look_darker() -> None:
    """With pixel stats, the 0.13 outlier that is no darker inside than its row is not picked: ambiguous."""
    ps = [0.001, 0.002, 0.13, 0.001, 0.0015]
    assert run_dark(ps, [0.10, 0.11, 0.25, 0.10, 0.12])[:2] == ("answered", [2])
    status, marked, candidates, _, decided_by, reasons = run_dark(ps, [0.10, 0.11, 0.115, 0.10, 0.12])
    assert (status, marked, candidates, decided_by) == ("ambiguous", [], [2], "crops")
    assert "weak_mark" in reasons


def test_decide_darkness_alone_is_a_flagged_context_answer() -> None:
    """Every crop reads clean, but one is far darker inside than the rest of its row (light pencil)."""
    ps, dark = [0.01, 0.03, 0.01, 0.02], [0.05, 0.21, 0.06, 0.04]
    assert run_dark(ps, dark)[:2] == ("blank", [])  # off by default (darkness_gap None)
    status, marked, _, _, decided_by, reasons = run_dark(ps, dark, darkness_gap=0.1, flag_context=False)
    assert (status, marked, decided_by) == ("answered", [1], "context")
    assert "context_appearance" in reasons  # flagged even without flag_context
    assert run_dark(ps, [0.05, 0.09, 0.06, 0.04], darkness_gap=0.1)[:2] == ("blank", [])  # print, noise


def test_decide_darker_option_beside_a_mark_is_a_possible_second_mark() -> None:
    """Erasure residue: the model reads it clean, but it is far darker than the other empties."""
    ps = [0.99, 0.01, 0.02, 0.01]
    status, marked, candidates, _, _, reasons = run_dark(ps, [0.9, 0.05, 0.2, 0.06], darkness_gap=0.1)
    assert (status, marked, candidates) == ("ambiguous", [0], [2])
    assert "possible_second_mark" in reasons
    assert run_dark(ps, [0.9, 0.05, 0.08, 0.06], darkness_gap=0.1)[:2] == ("answered", [0])
    assert run_dark(ps, [0.9, 0.05, 0.2, 0.06])[:2] == ("answered", [0])  # off by default


def test_decide_questions_passes_each_question_its_darkness() -> None:
    decisions = [crop(0.01), crop(0.02), crop(0.01), crop(0.99), crop(0.01), crop(0.01)]
    stats = np.array([[0.05, 0, 1], [0.3, 0, 1], [0.04, 0, 1], [0.9, 0, 1], [0.05, 0, 1], [0.06, 0, 1]], np.float32)
    plan = plan_questions(["a", "a", "a", "b", "b", "b"])
    ids = [str(i) for i in range(6)]
    with_px = decide_questions(plan, decisions, ids, QuestionRule(darkness_gap=0.1), stats=stats)
    assert [(r.status, r.marked, r.decided_by) for r in with_px] == [
        ("answered", ["1"], "context"),
        ("answered", ["3"], "crops"),
    ]
    assert [(r.status, r.marked) for r in decide_questions(plan, decisions, ids)] == [
        ("blank", []),
        ("answered", ["3"]),
    ]


_P = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    rows=st.lists(st.tuples(_P, st.booleans(), st.floats(-1.0, 1.0, allow_nan=False)), min_size=1, max_size=12),
    max_marks=st.integers(1, 4),
    with_px=st.booleans(),
)
def test_decide_question_properties(rows: list[tuple[float, bool, float]], max_marks: int, with_px: bool) -> None:
    """Any options (probabilities, decisions the sheet may have moved, darkness): a consistent answer."""
    options = [crop(p, marked=p >= 0.5 if not moved else p < 0.5) for p, moved, _ in rows]
    dark = [d for _, _, d in rows] if with_px else None
    status, marked, candidates, confidence, decided_by, reasons = decide_question(
        options, max_marks, QuestionRule(), dark
    )
    crop_marked = [i for i, d in enumerate(options) if d.marked]
    assert 0.0 <= confidence <= 1.0 and math.isfinite(confidence)
    assert marked == sorted(set(marked)) and set(candidates) <= set(range(len(options)))
    assert (confidence < QuestionRule().min_confidence) == ("low_confidence" in reasons)
    if decided_by == "context":
        assert status == "answered" and len(marked) == 1 and not crop_marked
    else:
        assert marked == crop_marked  # the question layer never drops or adds a crop's own mark
    if status == "blank":
        assert marked == [] and candidates == []
    elif status == "answered":
        assert 1 <= len(marked) <= max_marks
    elif status == "multiple":
        assert len(marked) > max_marks and not candidates
    else:
        assert {"weak_mark", "weak_extra_mark", "possible_second_mark"} & set(reasons)


def test_plan_clips_long_ids_and_caps_the_listed_problems() -> None:
    """Client strings are never echoed whole; a body of 1,000 unknown questions lists 100 and counts them all."""
    long_id = "q" * 5000
    with pytest.raises(InvalidQuestions) as err:
        plan_questions(["q1"], overrides={long_id: 2, **{f"x{i}": 2 for i in range(999)}})
    body = err.value.body()
    assert body["total"] == 1000 and len(body["questions"]) == InvalidQuestions.LISTED
    assert len(body["error"]) < 300 and "5000 characters" in body["error"]
    assert all(len(p["id"]) <= 256 and len(p["message"]) < 300 for p in body["questions"])
