"""Soak, short: `python -m loadtest.soak` for 30 s at half capacity against `python -m service`.

The full 10-minute run is a documented command (docs/reliability.md). Here: no request fails, the RSS growth
after warm-up stays small, and the report files are written. p99 drift is reported, not gated: a 30 s run on a
shared 2-core CI machine cannot tell drift from a neighbour's noise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_soak_short_holds_memory_and_answers_everything(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    cmd = [sys.executable, "-m", "loadtest.soak", "--minutes", "0.5", "--window-s", "5", "--capacity-seconds", "4",
           "--crops", "50", "--max-rss-growth", "0.15", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    r = orjson.loads((out / "soak.json").read_bytes())
    assert r["failed"] == 0 and r["requests"] >= 100
    assert len(r["windows"]) == 6
    assert r["rss_growth"] < 0.15
    assert "RSS growth" in (out / "soak.md").read_text()


def test_soak_refuses_unbounded_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "loadtest.soak", "--minutes", "1000"], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 2 and "bounded" in proc.stderr
