"""SIGTERM while gRPC clients (`tritonclient.grpc`) infer continuously, against a real `python -m service`
subprocess, with one worker and with two (each worker runs its own grpc.aio server on the shared port).

Each call has one of these fates:
- served: OK with one label per crop;
- refused: UNAVAILABLE - the server (or the kernel) did not take the call, nothing was done, the client may
  retry elsewhere (gRPC only reports UNAVAILABLE for streams the server never started: after GOAWAY, or with
  no listener);
- declined: RESOURCE_EXHAUSTED - admission control refused it before any work (a busy machine), retry later;
- shutdown race: CANCELLED at the instant the server stops - grpc core cancels calls that reached the server
  but were not yet handed to the handler loop when `stop()` runs (its "zombified" pending calls). The gRPC form
  of the TCP accept-backlog reset every server has (tests/reliability/test_shutdown.py): only a client that
  ignores readiness and sends into the closing instant meets it, so it is allowed at most once per sender and
  only at the listener's close; `shutdown_delay_s`, in which load balancers stop sending, is what closes it
  (`test_sigterm_grpc_clients_following_readiness_lose_nothing` allows none);
- lost: anything else (CANCELLED at another time, INTERNAL, a timeout, a wrong answer).
Required: nothing lost; nothing refused while the `shutdown_delay_s` window is still open; ServerReady false
within a probe of the signal; calls in flight when the listener closed finish (sent before the first refusal,
answered OK after it); exit code 0 within the grace period; a call after exit is UNAVAILABLE.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from loadtest import server as service_process
from loadtest.server import free_port
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from ._support import bubble, png

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "omr-bubble"
SHUTDOWN_DELAY_S = 1.5
DRAIN_TIMEOUT_S = 15.0
GRACE_S = SHUTDOWN_DELAY_S + DRAIN_TIMEOUT_S + 5.0


@dataclass
class Calls:
    """(sent, answered, fate, detail) per call, monotonic clock."""

    log: list[tuple[float, float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: float, fate: str, detail: str = "") -> None:
        with self.lock:
            self.log.append((sent, time.monotonic(), fate, detail))

    def of(self, fate: str) -> list[tuple[float, float, str, str]]:
        return [c for c in self.log if c[2] == fate]


def images(n: int) -> tg.InferInput:
    data = np.array([png(bubble(40, seed=i)) for i in range(n)], dtype=np.object_)
    inp = tg.InferInput("IMAGE", [n], "BYTES")
    inp.set_data_from_numpy(data)
    return inp


def send(client: tg.InferenceServerClient, inp: tg.InferInput, n: int, calls: Calls) -> None:
    sent = time.monotonic()
    try:
        labels = client.infer(MODEL, [inp], client_timeout=60).as_numpy("label")
    except InferenceServerException as exc:
        fates = {"StatusCode.UNAVAILABLE": "refused", "StatusCode.CANCELLED": "cancelled",
                 "StatusCode.RESOURCE_EXHAUSTED": "declined"}  # fmt: skip
        fate = fates.get(exc.status(), "lost")
        calls.add(sent, fate, f"{exc.status()}: {exc.message()}")
        return
    calls.add(sent, "served" if labels is not None and labels.shape == (n,) else "lost", f"{labels!r}"[:100])


@dataclass
class Grpc:
    svc: service_process.Service
    port: int
    workers: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def svc(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Grpc]:
    port = free_port()
    env = {"OMR_SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S), "OMR_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
           "OMR_GRPC_PORT": str(port), "OMR_WORKERS": str(request.param), "OMR_LOG_LEVEL": "info"}  # fmt: skip
    s = service_process.start(env, tmp_path / "service.log")
    try:
        yield Grpc(s, port, request.param)
    finally:
        if s.process.poll() is None:
            s.process.kill()
            s.process.wait(10)


def ready_probe(target: str, stop: threading.Event, out: list[tuple[float, float, str]]) -> None:
    """(sent, answered, answer) per ServerReady probe: "ready", "not ready", or the status code once refused.
    Stamped at both ends: a slow answer on a busy machine is judged by when it was asked."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            sent = time.monotonic()
            try:
                ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
                out.append((sent, time.monotonic(), "ready" if ready else "not ready"))
            except grpc.RpcError as exc:
                out.append((sent, time.monotonic(), exc.code().name))
            stop.wait(0.05)


@dataclass
class Run:
    calls: Calls
    probes: list[tuple[float, float, str]]
    t_term: float
    t_exit: float
    code: int


def sigterm_under_load(svc: Grpc, follow_readiness: bool) -> Run:
    """Six gRPC clients infer back to back; SIGTERM once each was served twice; wait for the exit."""
    calls = Calls()
    stop = threading.Event()
    probes: list[tuple[float, float, str]] = []

    def removed() -> bool:
        """A load balancer took the endpoint out 0.5 s after the probe first saw it not ready."""
        gone = [answered for _, answered, answer in probes if answer != "ready"]
        return follow_readiness and bool(gone) and time.monotonic() - gone[0] > 0.5

    def sender(n: int) -> None:
        client = tg.InferenceServerClient(svc.target)  # one channel (HTTP/2 connection) per client, as in real use
        inp = images(n)
        try:
            while not stop.is_set() and svc.svc.process.poll() is None and not removed():
                refused = len(calls.of("refused"))
                send(client, inp, n, calls)
                if len(calls.of("refused")) > refused:
                    stop.wait(0.02)  # a refused client backs off a little, as real ones do
        finally:
            client.close()

    sizes = [20, 20, 20, 20, 200, 200]  # the big calls are long in flight: some are when the listener closes
    threads = [threading.Thread(target=sender, args=(n,)) for n in sizes]
    threads.append(threading.Thread(target=ready_probe, args=(svc.target, stop, probes)))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(calls.of("served")) < 2 * len(sizes) and time.monotonic() < deadline:
        time.sleep(0.05)  # steady traffic first: polls the served count, not an ordering
    t_term = time.monotonic()
    svc.svc.process.send_signal(signal.SIGTERM)
    try:
        code = svc.svc.process.wait(GRACE_S)
    finally:
        stop.set()
        for t in threads:
            t.join(90)
    return Run(calls, probes, t_term, time.monotonic(), code)


def check_common(svc: Grpc, run: Run) -> None:
    log = svc.svc.log_tail(10**7)
    assert log.count("gRPC (Open Inference Protocol) listening on") == svc.workers, "a gRPC server per worker"
    assert log.count("gRPC: refusing new calls") == svc.workers, "every worker's gRPC server drained"
    assert not run.calls.of("lost"), f"calls lost: {run.calls.of('lost')[:5]}"
    assert run.code == 0, svc.svc.log_tail()
    assert run.t_exit - run.t_term < GRACE_S
    served = run.calls.of("served")
    assert sum(answered >= run.t_term for _, answered, _, _ in served) >= 3, "nothing served after SIGTERM"
    asked_after = [answer for sent, _, answer in run.probes if sent >= run.t_term + 0.2]
    assert asked_after and "ready" not in asked_after, f"ServerReady said ready after SIGTERM: {asked_after}"
    assert "not ready" in asked_after, "ServerReady never answered false while draining"
    assert all(answer == "ready" for _, answered, answer in run.probes if answered < run.t_term), run.probes[:5]
    with grpc.insecure_channel(svc.target) as channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_drains_grpc_with_nothing_lost(svc: Grpc) -> None:
    run = sigterm_under_load(svc, follow_readiness=False)
    check_common(svc, run)
    refused, served, cancelled = run.calls.of("refused"), run.calls.of("served"), run.calls.of("cancelled")
    assert refused, "no call was refused after the drain window"
    first_refusal = min(answered for _, answered, _, _ in refused)
    assert first_refusal - run.t_term >= SHUTDOWN_DELAY_S * 0.8, "calls refused before the shutdown delay ended"
    races = [c for c in cancelled if abs(c[1] - first_refusal) < 0.5]
    assert races == cancelled, f"calls cancelled away from the listener's close: {cancelled}"
    assert len(races) <= 6, races
    # and none of them had started: every call that reached a handler finished (the servicer logs cancellations)
    assert "gRPC ModelInfer cancelled" not in svc.svc.log_tail(10**7), svc.svc.log_tail()
    finished_in_flight = [c for c in served if c[0] < first_refusal < c[1]]
    assert finished_in_flight, "no call in flight when the listener closed was seen to complete"
    print(f"served {len(served)} ({sum(a >= run.t_term for _, a, _, _ in served)} after SIGTERM, "
          f"{len(finished_in_flight)} in flight at the first refusal), refused {len(refused)}, "
          f"shutdown races {len(races)}, lost 0, exit {run.code} after {run.t_exit - run.t_term:.2f}s")  # fmt: skip


def test_sigterm_grpc_clients_following_readiness_lose_nothing(svc: Grpc) -> None:
    """Clients stop sending 0.5 s after ServerReady first says false (well inside the 1.5 s delay): every
    call is served, none refused or cancelled."""
    run = sigterm_under_load(svc, follow_readiness=True)
    check_common(svc, run)
    assert not run.calls.of("cancelled") and not run.calls.of("refused"), run.calls.log[-10:]
