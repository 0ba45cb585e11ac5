"""Questions, not just crops: one answer per question from the per-crop decisions of its options.

A crop may name its question; the crops of one question are its options. The question layer never changes a
crop's result: it reads each option's (possibly sheet-adapted) `Decision` and decides, using the context of the
question's other options, one of

    blank      no option marked, none stands out
    answered   1..max_marks options marked (or one weak mark standing out clearly among clean empties)
    multiple   more than max_marks options clearly marked
    ambiguous  the evidence does not separate: a weak mark beside a strong one (an erasure?), more marks than
               max_marks of which some are weak, or a doubtful mark with no clear one

Per option i, q_i is the probability that it is marked: its `marked_probability`, moved to the decided side
(0.5) when the sheet context marked it against the model, and to a clean empty's when the sheet context
un-marked it (it looked like the sheet's empties). Under independence,
P(exactly S marked) = prod_{i in S} q_i * prod_{i not in S} (1 - q_i); that is a question's confidence.
A context decision (one option standing out of a clean row, whether its crop read marked weakly or not)
reports P(it | exactly one option marked) = odds_t / sum_j odds_j instead: it presumes the respondent
answered, which is what the context argues.

Appearance: with the request's pixel statistics (`service.core.sheet.crop_stats`, computed in the decode pass;
column 0 = inner-disc darkness relative to the crop's paper level), the options of a question are also
compared by how dark they are inside: a probability standout must be the darkest option too
(`darkness_corroboration`), and (only with `darkness_gap` set) an option far darker than all others is a
rival beside a mark, or the flagged context answer of a row whose crops all read unmarked.
The rule and its parameters are documented in docs/api.md ("Questions").

Knows nothing of HTTP: `plan_questions` validates the request's grouping (raising `InvalidQuestions` naming
each offending question) before any crop is decoded; `decide_questions` runs after classification.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from service.core.postprocess import Decision
from service.errors import InvalidQuestions, clip

Status = Literal["blank", "answered", "multiple", "ambiguous"]

#: most options (crops) one question may have; a bigger "question" is a grouping bug in the engine
MAX_OPTIONS = 64
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class QuestionRule:
    """The decision rule's parameters (defaults documented in docs/api.md)."""

    #: a marked option at or above this q is a clear mark; a marked one below it is a weak mark
    strong_p: float = 0.8
    #: an unmarked option at or above this q is a doubtful mark (a rival beside a mark, or ambiguous alone)
    doubt_p: float = 0.2
    #: an unmarked option needs at least this q to be picked by context ...
    outlier_min_p: float = 0.1
    #: ... and log-odds at least this far above every other option (3.0 = 20x the odds) ...
    outlier_gap: float = 3.0
    #: ... while every other option is clean (q at most this); and at least 2 other options
    clean_p: float = 0.05
    #: a question whose confidence is below this is flagged for review
    min_confidence: float = 0.8
    #: with pixel stats: a probability standout must also be this much darker (inner disc) than every other option
    darkness_corroboration: float = 0.02
    #: with pixel stats: an option this much darker than every other option (all clean) stands out by appearance;
    #: None (default) = off: on rows of unlike crops it fired far too often (docs/api.md, Questions: evidence)
    darkness_gap: float | None = None
    #: flag every context answer for review (`context_answer`): until out-of-fold real rows show it is safe
    flag_context: bool = True


DEFAULT_RULE = QuestionRule()


@dataclass(frozen=True, slots=True)
class Question:
    """One question of a request: its id, the request indices of its options, and how many marks it admits."""

    id: str
    indices: tuple[int, ...]
    max_marks: int


@dataclass(frozen=True, slots=True)
class QuestionResult:
    id: str
    status: Status
    #: crop ids counted as marked (for `ambiguous`: the per-crop reading)
    marked: list[str]
    #: crop ids in doubt (weak marks, rivals); empty unless ambiguous or a weak mark was counted
    candidates: list[str]
    confidence: float
    #: "crops": the per-crop decisions; "context": the question's context picked an option its crop called unmarked
    decided_by: Literal["crops", "context"]
    review_reasons: list[str] = field(default_factory=list)

    @property
    def review(self) -> bool:
        return bool(self.review_reasons)


def _problem(qid: str, reason: str, message: str) -> dict[str, str]:
    return {"id": qid[:256], "reason": reason, "message": message}  # ids are client strings: never echoed whole


def plan_questions(
    question_ids: Sequence[str | None],
    max_marks: int | None = None,
    overrides: Mapping[str, int] | None = None,
    max_options: int = MAX_OPTIONS,
) -> list[Question]:
    """Group crop indices by question, in order of first appearance; refuse (all problems at once) a
    `max_marks` override for a question no crop names, a question with more than `max_options` options, and a
    `max_marks` without any question. Types and ranges (string ids, integer >= 1) are the schema's job; they
    are re-checked here so that a caller outside HTTP gets the same answer."""
    groups: dict[str, list[int]] = {}
    problems: list[dict[str, str]] = []
    for i, qid in enumerate(question_ids):
        if qid is None:
            continue
        if not isinstance(qid, str) or not qid:
            problems.append(_problem(str(qid), "invalid_id", f"crop {i}: question id must be a non-empty string"))
            continue
        groups.setdefault(qid, []).append(i)
    overrides = dict(overrides or {})
    default = 1 if max_marks is None else max_marks
    for qid, m in [("(request)", default), *overrides.items()]:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            problems.append(_problem(qid, "invalid_max_marks", f"max_marks must be an integer >= 1, got {clip(m)}"))
    for qid in overrides:
        if qid not in groups:
            problems.append(
                _problem(qid, "unknown_question", f"max_marks given for question {clip(qid)}, no crop names it")
            )
    if not groups and max_marks is not None and not overrides:
        problems.append(_problem("(request)", "no_questions", "max_marks given but no crop names a question"))
    for qid, idx in groups.items():
        if len(idx) > max_options:
            problems.append(
                _problem(
                    qid, "too_many_options", f"question {clip(qid)} has {len(idx)} options; the limit is {max_options}"
                )
            )
    if problems:
        raise InvalidQuestions(problems)
    return [Question(qid, tuple(idx), overrides.get(qid, default)) for qid, idx in groups.items()]


def _q(d: Decision, rule: QuestionRule) -> float:
    """P(marked) on the decided side: a crop the sheet context marked counts as a coin flip, not against; one
    it UN-marked looked like the sheet's own empties (its darkness near their level, `SheetSpec.unmark_threshold`)
    and counts as a clean empty, so the question layer does not bring back the mark the sheet ruled out (printed
    icons read as weak marks, out of fold on real-dev)."""
    p = d.marked_probability
    if d.decided_by == "sheet" and not d.marked:
        p = min(p, rule.clean_p)
    p = max(p, 0.5) if d.marked else min(p, 0.5)
    return min(max(p, _EPS), 1.0 - _EPS)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _p_exactly(q: Sequence[float], chosen: set[int]) -> float:
    return math.prod(q[i] if i in chosen else 1.0 - q[i] for i in range(len(q)))


def _darker_by(dark: Sequence[float], i: int, among: Sequence[int]) -> float:
    return dark[i] - max(dark[j] for j in among if j != i)


def _standout(q: Sequence[float], among: Sequence[int], rule: QuestionRule, dark: Sequence[float] | None) -> int | None:
    """The option of `among` that stands out as a context mark: q >= outlier_min_p, at least `outlier_gap`
    log-odds above each other option of `among`, all of which are clean (q <= clean_p); at least 2 others;
    with pixel stats, also the darkest of them by `darkness_corroboration`."""
    if len(among) < 3:
        return None
    top = max(among, key=lambda i: q[i])
    rest = max(q[i] for i in among if i != top)
    by_p = q[top] >= rule.outlier_min_p and rest <= rule.clean_p and _logit(q[top]) - _logit(rest) >= rule.outlier_gap
    looks = dark is None or _darker_by(dark, top, among) >= rule.darkness_corroboration
    return top if by_p and looks else None


def _dark_standout(
    q: Sequence[float], among: Sequence[int], rule: QuestionRule, dark: Sequence[float] | None
) -> int | None:
    """The option of `among` at least `darkness_gap` darker inside than each other one, all of them clean."""
    if dark is None or rule.darkness_gap is None or len(among) < 3:
        return None
    top = max(among, key=lambda i: dark[i])
    if _darker_by(dark, top, among) >= rule.darkness_gap and all(q[i] <= rule.clean_p for i in among if i != top):
        return top
    return None


def decide_question(
    options: Sequence[Decision],
    max_marks: int,
    rule: QuestionRule = DEFAULT_RULE,
    darkness: Sequence[float] | None = None,
) -> tuple[Status, list[int], list[int], float, Literal["crops", "context"], list[str]]:
    """One question's options (their per-crop decisions, and optionally their inner-disc darkness) ->
    (status, marked, candidates, confidence, decided_by, review_reasons); marked/candidates are positions
    in `options`."""
    q = [_q(d, rule) for d in options]
    dark = None if darkness is None else [float(x) for x in darkness]
    n = len(q)
    marked = [i for i, d in enumerate(options) if d.marked]
    unmarked = [i for i in range(n) if not options[i].marked]
    reasons: list[str] = []
    decided_by: Literal["crops", "context"] = "crops"
    candidates: list[int] = []
    if not marked:
        top = max(range(n), key=lambda i: q[i])
        pick = _standout(q, range(n), rule, dark)
        by_look = _dark_standout(q, range(n), rule, dark) if pick is None else None
        if pick is None and by_look is not None and q[top] < rule.doubt_p:
            pick = by_look
            reasons.append("context_appearance")  # the pixels alone argue for it: a person confirms
        if pick is not None:
            status: Status = "answered"
            marked, decided_by = [pick], "context"
            if rule.flag_context:
                reasons.insert(0, "context_answer")
            odds = [qi / (1.0 - qi) for qi in q]
            confidence = odds[pick] / sum(odds)
        elif q[top] >= rule.doubt_p or (n >= 2 and q[top] >= rule.outlier_min_p and _gap(q, top) >= rule.outlier_gap):
            status, candidates = "ambiguous", [top]
            reasons.append("weak_mark")
            confidence = _p_exactly(q, set())
        else:
            status, confidence = "blank", _p_exactly(q, set())
    else:
        strong = [i for i in marked if q[i] >= rule.strong_p]
        weak = [i for i in marked if q[i] < rule.strong_p]
        rivals = [i for i in unmarked if q[i] >= rule.doubt_p]
        for lone in (_standout(q, unmarked, rule, dark), _dark_standout(q, unmarked, rule, dark)):
            if lone is not None and lone not in rivals:
                rivals.append(lone)
        if len(marked) > max_marks:
            if len(strong) > max_marks:
                status = "multiple"
            else:
                status, candidates = "ambiguous", weak
                reasons.append("weak_extra_mark")
        elif rivals:
            status, candidates = "ambiguous", weak + rivals
            reasons.append("possible_second_mark")
        else:
            status, candidates = "answered", weak
        confidence = _p_exactly(q, set(marked))
        lone_weak = status == "answered" and weak == marked and len(marked) == 1
        if lone_weak and not rule.flag_context and marked[0] in (_standout(q, range(n), rule, dark),
                                                                 _dark_standout(q, range(n), rule, dark)):  # fmt: skip
            # one weak mark standing out of a clean row: the context confirms it, as it would pick it if its
            # crop had read unmarked (so the confidence cannot drop as its p rises past 0.5); while context
            # answers are flagged (flag_context), a lone weak mark keeps its own low confidence: flagged too
            odds = [qi / (1.0 - qi) for qi in q]
            confidence, candidates = odds[marked[0]] / sum(odds), []
    if confidence < rule.min_confidence:
        reasons.append("low_confidence")
    return status, marked, candidates, confidence, decided_by, reasons


def _gap(q: Sequence[float], top: int) -> float:
    return _logit(q[top]) - _logit(max(q[i] for i in range(len(q)) if i != top))


def decide_questions(
    questions: Sequence[Question],
    decisions: Sequence[Decision],
    crop_ids: Sequence[str],
    rule: QuestionRule = DEFAULT_RULE,
    stats: np.ndarray | None = None,
) -> list[QuestionResult]:
    """Every planned question's result, in order of first appearance (the crops' results are not touched).

    stats: the request's `crop_stats` [N, k] (column 0 inner-disc darkness), or None (probabilities only)."""
    darkness = None if stats is None else np.asarray(stats)[:, 0].tolist()
    out: list[QuestionResult] = []
    for question in questions:
        options = [decisions[i] for i in question.indices]
        dark = None if darkness is None else [darkness[i] for i in question.indices]
        status, marked, candidates, confidence, decided_by, reasons = decide_question(
            options, question.max_marks, rule, dark
        )
        ids = [crop_ids[question.indices[i]] for i in marked]
        doubt = [crop_ids[question.indices[i]] for i in candidates]
        out.append(QuestionResult(question.id, status, ids, doubt, confidence, decided_by, reasons))
    return out
