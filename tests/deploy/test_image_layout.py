"""The CPU image, emulated without a Docker engine: the server runs from a folder holding only what the
Dockerfile copies (`service/`, `models/repository/`), with torch unimportable, configured by nothing but the
chart's rendered ConfigMap. The Dockerfile's own HEALTHCHECK command probes it, and SIGTERM must end it cleanly
within the chart's termination grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtest import server as service_process

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "omr-classifier"
IMAGE_WORKDIR = "/app"  # the Dockerfile's WORKDIR; the chart's bundled repository path lives under it

try:
    import helm_python as helm

    helm.helm_sdk_version()
    HELM_SKIP = ""
except Exception as exc:
    HELM_SKIP = f"helm-python-sdk unavailable: {type(exc).__name__}: {exc}"

# Runs the package from the current folder (like the image's WORKDIR) and refuses any torch import.
LAUNCH = (
    "import os, runpy, sys; sys.modules['torch'] = None; import service; "
    "assert service.__file__.startswith(os.getcwd()), service.__file__; "
    "runpy.run_module('service', run_name='__main__', alter_sys=True)"
)


def _launch(app: Path, env: dict[str, str], budget_s: float, ready_path: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the image layout on a free port; ready = the readiness probe answers 200 AND the listener on that
    port is this process tree's (`loadtest.server.owns_port`). The service binds the port itself, so a port
    another process took first makes it exit with EADDRINUSE: then it starts again on another."""
    for _ in range(5):
        port = service_process.free_port()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=app, env={**env, "OMR_PORT": str(port)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + budget_s
        while True:  # the kubelet's view: startup (healthz), then readiness (readyz)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + ready_path, timeout=1).status_code == 200 and service_process.owns_port(
                    proc.pid, port
                ):
                    return proc, url
            if proc.poll() is not None:
                out = proc.communicate()[0].decode(errors="replace")
                assert "[Errno 98]" in out, out[-3000:]  # only a taken port is retried
                break
            assert time.monotonic() < deadline, "not ready within the chart's startupProbe budget"
            time.sleep(0.2)  # polls readiness (observable state), not a wait for an amount of time
    raise AssertionError("no free port could be bound in 5 attempts")


def _rendered() -> tuple[dict[str, str], dict[str, Any]]:
    """(ConfigMap data, Deployment) from the chart's default values."""
    rendered = helm.Chart.load(CHART).render(None, name="omr", namespace="omr")
    docs = [d for path, text in rendered.items() if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if isinstance(d, dict)]  # fmt: skip
    cm = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return cm, dep


def _healthcheck_argv() -> list[str]:
    """The exec-form HEALTHCHECK CMD of the Dockerfile's `cpu` stage."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    cpu = text.split(" AS cpu\n", 1)[1].split("\nFROM ", 1)[0]
    line = next(ln for ln in cpu.splitlines() if ln.startswith("HEALTHCHECK"))
    return json.loads(line.split(" CMD ", 1)[1])


def _image_tree(root: Path) -> Path:
    """What `COPY service/ service/` and `COPY models/repository/ models/repository/` put under WORKDIR."""
    app = root / "app"
    shutil.copytree(REPO / "service", app / "service", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models" / "repository", app / "models" / "repository")
    return app


@pytest.mark.integration
@pytest.mark.skipif(bool(HELM_SKIP), reason=HELM_SKIP)
def test_image_layout_serves_with_chart_env_and_drains(tmp_path: Path) -> None:
    cm, dep = _rendered()
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    app = _image_tree(tmp_path)

    # The chart's repository path is the image's WORKDIR layout; swap only the root for this folder.
    assert cm["OMR_MODEL_REPOSITORY"].startswith(IMAGE_WORKDIR + "/")
    env = {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", **cm}
    env |= {
        "OMR_HOST": "127.0.0.1",
        "OMR_MODEL_REPOSITORY": str(app / cm["OMR_MODEL_REPOSITORY"].removeprefix(IMAGE_WORKDIR + "/")),
        "OMR_LOG_LEVEL": "warning",
    }
    healthcheck = [sys.executable, *_healthcheck_argv()[1:]]
    startup = container["startupProbe"]
    startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]

    proc, url = _launch(app, env, startup_budget_s, container["readinessProbe"]["httpGet"]["path"])
    env["OMR_PORT"] = url.rsplit(":", 1)[1]  # the HEALTHCHECK reads the port from the environment too
    try:
        assert subprocess.run(healthcheck, env=env, timeout=10).returncode == 0
        assert httpx.get(url + container["livenessProbe"]["httpGet"]["path"], timeout=2).status_code == 200
        assert "omr_queue_depth_rows" in httpx.get(f"{url}/metrics", timeout=2).text

        # Kubernetes: preStop sleep, then SIGTERM; the process must exit 0 in what is left of the grace period.
        pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        allowed_s = pod["terminationGracePeriodSeconds"] - pre_stop
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=allowed_s)  # the grace period is the wait's bound (TimeoutExpired past it)
        assert rc == 0, proc.communicate()[0].decode(errors="replace")[-3000:]
        assert subprocess.run(healthcheck, env=env, timeout=10, capture_output=True).returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
