"""Start the real service (`python -m service`) on 127.0.0.1 in a subprocess, wait until ready, stop it.

Used by the benchmark, the locust runner and the slow tests. Extra `OMR_*` settings go in through the
environment, exactly as an operator would set them (and `args`, its command-line flags).

The port: `python -m service` binds it itself, so a free port is picked first and another process could take it
in between. Two guards close that race: a child that exits before ready (port taken) is started again on another
port, and "ready" counts only when the listening socket on that port belongs to our process tree (Linux
/proc), so a stranger that grabbed the port can never be mistaken for our service.

The process's CPU time is readable while it runs, so a run can report crops per CPU-second of the service itself
(robust when other work shares the machine).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
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
        """User + system CPU time of the service so far: the process, its live workers (a pod of
        `OMR_WORKERS`) and the workers it already reaped (Linux /proc)."""
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
                if pid == self.process.pid:
                    total += int(fields[13]) + int(fields[14])  # cutime, cstime: waited-for children
        return total / _CLK_TCK

    def rss_bytes(self) -> int:
        """Resident memory of the process and its workers."""
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants, from the parent pid in every /proc/<pid>/stat (kernels without
    /proc/<pid>/task/<tid>/children lists too)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


#: /proc/net/tcp socket states
LISTEN, ESTABLISHED = "0A", "01"


def tcp_sockets(port: int, state: str = LISTEN) -> set[str]:
    """Sockets ("socket:[inode]", as /proc/<pid>/fd links name them) on local 127.0.0.1:`port` (or any
    address) in `state`, from /proc/net/tcp."""
    want = f":{port:04X}"
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            f = line.split()
            if f[1].endswith(want) and f[3] == state and f[1].split(":")[0] in ("0100007F", "00000000"):
                inodes.add(f"socket:[{f[9]}]")
    return inodes


def held_sockets(pid: int) -> set[str]:
    """The sockets `pid` holds open ("socket:[inode]")."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                held.add(target)
    return held


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return out


def owns_port(pid: int, port: int) -> bool:
    """Whether the socket listening on `port` is held by `pid` or one of its descendants."""
    listening = tcp_sockets(port, LISTEN)
    return any(held_sockets(p) & listening for p in _tree(pid))


def _addr_in_use(log_path: Path) -> bool:
    with contextlib.suppress(OSError):
        text = log_path.read_text(errors="replace")
        return f"[Errno {errno.EADDRINUSE}]" in text or "address already in use" in text.lower()
    return False


def start(
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 180.0,
    args: Sequence[str] = (),
    attempts: int = 5,
) -> Service:
    """Launch `python -m service [args]` on a free 127.0.0.1 port and block until GET /readyz answers 200.

    Retried on another port (up to `attempts` times) when the one picked was taken before the child bound it."""
    for attempt in range(attempts):
        svc = _start_once(env, log_path, ready_timeout_s, args)
        if svc is not None:
            return svc
        if attempt == attempts - 1:
            raise RuntimeError(f"service could not bind a free port in {attempts} attempts")
    raise AssertionError("unreachable")


def _start_once(
    env: Mapping[str, str] | None, log_path: Path | None, ready_timeout_s: float, args: Sequence[str]
) -> Service | None:
    port = free_port()
    log_path = log_path or Path(f"/tmp/omr-service-{port}.log")
    full_env = {**os.environ, "OMR_LOG_LEVEL": "warning", **(env or {})}
    cmd = [sys.executable, "-m", "service", "--host", HOST, "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    svc = Service(proc, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if _addr_in_use(log_path):
                return None  # another process took the port first: try another
            raise RuntimeError(f"service exited with {proc.returncode} before ready:\n{svc.log_tail()}")
        with contextlib.suppress(OSError):
            if _get(f"{svc.url}/readyz") == 200 and owns_port(proc.pid, port):
                return svc
        time.sleep(0.2)  # polls another process's readiness (observable state), not a wait for time
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
def running(
    env: Mapping[str, str] | None = None, log_path: Path | None = None, args: Sequence[str] = ()
) -> Iterator[Service]:
    svc = start(env, log_path, args=args)
    try:
        yield svc
    finally:
        stop(svc)
