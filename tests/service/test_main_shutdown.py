"""`python -m service` as a real process: flags, and SIGTERM draining with traffic still arriving.

Every request opens its own connection, so its fate is known exactly: `refused` (connect refused: nothing was
sent), `served` (200, one result per crop) or `lost` (anything after the request was sent: a reset, an empty
reply, a 5xx - a read error after sending is a lost request, never a refusal). The senders behave like clients
behind a load balancer: they stop opening connections a moment after readiness first answers 503, well inside
the shutdown delay, so every request they sent must be served. No timing is asserted beyond the delay's
lower bound (the listener stays open at least that long).
"""

from __future__ import annotations

import base64
import http.client
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from loadtest import server as service_process
from service.__main__ import parse_args
from service.settings import Settings

SHUTDOWN_DELAY_S = 3.0
#: a load balancer's reaction time: senders stop this long after the first 503 from /readyz (< the delay)
LB_REACTION_S = 0.5


def test_parse_args_flags_override_settings() -> None:
    args = parse_args(["--port", "9001", "--providers", "CUDAExecutionProvider,CPUExecutionProvider",
                       "--max-batch-size", "64"])  # fmt: skip
    s = Settings(**args)
    assert (s.port, s.max_batch_size) == (9001, 64)
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert Settings(**parse_args([])).port == Settings().port


@dataclass
class Fates:
    served: list[float] = field(default_factory=list)  # completion times
    refused: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def send_once(port: int, body: bytes, n: int, fates: Fates) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError:
            with fates.lock:
                fates.refused.append(time.monotonic())
            return
        try:
            conn.request("POST", "/classify", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as exc:  # after (or while) sending: lost, not refused
            with fates.lock:
                fates.lost.append(f"{type(exc).__name__}: {exc}")
            return
        with fates.lock:
            if r.status == 200 and len(orjson.loads(data)["results"]) == n:
                fates.served.append(time.monotonic())
            else:
                fates.lost.append(f"HTTP {r.status}: {data[:200]!r}")
    finally:
        conn.close()


def readyz(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@pytest.mark.integration
def test_sigterm_drains_without_losing_accepted_requests(make_crops, encode_image, until, tmp_path: Path) -> None:
    flags = ["--shutdown-delay-s", str(SHUTDOWN_DELAY_S), "--drain-timeout-s", "5", "--log-level", "warning"]
    svc = service_process.start(log_path=tmp_path / "service.log", args=flags)
    try:
        n = 40
        body = orjson.dumps({"crops": [{"image": base64.b64encode(encode_image(im)).decode()} for im in make_crops(n)]})
        fates = Fates()
        not_ready_since: list[float] = []
        probes: list[int] = []
        stop = threading.Event()

        def balanced() -> bool:  # the load balancer has taken the endpoint out of rotation
            return bool(not_ready_since) and time.monotonic() - not_ready_since[0] > LB_REACTION_S

        def sender() -> None:
            while not stop.is_set() and not balanced():
                send_once(svc.port, body, n, fates)

        def probe() -> None:
            while not stop.is_set() and svc.process.poll() is None:
                sent = time.monotonic()
                probes.append(readyz(svc.port))
                if probes[-1] == 503 and not not_ready_since:
                    not_ready_since.append(sent)
                stop.wait(0.05)

        workers = [threading.Thread(target=sender) for _ in range(4)]
        for w in workers:
            w.start()
        until(lambda: len(fates.served) >= 8, 120, "steady traffic (8 served)")
        assert readyz(svc.port) == 200
        t_term = time.monotonic()
        svc.process.send_signal(signal.SIGTERM)
        prober = threading.Thread(target=probe)
        prober.start()
        try:
            rc = svc.process.wait(timeout=120)  # a hang guard, not a speed check
        finally:
            stop.set()
            for t in [*workers, prober]:
                t.join(timeout=60)
        assert rc == 0, svc.log_tail()
        assert not fates.lost, f"{len(fates.lost)} accepted requests lost: {fates.lost[:5]}"
        assert not_ready_since, f"readiness never answered 503 while draining: {probes}"
        assert 200 not in probes[probes.index(503) :], f"ready again after answering 503: {probes}"
        assert [t for t in fates.served if t > t_term], "no request was accepted during the shutdown delay"
        assert not [t for t in fates.refused if t < t_term + SHUTDOWN_DELAY_S * 0.8], "refused inside the delay"
    finally:
        service_process.stop(svc)
