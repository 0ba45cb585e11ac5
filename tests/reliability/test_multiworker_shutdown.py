"""SIGTERM to a pod of several workers (`python -m service`, OMR_WORKERS=2) while both cores are kept busy by
spin loops and keep-alive clients that ignore readiness keep sending: nothing is lost.

Each client keeps ONE connection open and reuses it until a response says `Connection: close` (which every
response does once the pod drains), then reconnects. Per request:
- served: 200 with one result per crop;
- refused: the reconnect was refused (the listener is closed: nothing was sent);
- backlog reset: a *fresh* connection, opened in the last instant before the last worker closed the listener,
  reset without an answer (connections still in the accept queue when a listening socket closes are reset; the
  `shutdown_delay_s` window in which load balancers stop sending is what closes that race);
- lost: anything else, in particular an error on a *reused* keep-alive connection (the `RemoteProtocolError`
  a keep-alive connection closed under a request gave before responses said `Connection: close`).
Also: an idle keep-alive connection is still served during the delay; requests in flight at the signal finish.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from loadtest import server as service_process

from ._support import json_crops

pytestmark = pytest.mark.integration

SHUTDOWN_DELAY_S = 6.0  # long enough that a loaded machine still asks readiness and the idle connection within it
DRAIN_TIMEOUT_S = 15.0
GRACE_S = SHUTDOWN_DELAY_S + DRAIN_TIMEOUT_S + 10.0


@dataclass
class Outcome:
    fresh: bool  # first request on its connection
    sent: float
    done: float
    kind: str  # served | declined | refused | failed | wrong
    detail: str = ""
    closing: bool = False  # the response said Connection: close


@dataclass
class Record:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, o: Outcome) -> None:
        with self.lock:
            self.outcomes.append(o)


def keepalive_client(port: int, body: bytes, n: int, rec: Record, stop: threading.Event) -> None:
    conn: http.client.HTTPConnection | None = None
    fresh = True
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            fresh = True
            t = time.monotonic()
            try:
                conn.connect()
            except ConnectionRefusedError:
                rec.add(Outcome(True, t, time.monotonic(), "refused"))
                conn = None
                stop.wait(0.02)  # a refused client backs off a little, as real ones do
                continue
        t = time.monotonic()
        try:
            conn.request("POST", "/classify", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as exc:
            rec.add(Outcome(fresh, t, time.monotonic(), "failed", f"{type(exc).__name__}: {exc}"))
            conn.close()
            conn = None
            continue
        closing = (r.getheader("connection") or "").lower() == "close"
        if r.status == 200 and len(orjson.loads(data)["results"]) == n:
            kind = "served"
        elif r.status in (429, 503) and r.getheader("Retry-After"):
            kind = "declined"  # a clean refusal the client knows to retry: nothing done, nothing lost
        else:
            kind = "wrong"
        rec.add(Outcome(fresh, t, time.monotonic(), kind, f"HTTP {r.status}", closing))
        fresh = False
        if closing or r.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


@pytest.fixture
def spinners() -> Iterator[None]:
    """Keep every core busy (the machine a SIGTERM lands on in a crowded node)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[service_process.Service]:
    env = {"OMR_WORKERS": "2", "OMR_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S),
           "OMR_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), "OMR_LOG_LEVEL": "info"}  # fmt: skip
    s = service_process.start(env, tmp_path / "pod.log")
    try:
        yield s
    finally:
        if s.process.poll() is None:
            s.process.kill()  # the workers get SIGTERM from the kernel (parent-death signal)
            s.process.wait(10)


def test_sigterm_pod_of_two_busy_workers_loses_nothing(pod: service_process.Service, spinners: None) -> None:
    small = orjson.dumps(json_crops(20))
    big = orjson.dumps(json_crops(300, prefix="big"))
    rec = Record()
    stop = threading.Event()
    clients = [threading.Thread(target=keepalive_client, args=(pod.port, small, 20, rec, stop)) for _ in range(6)]
    for t in clients:
        t.start()
    # one request, then an idle keep-alive connection; the pod's connection balance may close a connection
    # after a response (a worker above its share of the 7): then the client reconnects, as a client does
    for _ in range(20):
        idle = http.client.HTTPConnection("127.0.0.1", pod.port, timeout=60)
        idle.request("POST", "/classify", small, {"Content-Type": "application/json"})
        first = idle.getresponse()
        first.read()
        assert first.status == 200
        if not first.will_close:
            break
        idle.close()
    assert not first.will_close, "every connection was closed after its first response"
    deadline = time.monotonic() + 60
    while sum(o.kind == "served" for o in rec.outcomes) < 12:  # steady traffic on both workers first
        assert time.monotonic() < deadline, "no steady traffic"
        time.sleep(0.01)
    in_flight: list[tuple[float, int, float]] = []
    sent = threading.Semaphore(0)

    def one_big() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", pod.port, timeout=60)
        t = time.monotonic()
        conn.request("POST", "/classify", big, {"Content-Type": "application/json"})
        sent.release()
        r = conn.getresponse()
        r.read()
        declined = r.status in (429, 503) and r.getheader("Retry-After") is not None
        in_flight.append((t, 429 if declined else r.status, time.monotonic()))
        conn.close()

    bigs = [threading.Thread(target=one_big) for _ in range(3)]
    for t in bigs:
        t.start()
    for _ in bigs:
        assert sent.acquire(timeout=30)  # every big request is on the wire (decoding or queued) at the signal
    t_term = time.monotonic()
    pod.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_DELAY_S
    while service_process._get(f"{pod.url}/readyz") != 503:  # the pod drains (asked within the delay)
        assert time.monotonic() < deadline, "readiness still 200 after the shutdown delay"
    idle.request("POST", "/classify", small, {"Content-Type": "application/json"})
    late = idle.getresponse()
    late.read()
    assert time.monotonic() - t_term < SHUTDOWN_DELAY_S, "too slow to test the idle connection within the delay"
    assert late.status == 200 and (late.getheader("connection") or "").lower() == "close"
    idle.close()
    try:
        code = pod.process.wait(GRACE_S)
    finally:
        stop.set()
        for t in [*clients, *bigs]:
            t.join(60)
    t_exit = time.monotonic()

    outcomes = rec.outcomes
    refused = sorted(o.sent for o in outcomes if o.kind == "refused" and o.sent >= t_term)
    assert refused, "no reconnect was refused after the drain window"
    closed_at = refused[0]

    def backlog_reset(o: Outcome) -> bool:
        return o.kind == "failed" and o.fresh and abs(o.done - closed_at) < 0.5 and closed_at - o.sent < 0.5

    lost = [o for o in outcomes if o.kind in ("failed", "wrong") and not backlog_reset(o)]
    resets = [o for o in outcomes if backlog_reset(o)]
    assert not lost, f"{len(lost)} lost: {lost[:5]}"
    assert not [o for o in outcomes if o.kind == "failed" and not o.fresh], "a reused keep-alive connection failed"
    assert len(resets) <= len(clients), resets
    assert code == 0, pod.log_tail()
    assert t_exit - t_term < GRACE_S
    assert all(status in (200, 429) for _, status, _ in in_flight), in_flight  # 429: admission on a busy box
    assert any(t < t_term < done and status == 200 for t, status, done in in_flight), "none in flight at SIGTERM served"
    after = [o for o in outcomes if o.kind == "served" and o.sent >= t_term + 0.5]
    assert len(after) >= 3, "nothing served during the shutdown delay"
    assert all(o.closing for o in after), "a response after SIGTERM did not say Connection: close"
    assert closed_at - t_term >= SHUTDOWN_DELAY_S * 0.8, "the listener closed before the shutdown delay ended"
    print(f"served {sum(o.kind == 'served' for o in outcomes)} ({len(after)} >= 0.5 s after SIGTERM, all "
          f"Connection: close), refused reconnects {len(refused)}, backlog resets {len(resets)}, lost 0, "
          f"exit {code} after {t_exit - t_term:.2f}s")  # fmt: skip
