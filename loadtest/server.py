"""Start the real service (`python -m service`) on 127.0.0.1 in a subprocess, wait until ready, stop it.

Used by the benchmark, the locust runner and the slow tests. Extra `OMR_*` settings go in through the
environment, exactly as an operator would set them. The process's CPU time is readable while it runs, so
a run can report crops per CPU-second of the service itself (robust when other work shares the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def start(
    env: Mapping[str, str] | None = None, log_path: Path | None = None, ready_timeout_s: float = 180.0
) -> Service:
    """Launch `python -m service` on a free 127.0.0.1 port and block until GET /readyz answers 200."""
    port = free_port()
    log_path = log_path or Path(f"/tmp/omr-service-{port}.log")
    full_env = {**os.environ, "OMR_LOG_LEVEL": "warning", **(env or {})}
    cmd = [sys.executable, "-m", "service", "--host", HOST, "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    svc = Service(proc, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode} before ready:\n{svc.log_tail()}")
        with contextlib.suppress(OSError):
            if _get(f"{svc.url}/readyz") == 200:
                return svc
        time.sleep(0.2)  # waiting on another process's start-up: nothing to block on but the socket
    stop(svc)
    raise TimeoutError(f"service not ready within {ready_timeout_s:.0f}s:\n{svc.log_tail()}")


def stop(svc: Service, timeout_s: float = 30.0) -> int:
    """SIGTERM (graceful drain), then SIGKILL if it overstays; returns the exit code."""
    if svc.process.poll() is None:
        svc.process.send_signal(signal.SIGTERM)
        try:
            svc.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            svc.process.kill()
            svc.process.wait(10)
    return int(svc.process.returncode)


@contextlib.contextmanager
def running(env: Mapping[str, str] | None = None, log_path: Path | None = None) -> Iterator[Service]:
    svc = start(env, log_path)
    try:
        yield svc
    finally:
        stop(svc)
