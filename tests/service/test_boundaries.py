"""Package boundaries: the service runs without torch; its /metrics output passes `promtool check metrics`."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from service.app import create_app
from service.settings import Settings


def test_service_imports_without_torch() -> None:
    code = "import sys, service.app, service.__main__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_cli_help_lists_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--max-batch-size" in out.stdout and "--shutdown-delay-s" in out.stdout


@pytest.mark.integration
@pytest.mark.needs_tool("promtool", hint="apt-get install -y prometheus")
def test_metrics_pass_promtool_check(live_server, make_crops, b64_crops) -> None:
    with live_server(create_app(Settings())) as url:
        assert httpx.post(f"{url}/classify", json={"crops": b64_crops(make_crops(3))}, timeout=10).status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=5).text
    for name in ("omr_request_duration_seconds", "omr_queue_wait_seconds", "omr_preprocess_duration_seconds",
                 "omr_inference_duration_seconds", "omr_batch_size_rows", "omr_batch_fill_ratio", "omr_requests_total",
                 "omr_crops_total", "omr_queue_depth_rows", "omr_batches_in_flight", "omr_model_info"):  # fmt: skip
        assert f"\n{name}" in text, name
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
