"""The two commands end to end against a real `python -m service` on 127.0.0.1 (short, bounded runs).

These prove the harnesses work and can fail; the figures they produce here mean nothing (seconds-long
runs on a shared CI machine). Real figures come from the full commands, see docs/performance.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_run_meets_generous_slo_and_writes_reports(tmp_path: Path) -> None:
    out = tmp_path / "load"
    # admission's default 200 ms latency cap may shed a few requests on a busy CI machine; this test is
    # about the harness (every request answered and checked), so the cap goes up to the request timeout
    proc = _run(["loadtest.run", "--users", "6", "--duration", "6", "--steps", "2", "--slo-p99-ms", "30000",
                 "--max-fail-ratio", "0", "--env", "OMR_ADMISSION_MAX_WAIT_MS=10000", "--out", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("locust.html", "locust_stats.csv", "locust_stats_history.csv", "requests.csv", "load.png"):
        assert (out / name).stat().st_size > 0, name
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["met"] is True and summary["failures"] == 0 and summary["requests"] > 0
    assert [s["users"] for s in summary["steps"]] == [3, 6]
    kinds = {c["kind"] for c in summary["checks"]}
    assert {"sheet_json", "sheet_raw", "single"} <= kinds  # every user kind got answers that passed the checks


def test_run_exits_nonzero_when_slo_missed(tmp_path: Path) -> None:
    out = tmp_path / "load"
    proc = _run(["loadtest.run", "--users", "2", "--duration", "3", "--steps", "1", "--slo-p99-ms", "0.001",
                 "--users-of", "SingleCropUser", "--out", str(out)])  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISSED" in (out / "steps.md").read_text()


@pytest.mark.needs_tool("wrk", hint="apt-get install -y wrk")
def test_bench_measures_every_shape(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = _run(["loadtest.bench", "--duration", "1", "--warmup", "0", "--min-cpu-s", "0.05", "--batch-sizes", "1",
                 "64", "--pool", "64", "--rounds", "2", "--out", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads((out / "bench.json").read_bytes())
    assert [r["batch"] for r in result["ceiling"]["fp32"]["model"]] == [1, 64]
    rows = {(mode, r["scenario"]): r for mode, body in result["service"].items() for r in body["scenarios"]}
    assert set(rows) == {
        ("batching_on", "sheets"), ("batching_on", "single"), ("batching_on", "sheets-raw"),
        ("batching_on", "idle-sheet"), ("batching_off", "sheets"), ("batching_off", "single"),
        ("one_worker", "sheets"), ("one_worker", "single"),
    }  # fmt: skip
    assert all(r["failed"] == 0 and r["crops_per_s"] > 0 for r in rows.values())
    assert all(len(r["rounds"]) == 2 for r in rows.values())  # every server measured in each interleaved round
    assert len(result["ceiling"]["fp32"]["pipeline_parallel"]["rounds"]) == 2  # the cores' ceiling too
    assert result["service"]["batching_on"]["http_floor"]["rps"] > 0  # plain GETs through the same Lua script
    # the naive FastAPI baseline needs nothing beyond the service's own packages: it always runs
    base = {r["scenario"]: r for r in result["baseline"]["scenarios"]}
    assert set(base) == {"sheets", "single"} and all(r["failed"] == 0 and r["crops_per_s"] > 0 for r in base.values())
    names = {t["name"] for t in result["summary"]["targets"]}
    assert len(names) == len(result["summary"]["targets"]) >= 4  # one row per target, each named once
    md = (out / "bench.md").read_text()
    assert "**Targets**" in md and "**Rounds**" in md
