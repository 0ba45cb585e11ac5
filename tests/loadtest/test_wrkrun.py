"""wrk driver: output parsing, manifest format, refusing remote targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import wrkrun

SAMPLE = """Running 2s test @ http://127.0.0.1:8000/classify
  1 threads and 8 connections
WRK_JSON {"requests": 1200, "duration_us": 2000000, "bytes": 99, "errors": {"connect": 0, "read": 1, \
"write": 0, "status": 3, "timeout": 0}, "latency_us": {"mean": 6500.5, "max": 40000, "p50": 6000, \
"p90": 9000, "p99": 21000, "p999": 35000}}
"""


def test_parse_output_reads_exact_figures() -> None:
    r = wrkrun.parse_output(SAMPLE)
    assert r.requests == 1200 and r.rps == pytest.approx(600.0)
    assert (r.p50_ms, r.p99_ms, r.p999_ms) == (6.0, 21.0, 35.0)
    assert r.failed == 4 and r.errors["status"] == 3


def test_parse_output_without_summary_raises() -> None:
    with pytest.raises(RuntimeError, match="WRK_JSON"):
        wrkrun.parse_output("Running 2s test\nunable to connect\n")


def test_write_manifest_lists_bodies_and_headers(tmp_path: Path) -> None:
    bodies = [wrkrun.Body(b"{}", "application/json"), wrkrun.Body(b"\x00" * 4, "application/octet-stream", "X-A: 1")]
    lines = wrkrun.write_manifest(bodies, tmp_path).read_text().splitlines()
    assert lines[0].split("\t")[1:] == ["application/json"]
    path, ctype, header = lines[1].split("\t")
    assert Path(path).read_bytes() == b"\x00" * 4 and ctype == "application/octet-stream" and header == "X-A: 1"


def test_run_refuses_remote_targets() -> None:
    with pytest.raises(ValueError, match="this machine"):
        wrkrun.run("http://example.com/classify", [wrkrun.Body(b"{}", "application/json")], 1, 1)


def test_lua_script_prints_the_parsed_line() -> None:
    text = wrkrun.LUA_SCRIPT.read_text()
    assert 'WRK_JSON {"requests"' in text and "function done(" in text
