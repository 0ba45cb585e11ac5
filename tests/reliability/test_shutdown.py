"""SIGTERM while clients send continuously, against a real `python -m service` subprocess.

Senders open a new connection per request, so every request has exactly one of these fates:
- served: 200 with one result per crop;
- refused: the connection was refused (nothing was sent);
- declined: a clean 429/503 with Retry-After (nothing was done; the client knows to retry);
- backlog reset: connected in the last instant before the listener closed, then reset by the kernel without
  an answer (reset or broken pipe: connections still in the accept backlog when a listening socket closes
  are reset, a TCP-level race every server has; the `shutdown_delay_s` window, in which load balancers stop
  sending, is what closes it: `test_sigterm_behind_a_load_balancer_loses_nothing` requires none at all);
- lost: anything else (reset or empty reply after the request was sent, 5xx, a wrong body, a timeout).
The test requires 0 lost and at most one backlog reset per sender; readiness false within a poll of the
signal; requests still served during the `shutdown_delay_s` window, including some that were in flight when
the signal landed; no successful connect once connections start being refused; the process gone with exit
code 0 within the grace period.
"""

from __future__ import annotations

import http.client
import signal
import subprocess
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

SHUTDOWN_DELAY_S = 1.5
DRAIN_TIMEOUT_S = 15.0
GRACE_S = SHUTDOWN_DELAY_S + DRAIN_TIMEOUT_S + 5.0  # what a pod's terminationGracePeriodSeconds must exceed


@dataclass
class Log:
    served: list[float] = field(default_factory=list)  # completion times
    straddling: int = 0  # served requests that were sent before SIGTERM and answered after it
    refused: list[float] = field(default_factory=list)  # connection refused
    declined: list[float] = field(default_factory=list)  # 429/503 + Retry-After
    connected: list[float] = field(default_factory=list)
    lost: list[tuple[float, float, str]] = field(default_factory=list)  # (connected, failed, why)
    lock: threading.Lock = field(default_factory=threading.Lock)
    t_term: float | None = None


def send_once(
    port: int, body: bytes, n: int, log: Log, timeout_s: float = 60.0, sent: threading.Event | None = None
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError:
            with log.lock:
                log.refused.append(time.monotonic())
            return
        t_conn = time.monotonic()
        with log.lock:
            log.connected.append(t_conn)
        try:
            conn.request("POST", "/classify", body, {"Content-Type": "application/json", "Connection": "close"})
            if sent is not None:
                sent.set()  # the whole request is on the wire
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as exc:
            with log.lock:
                log.lost.append((t_conn, time.monotonic(), f"{type(exc).__name__}: {exc}"))
            return
        with log.lock:
            if r.status == 200 and len(orjson.loads(data)["results"]) == n:
                log.served.append(time.monotonic())
                if log.t_term is not None and t_conn < log.t_term < log.served[-1]:
                    log.straddling += 1
            elif r.status in (429, 503) and r.getheader("Retry-After"):
                log.declined.append(time.monotonic())
            else:
                log.lost.append((t_conn, time.monotonic(), f"HTTP {r.status}: {data[:200]!r}"))
    finally:
        conn.close()


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[service_process.Service]:
    env = {"OMR_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S), "OMR_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
           "OMR_LOG_LEVEL": "info"}  # fmt: skip
    s = service_process.start(env, tmp_path / "service.log")
    try:
        yield s
    finally:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait(10)


def wait_exit(svc: service_process.Service) -> int:
    """The exit code, once the process is gone; a failure with the service's log if it outlives the grace period."""
    try:
        return svc.process.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {GRACE_S:g}s after SIGTERM; service log:\n{svc.log_tail(6000)}")


def readiness_probe(port: int, stop: threading.Event, out: list[tuple[float, float, int]]) -> None:
    """(sent, answered, status) per probe: stamped at both ends, so a slow answer on a busy machine is
    judged by when it was asked, not by when it arrived."""
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        sent = time.monotonic()
        try:
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            out.append((sent, time.monotonic(), status))
        except OSError:
            out.append((sent, time.monotonic(), 0))
        finally:
            conn.close()
        stop.wait(0.05)


def test_sigterm_drains_with_nothing_lost(svc: service_process.Service, until) -> None:
    small = orjson.dumps(json_crops(20))
    big = orjson.dumps(json_crops(200, prefix="big"))
    log = Log()
    stop = threading.Event()
    probes: list[tuple[float, float, int]] = []

    def sender() -> None:
        while not stop.is_set():
            refused = len(log.refused) + len(log.declined)
            send_once(svc.port, small, 20, log)
            if svc.process.poll() is not None:
                return
            if len(log.refused) + len(log.declined) > refused:
                stop.wait(0.02)  # a refused client backs off a little, as real ones do

    threads = [threading.Thread(target=sender) for _ in range(6)]
    threads.append(threading.Thread(target=readiness_probe, args=(svc.port, stop, probes)))
    for t in threads:
        t.start()
    until(lambda: len(log.served) >= 12, 120, "steady traffic first (12 served)")
    sent = [threading.Event() for _ in range(3)]
    bigs = [threading.Thread(target=send_once, args=(svc.port, big, 200, log, 60.0, e)) for e in sent]
    for t in bigs:
        t.start()
    for e in sent:  # the big requests are on the wire (being read / decoded / queued) when the signal lands
        assert e.wait(60), "a big request was never sent"
    t_term = log.t_term = time.monotonic()
    svc.process.send_signal(signal.SIGTERM)
    try:
        code = wait_exit(svc)
    finally:
        stop.set()
        for t in [*threads, *bigs]:
            t.join(60)
    t_exit = time.monotonic()

    refused = [t for t in log.refused if t >= t_term]
    assert refused, "no connection was refused after the drain window"
    closed_at = refused[0]  # ~ when the listener closed

    def backlog_reset(connected: float, failed: float, why: str) -> bool:
        return (
            why.startswith(("ConnectionResetError", "RemoteDisconnected", "BrokenPipeError"))
            and abs(failed - closed_at) < 0.5
            and closed_at - connected < 0.5
        )

    resets = [x for x in log.lost if backlog_reset(*x)]
    lost = [x for x in log.lost if not backlog_reset(*x)]
    assert not lost, f"{len(lost)} requests lost: {lost[:5]}"
    assert len(resets) <= 6, resets
    assert code == 0, svc.log_tail()  # exited by itself: wait(GRACE_S) above would have raised otherwise
    served_before = sum(t < t_term for t in log.served)
    served_after = sum(t >= t_term for t in log.served)
    assert served_before > 0 and served_after >= 3, (served_before, served_after)
    assert log.straddling >= 1, "no request in flight at SIGTERM was seen to complete"
    asked_after = [status for sent, _, status in probes if sent >= t_term + 0.2]
    assert asked_after and 200 not in asked_after, f"a probe asked after SIGTERM was answered ready: {asked_after}"
    assert any(status == 503 for status in asked_after), "readiness never answered 503 while draining"
    assert all(status != 503 for _, answered, status in probes if answered < t_term), "not ready before SIGTERM"
    assert refused[0] - t_term >= SHUTDOWN_DELAY_S * 0.8, "connections refused before the shutdown delay ended"
    assert not [t for t in log.connected if t > refused[0] + 0.2], "connections accepted after refusing began"
    print(f"served {len(log.served)} ({served_after} after SIGTERM), refused {len(log.refused)}, "
          f"declined {len(log.declined)}, in flight at SIGTERM and served {log.straddling}, "
          f"backlog resets {len(resets)}, lost 0, "
          f"exit {code} after {t_exit - t_term:.2f}s")  # fmt: skip


def test_sigterm_behind_a_load_balancer_loses_nothing(svc: service_process.Service, until) -> None:
    """Senders stop opening connections 0.5 s after the probe first sees readiness false (a load balancer
    removing the endpoint, well inside the 1.5 s shutdown delay): every request is served, none reset."""
    small = orjson.dumps(json_crops(20))
    log = Log()
    stop = threading.Event()
    probes: list[tuple[float, float, int]] = []

    def removed() -> bool:
        gone = [answered for _, answered, status in probes if status != 200]
        return bool(gone) and time.monotonic() - gone[0] > 0.5

    def sender() -> None:
        while not stop.is_set() and not removed():
            send_once(svc.port, small, 20, log)

    threads = [threading.Thread(target=sender) for _ in range(6)]
    threads.append(threading.Thread(target=readiness_probe, args=(svc.port, stop, probes)))
    for t in threads:
        t.start()
    until(lambda: len(log.served) >= 12, 120, "steady traffic first (12 served)")
    t_term = time.monotonic()
    svc.process.send_signal(signal.SIGTERM)
    try:
        code = wait_exit(svc)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert code == 0, svc.log_tail()
    assert not log.lost, log.lost[:5]
    assert sum(t >= t_term for t in log.served) > 0  # served during the delay, before the endpoint went away
    assert not [t for t in log.refused if t < t_term + SHUTDOWN_DELAY_S * 0.8]
