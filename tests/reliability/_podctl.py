"""Test-side control of a real pod (`tests.reliability._pod` in a subprocess): start, scrape, find workers."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtest.server import free_port

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def get(port: int, path: str, timeout_s: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def post(port: int, body: bytes, timeout_s: float = 120.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("POST", "/classify", body, {"Content-Type": "application/json", "Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    gate: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body, _ = get(self.port, "/metrics")
        assert status == 200, body[:300]
        return samples(body.decode())

    def ready_status(self) -> int:
        with contextlib.suppress(OSError):
            return get(self.port, "/readyz", 5.0)[0]
        return 0

    def worker_pids(self) -> list[int]:
        """The supervisor's children that run a worker (not multiprocessing's resource tracker)."""
        pids = []
        for pid in _children(self.process.pid):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return sorted(pids)

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


@contextlib.contextmanager
def running_pod(tmp: Path, env: dict[str, str], ready: bool = True, ready_timeout_s: float = 120.0) -> Iterator[Pod]:
    """Start `tests.reliability._pod`; wait for /readyz 200 (or only for /healthz when `ready` is False)."""
    port = free_port()
    gate = tmp / "gate"
    gate.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "POD_GATE_DIR": str(gate),
        "OMR_HOST": HOST,
        "OMR_PORT": str(port),
        "OMR_LOG_LEVEL": "info",
        **env,
    }
    log_path = tmp / "pod.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.reliability._pod"], cwd=REPO, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    pod = Pod(proc, port, log_path, gate)
    try:
        deadline = time.monotonic() + ready_timeout_s
        path = "/readyz" if ready else "/healthz"
        while True:  # another process's start-up: nothing to wait on but its socket
            assert proc.poll() is None, f"pod exited with {proc.returncode}:\n{pod.log_tail()}"
            with contextlib.suppress(OSError):
                if get(port, path, 5.0)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"pod not up within {ready_timeout_s:g}s:\n{pod.log_tail()}"
            time.sleep(0.05)
        yield pod
    finally:
        (gate / "slow.open").touch()  # release anything a test left held
        (gate / "warm.hold").unlink(missing_ok=True)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                for pid in pod.worker_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait(10)
