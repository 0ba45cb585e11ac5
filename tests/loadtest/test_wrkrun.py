"""wrk driver: output parsing, manifest format, refusing remote targets."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from loadtest import wrkrun
from service.app import create_app
from service.settings import Settings

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


@pytest.mark.integration
@pytest.mark.needs_tool("wrk", hint="apt-get install -y wrk")
def test_run_against_a_live_service_reports_what_it_sent(live_server, make_crops, b64_crops) -> None:
    """The Lua script really runs under wrk: POST bodies round-robin, GET without bodies, and its summary line
    parses into counts that match the service's own request counter."""
    body = wrkrun.Body(orjson.dumps({"crops": b64_crops(make_crops(3))}), "application/json")
    with live_server(create_app(Settings())) as url:
        posted = wrkrun.run(f"{url}/classify", [body], connections=2, duration_s=1)
        got = wrkrun.run(f"{url}/healthz", [], connections=1, duration_s=1)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert posted.requests > 0 and posted.failed == 0, posted
    assert got.requests > 0 and got.failed == 0, got
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("omr_requests_total{") and 'endpoint="/classify"' in line and 'status="200"' in line
    )
    # wrk counts completed responses; the service may also have answered a few still in flight when wrk stopped
    assert posted.requests <= served <= posted.requests + 2, (posted.requests, served)
