"""Questions over a real uvicorn server with real images: statuses, the weak outlier, max_marks, unchanged
per-crop results, and bad groupings answered with a 4xx naming the question (before any crop is decoded)."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from service.app import create_app
from service.core.questions import MAX_OPTIONS
from service.settings import Settings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
EMPTY = base64.b64encode((REPO / "docs" / "examples" / "empty.png").read_bytes()).decode()  # printed icon, no ink
FILLED = base64.b64encode((REPO / "docs" / "examples" / "filled.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def url(live_server):
    with live_server(create_app(Settings())) as base:
        yield base


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/classify", json=body, timeout=30)


def option(qid: str, letter: str, image: str) -> dict[str, str]:
    return {"id": f"{qid}-{letter}", "question": qid, "image": image}


def questions_of(r: httpx.Response) -> dict[str, dict]:
    assert r.status_code == 200, r.text
    return {q["id"]: q for q in r.json()["questions"]}


def bubble(grey: int | None = None, side: int = 48) -> np.ndarray:
    """A printed circle on light paper, optionally with a grey disc over 70 % of its radius (a light mark)."""
    img = np.full((side, side), 235, np.uint8)
    cv2.circle(img, (side // 2, side // 2), int(side * 0.3), 60, 2, cv2.LINE_AA)
    if grey is not None:
        cv2.circle(img, (side // 2, side // 2), int(side * 0.3 * 0.7), grey, -1, cv2.LINE_AA)
    return img


def b64(img: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", img)
    assert ok
    return base64.b64encode(png.tobytes()).decode()


def test_questions_single_choice_multiple_and_blank(url) -> None:
    crops = (
        [option("q1", k, im) for k, im in zip("ABCD", [EMPTY, FILLED, EMPTY, EMPTY], strict=True)]
        + [option("q2", k, im) for k, im in zip("ABCD", [FILLED, EMPTY, FILLED, EMPTY], strict=True)]
        + [option("q3", k, EMPTY) for k in "ABCD"]
    )
    qs = questions_of(post(url, {"crops": crops}))
    assert list(qs) == ["q1", "q2", "q3"]
    assert (qs["q1"]["status"], qs["q1"]["marked"], qs["q1"]["review"]) == ("answered", ["q1-B"], False)
    assert (qs["q2"]["status"], qs["q2"]["marked"]) == ("multiple", ["q2-A", "q2-C"])
    assert (qs["q3"]["status"], qs["q3"]["marked"], qs["q3"]["review"]) == ("blank", [], False)
    for q in qs.values():
        assert 0.8 < q["confidence"] <= 1.0 and q["decided_by"] == "crops"
        assert q["review"] == bool(q["review_reasons"])


def test_questions_weak_outlier_among_clean_empties_is_the_answer(url) -> None:
    """A light mark the model alone calls unmarked (0.1 <= p < 0.5), beside five clean bubbles of its row."""
    ramp = {g: b64(bubble(g)) for g in range(245, 59, -5)}  # wide: a retrained model still crosses 0.1-0.5
    alone = {}
    for g, image in ramp.items():  # each crop alone: a one-crop request gets the context-free answer
        r = post(url, {"crops": [{"image": image}]})
        assert r.status_code == 200, r.text
        alone[g] = r.json()["results"][0]
    weak = [g for g, res in alone.items() if 0.1 <= res["marked_probability"] < 0.5 and not res["marked"]]
    assert weak, {g: res["marked_probability"] for g, res in alone.items()}
    grey = min(weak, key=lambda g: abs(alone[g]["marked_probability"] - 0.25))
    clean = b64(bubble())
    crops = [option("q7", k, clean) for k in "ABDEF"]
    crops.insert(2, option("q7", "C", ramp[grey]))
    r = post(url, {"crops": crops})
    q = questions_of(r)["q7"]
    assert (q["status"], q["marked"]) == ("answered", ["q7-C"]), (alone[grey], r.json())
    per_crop = r.json()["results"][2]
    if not per_crop["marked"]:  # the question layer chose it; its crop result says unmarked, unchanged
        assert q["decided_by"] == "context" and q["review_reasons"] == ["context_answer"]
        assert q["confidence"] >= 0.8  # P(it | one option marked)
        assert per_crop["marked_probability"] == pytest.approx(alone[grey]["marked_probability"], abs=1e-6)
    else:  # the sheet context found it first: a weak mark of its crop, flagged like the crop
        assert q["decided_by"] == "crops" and q["review"] and per_crop["review"]


def test_questions_multi_select_with_max_marks(url) -> None:
    two = [option("m1", k, im) for k, im in zip("ABCD", [FILLED, EMPTY, FILLED, EMPTY], strict=True)]
    three = [option("m2", k, im) for k, im in zip("ABCD", [FILLED, FILLED, FILLED, EMPTY], strict=True)]
    override = post(url, {"crops": two + three, "questions": {"m1": {"max_marks": 2}}})
    qs = questions_of(override)
    assert (qs["m1"]["status"], qs["m1"]["marked"]) == ("answered", ["m1-A", "m1-C"])
    assert (qs["m2"]["status"], qs["m2"]["marked"]) == ("multiple", ["m2-A", "m2-B", "m2-C"])
    both = questions_of(post(url, {"crops": two + three, "max_marks": 2, "questions": {"m2": {"max_marks": 3}}}))
    assert (both["m1"]["status"], both["m2"]["status"]) == ("answered", "answered")


def test_questions_absent_without_question_fields_and_crops_unchanged(url) -> None:
    plain = [{"id": f"c{i}", "image": im} for i, im in enumerate([EMPTY, FILLED, FILLED, EMPTY, EMPTY])]
    without = post(url, {"crops": plain})
    assert without.status_code == 200, without.text
    assert "questions" not in without.json()
    grouped = [dict(c, question="qx" if i < 3 else "qy") for i, c in enumerate(plain)]
    grouped[4].pop("question")  # a crop outside every question, beside crops in questions
    with_q = post(url, {"crops": grouped})
    assert with_q.json()["results"] == without.json()["results"]
    qs = questions_of(with_q)
    assert list(qs) == ["qx", "qy"] and qs["qy"]["status"] == "blank"
    assert qs["qx"]["marked"] == ["c1", "c2"]


@pytest.mark.parametrize(
    ("extra", "status", "needle"),
    [
        ({"max_marks": 0}, 400, "max_marks"),
        ({"max_marks": "2"}, 400, "max_marks"),
        ({"max_marks": 1.5}, 400, "max_marks"),
        ({"max_marks": True}, 400, "max_marks"),
        ({"questions": {"q1": {"max_marks": 0}}}, 400, "questions.q1.max_marks"),
        ({"questions": {"q1": {"max_marks": "two"}}}, 400, "questions.q1.max_marks"),
        ({"questions": {"q9": {"max_marks": 2}}}, 422, "'q9'"),
    ],
)
def test_questions_bad_max_marks_named(url, extra: dict, status: int, needle: str) -> None:
    crops = [option("q1", k, FILLED) for k in "AB"]
    r = post(url, {"crops": crops, **extra})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    if status == 422:
        assert r.json()["code"] == "invalid_questions"
        assert r.json()["questions"][0]["id"] == "q9" and r.json()["questions"][0]["reason"] == "unknown_question"


def test_questions_non_string_id_named(url) -> None:
    r = post(url, {"crops": [option("q1", "A", FILLED), {"id": "x", "question": 12, "image": EMPTY}]})
    assert r.status_code == 400, r.text
    assert "crops.1.question" in r.json()["error"] and "12" in r.json()["error"]
    assert r.json()["crops"][0]["index"] == 1


def test_questions_too_many_options_refused_before_decoding(url) -> None:
    """65 options of one question, all undecodable: the grouping is refused first, naming the question."""
    crops = [{"id": f"o{i}", "question": "big", "image": "%%%"} for i in range(MAX_OPTIONS + 1)]
    r = post(url, {"crops": crops})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "invalid_questions" and body["questions"][0]["id"] == "big"
    assert body["questions"][0]["reason"] == "too_many_options" and str(MAX_OPTIONS) in body["error"]


def test_questions_max_marks_without_questions_refused(url) -> None:
    r = post(url, {"crops": [{"image": FILLED}], "max_marks": 2})
    assert r.status_code == 422, r.text
    assert r.json()["questions"][0]["reason"] == "no_questions"
