"""The question-layer benchmark: its request bodies, its in-process timing, and one tiny run end to end."""

from __future__ import annotations

import json

import orjson
import pytest

from loadtest import questions_bench as qb
from loadtest.crops import CropPool


def test_bodies_group_the_same_crops_into_questions() -> None:
    pool = CropPool.build(12, seed=1)
    plain, grouped = (orjson.loads(b) for b in qb.bodies(pool, 12))
    assert [c["image"] for c in plain["crops"]] == [c["image"] for c in grouped["crops"]]
    assert "question" not in plain["crops"][0]
    assert [c["question"] for c in grouped["crops"]] == [f"q{k // qb.OPTIONS}" for k in range(12)]


def test_layer_seconds_times_the_layer_on_given_results() -> None:
    results = [
        {"id": f"c{k}", "label": "empty", "confidence": 0.99, "marked": k % 5 == 0,
         "marked_probability": 0.99 if k % 5 == 0 else 0.01, "probabilities": {"empty": 0.99}}
        for k in range(100)
    ]  # fmt: skip
    times = qb.layer_seconds(results, repeat=7)
    assert len(times) == 7 and all(t > 0 for t in times)


@pytest.mark.slow
@pytest.mark.integration
def test_questions_bench_runs_end_to_end(tmp_path, capsys) -> None:
    assert qb.main(["--crops", "10", "--pairs", "3", "--repeat", "5", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "questions_bench.json").read_text())
    assert report["questions"] == 2 and report["pairs"] == 3
    assert report["latency_ms"]["plain"]["p50"] > 0 and report["layer_us"]["p50"] > 0
    assert 0 < report["layer_share_of_sheet_p50"] < 1
    assert "goal < 5 %" in capsys.readouterr().out
