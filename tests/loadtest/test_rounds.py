"""Interleaved rounds (`loadtest.rounds`): the order steps run in, and how the rounds' rows become one."""

from __future__ import annotations

from typing import Any

from loadtest.rounds import Step, median_row, run_rounds


def _row(crops: float, p99: float, requests: int, failed: int = 0, **extra: Any) -> dict[str, Any]:
    return {"scenario": "sheets", "crops_per_s": crops, "p50_ms": p99 / 2, "p99_ms": p99, "load_avg_1m": 1.0,
            "requests": requests, "failed": failed, "batch": 64, **extra}  # fmt: skip


def test_a_row_is_the_median_of_its_rounds_with_counts_summed_and_each_round_kept() -> None:
    rows = [_row(100.0, 9.0, 10, stages={"request_ms": 5.0}), _row(300.0, 12.0, 30, 1, stages={"request_ms": 7.0}),
            _row(200.0, 30.0, 20, stages={"request_ms": 6.0})]  # fmt: skip
    got = median_row(rows)
    assert got["crops_per_s"] == 200.0 and got["p99_ms"] == 12.0  # medians, not means (30 ms is one bad round)
    assert got["requests"] == 60 and got["failed"] == 1  # the failure rule compares totals
    assert got["scenario"] == "sheets" and got["stages"] == {"request_ms": 6.0}
    assert got["batch"] == 64 and isinstance(got["batch"], int)  # a whole number stays one (it is a dict key later)
    assert [r["crops_per_s"] for r in got["rounds"]] == [100.0, 300.0, 200.0]
    assert set(got["rounds"][0]) == {"crops_per_s", "p50_ms", "p99_ms", "load_avg_1m"}


def test_one_round_is_its_own_row() -> None:
    row = _row(100.0, 9.0, 10)
    assert median_row([row]) == row  # no "rounds" list for a single round


def test_every_step_runs_once_per_round_in_order() -> None:
    calls: list[str] = []

    def step(group: str, crops: float) -> Step:
        return Step(group, "sheets", lambda: calls.append(group) or _row(crops + len(calls), 9.0, 1))

    got = run_rounds([step("service", 100.0), step("peer", 50.0)], rounds=3, log=lambda _line: None)
    assert calls == ["service", "peer"] * 3  # interleaved: never all of one server's rounds first
    assert [r["crops_per_s"] for r in got[("service", "sheets")]["rounds"]] == [101.0, 103.0, 105.0]
    assert got[("peer", "sheets")]["crops_per_s"] == 54.0
