"""Observability for real: `promtool check metrics` on the service's /metrics, and a real Prometheus (Debian
package `prometheus`) scraping `python -m service` every second during load, whose
`histogram_quantile(0.99, ...)` over the request-duration histogram must return a value (finite, positive) once
every request of the load is in the scraped counter. How close it is to the client's own p99 is printed, not
gated (a latency ratio on a shared 2-core machine is noise; speed lives in loadtest/).

Skips, with the reason, when the binaries are absent (`apt-get install -y prometheus` provides both); with
CI=true a missing binary fails (tests/conftest.py, `needs_tool`).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import server as service_process
from loadtest.crops import CropPool
from loadtest.openloop import Client, closed_loop, pct
from loadtest.overload import bodies_for

from ._support import stop_process

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.needs_tool("promtool", hint="apt-get install -y prometheus")
needs_prometheus = pytest.mark.needs_tool("prometheus", hint="apt-get install -y prometheus")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[service_process.Service]:
    log = Path(tmp_path_factory.mktemp("svc")) / "service.log"
    with service_process.running({"OMR_LOG_LEVEL": "warning"}, log) as s:
        yield s


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


@needs_promtool
def test_promtool_check_metrics_passes(svc: service_process.Service) -> None:
    # some traffic first, so labelled series exist and are linted too
    asyncio.run(closed_loop(Client(svc.url), bodies_for(CropPool.build(16, seed=3), 8, n=4), 2, 1.0))
    text = metrics_text(svc.url)
    assert "omr_request_duration_seconds_bucket" in text
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def scraped_requests(base: str) -> float:
    """/classify requests in the latest scrape Prometheus holds (0 before the first)."""
    result = prom_query(base, 'sum(omr_requests_total{job="omr", endpoint="/classify"})')
    return float(result[0]["value"][1]) if result else 0.0


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # another process starting: nothing to block on but its socket
    raise TimeoutError(url)


def _start_prometheus(config: Path, tmp_path: Path, attempt: int) -> tuple[subprocess.Popen[bytes], str] | None:
    """Prometheus on a free port, ready and owning it; None if the port was taken before it bound it."""
    port = service_process.free_port()
    log_path = tmp_path / f"prometheus-{attempt}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/-/ready", 60, proc)
    except RuntimeError:
        if "address already in use" in log_path.read_text(errors="replace"):
            return None  # another process took the port first: try another
        raise
    if not service_process.owns_port(proc.pid, port):  # a stranger answered on "our" port
        stop_process(proc)
        return None
    return proc, base


@pytest.fixture
def prometheus(svc: service_process.Service, tmp_path: Path) -> Iterator[str]:
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: omr\n    static_configs:\n      - targets: ['127.0.0.1:{svc.port}']\n"
    )
    for attempt in range(5):
        started = _start_prometheus(config, tmp_path, attempt)
        if started is not None:
            break
    else:
        raise AssertionError("prometheus could not bind a free port in 5 attempts")
    proc, base = started
    try:
        yield base
    finally:
        stop_process(proc)


@pytest.mark.slow
@needs_prometheus
def test_prometheus_scrapes_and_p99_is_sane(svc: service_process.Service, prometheus: str, until) -> None:
    bodies = bodies_for(CropPool.build(64, seed=4), 50)
    shots = asyncio.run(closed_loop(Client(svc.url), bodies, 4, 15.0))  # load while Prometheus scrapes every 1 s
    ok = [s.latency for s in shots if s.status == 200]
    assert len(ok) > 20
    client_p99 = pct(ok, 99)
    # until a scrape after the load: Prometheus holds the count the service itself shows now
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text(svc.url).splitlines()
        if line.startswith("omr_requests_total{") and 'endpoint="/classify"' in line
    )
    assert served >= len(shots)
    until(lambda: scraped_requests(prometheus) >= served, 60, f"a scrape holding all {served:g} requests")
    up = prom_query(prometheus, 'up{job="omr"}')
    assert up and up[0]["value"][1] == "1", up
    expr = ('histogram_quantile(0.99, sum by (le) (rate(omr_request_duration_seconds_bucket'
            '{job="omr", endpoint="/classify", status="200"}[20s])))')  # fmt: skip
    result = prom_query(prometheus, expr)
    assert result, f"no result for {expr}"
    p99 = float(result[0]["value"][1])
    # reported, not gated: the histogram interpolates inside buckets (..., 0.1, 0.15, 0.25, 0.5, ...)
    print(f"Prometheus p99 {p99 * 1e3:.1f} ms, client-measured p99 {client_p99 * 1e3:.1f} ms, {len(ok)} requests")
    assert math.isfinite(p99) and p99 > 0, p99
    count = prom_query(prometheus, 'sum(increase(omr_requests_total{job="omr", endpoint="/classify"}[1m]))')
    assert count and float(count[0]["value"][1]) > 0.5 * len(ok)
