"""Per-step figures and the SLO verdict from the per-request log."""

from __future__ import annotations

import math
from pathlib import Path

from loadtest import steps
from loadtest.steps import Row


def _rows() -> list[Row]:
    rows = []
    for i in range(100):  # step 1: 2 users, 10 s, fast
        rows.append(Row(i * 0.1, "single", 5.0 + (i % 10), 1, True, 2))
    for i in range(100):  # step 2: 4 users, 10 s, sheets slow, 2 failures
        rows.append(Row(10 + i * 0.1, "sheet_json", 100.0 + i, 64, i not in (3, 4), 4))
    return rows


def test_per_step_groups_by_time_and_skips_the_ramp() -> None:
    table = steps.per_step(_rows(), n_steps=2, total_s=20, settle_s=1.0)
    assert [s.users for s in table] == [2, 4]
    one, two = table
    assert one.requests == 90 and one.failures == 0  # the first second of each step is left out
    assert math.isclose(one.crops_per_s, 90 / 8.9)
    assert two.requests == 90 and two.failures == 0  # both failures fell in the settling second
    assert math.isclose(two.crops_per_s, 90 * 64 / 8.9)
    assert one.p50_ms["single"] < one.p99_ms["single"] <= 14.0


def test_per_step_of_nothing_is_empty() -> None:
    assert steps.per_step([], n_steps=3, total_s=30) == []


def test_slo_verdict_passes_within_limits() -> None:
    verdict = steps.slo_verdict(_rows(), slo_p99_ms=20, slo_sheet_p99_ms=250, max_fail_ratio=0.05)
    assert verdict["met"] is True and verdict["failures"] == 2


def test_slo_verdict_misses_on_latency_or_failures() -> None:
    assert steps.slo_verdict(_rows(), 20, None, 0.05)["met"] is False  # sheets judged by the 20 ms SLO
    assert steps.slo_verdict(_rows(), 20, 250, 0.0)["met"] is False  # 2 failures
    assert steps.slo_verdict([], 20, 250, 1.0)["met"] is False  # no requests prove nothing


def test_plot_and_markdown_write_outputs(tmp_path: Path) -> None:
    table = steps.per_step(_rows(), n_steps=2, total_s=20)
    steps.plot(table, 50.0, tmp_path / "load.png", "test")
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = steps.markdown(table, steps.slo_verdict(_rows(), 20, 250, 0.0))
    assert "| 2 |" in md and "MISSED" in md and "–" in md


def test_read_rows_round_trips_the_locust_log(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("start_time,name,response_ms,crops,ok,users\n1.5,single,3.25,1,True,2\n2.0,single,9,1,False,3\n")
    assert steps.read_rows(path) == [Row(1.5, "single", 3.25, 1, True, 2), Row(2.0, "single", 9.0, 1, False, 3)]
