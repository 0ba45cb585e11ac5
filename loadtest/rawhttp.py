"""Raw HTTP/1.1 over a socket on 127.0.0.1, for clients no library would be: half-sent heads, stalled bodies,
lying lengths. Plus what a hostile-client run watches: the server's RSS and open fds (/proc), and a canary
that asks `/healthz` every few milliseconds on its own connection, whose slowest answer is the event loop's
largest stall.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class Answer:
    status: int | None  # None: the connection closed (or timed out) without a status line
    head: bytes
    body: bytes
    seconds: float  # from the first byte sent to the answer (or the close)
    error: str | None = None  # "reset", "timeout", ... when the socket said so

    @property
    def closed_without_answer(self) -> bool:
        return self.status is None


def _read_answer(sock: socket.socket, started: float, limit: int = 1 << 20) -> Answer:
    data = b""
    error = None
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    except TimeoutError:
        error = "timeout"
    except ConnectionResetError:
        error = "reset"
    elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if head.startswith(b"HTTP/1."):
        status = int(head.split(b" ", 2)[1])
    return Answer(status, head, body, elapsed, error)


def exchange(
    port: int, chunks: Iterable[bytes], read_timeout: float = 10.0, write_first: bool = True, host: str = HOST
) -> Answer:
    """Send `chunks` (all of them, unless the server answers or closes first), then read one answer."""
    with socket.create_connection((host, port), timeout=read_timeout) as sock:
        started = time.monotonic()
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            if not write_first:
                return Answer(None, b"", b"", time.monotonic() - started, "reset")
        return _read_answer(sock, started)


def proc_status(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM): what the kernel charges the server."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def proc_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def wait_for(predicate: object, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll an observable condition (fds back down, a metric) until true or `timeout_s`; never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)


@dataclass
class Canary:
    """A normal client asking `/healthz` every `interval_s` over one keep-alive connection, in a thread."""

    port: int
    interval_s: float = 0.005
    timeout_s: float = 5.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Canary:
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)

    @property
    def max_s(self) -> float:
        return max(self.latencies, default=0.0)

    def _run(self) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: canary\r\n\r\n"
        sock: socket.socket | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection((HOST, self.port), timeout=self.timeout_s)
                sock.sendall(request)
                answer = _read_answer(sock, started)
                if answer.status != 200:
                    self.failures.append(f"status {answer.status} ({answer.error})")
                    sock.close()
                    sock = None
            except OSError as exc:
                self.failures.append(type(exc).__name__)
                sock = None
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(self.interval_s)
        if sock is not None:
            sock.close()


@dataclass
class RssPeak:
    """The server's largest VmRSS while the block runs (sampled every `interval_s` in a thread)."""

    pid: int
    interval_s: float = 0.02
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssPeak:
        self.peak = proc_status(self.pid, "VmRSS")
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
            except OSError:
                return
