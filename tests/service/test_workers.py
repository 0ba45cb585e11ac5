"""The pieces of the multi-worker topology on their own: the container's CPU count from cgroup files, the
shared block across a real second process, and the pod-wide queue limit over two workers' admissions."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from loadtest.server import free_port
from service.core.admission import Admission
from service.core.batcher import Batcher
from service.errors import Overloaded
from service.metrics import Metrics
from service.serve.balance import ConnectionBalance
from service.serve.cpus import container_cpus, resolve_workers
from service.serve.pod import Phase, PodState


def _cgroup(tmp: Path, v2: str | None = None, v1: tuple[str, str] | None = None) -> Path:
    if v2 is not None:
        (tmp / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp / "cpu").mkdir()
        (tmp / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return tmp


@pytest.mark.parametrize(
    ("v2", "v1", "want"),
    [
        ("200000 100000", None, 2),  # limits.cpu: 2
        ("150000 100000", None, 2),  # 1.5 CPUs: 2 workers share them
        ("50000 100000", None, 1),  # 500m
        (None, ("300000", "100000"), 3),  # cgroup v1
        (None, ("-1", "100000"), None),  # v1, no quota: the affinity mask
        ("max 100000", None, None),  # v2, no quota
        (None, None, None),  # no cgroup files at all
    ],
)
def test_container_cpus_reads_the_cgroup_quota(tmp_path: Path, v2: str | None, v1: tuple[str, str] | None,
                                                want: int | None) -> None:  # fmt: skip
    affinity = len(os.sched_getaffinity(0))
    got = container_cpus(_cgroup(tmp_path, v2, v1))
    assert got == (min(want, affinity) if want is not None else affinity)


def test_resolve_workers_zero_means_the_container_cpus(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, "100000 100000")
    assert resolve_workers(0, root) == 1
    assert resolve_workers(3, root) == 3


def _child_publishes(path: str, index: int, rows: int, done: multiprocessing.synchronize.Event) -> None:
    pod = PodState.attach(Path(path))
    slot = pod.slot(index)
    slot.set_phase(Phase.READY)
    slot.publish_pending(0, rows)
    done.set()


def test_pod_state_is_shared_with_a_spawned_process(tmp_path: Path) -> None:
    pod = PodState.create(tmp_path / "pod.bin", 2)
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    proc = ctx.Process(target=_child_publishes, args=(str(pod.path), 1, 123, done))
    proc.start()
    assert done.wait(60)
    proc.join(60)
    assert pod.phase(1) is Phase.READY and pod.pid(1) == proc.pid
    assert pod.slot(0).others_pending(0) == 123 and pod.slot(1).others_pending(0) == 0
    assert pod.ready_workers() == 1
    assert pod.slot(0).not_ready_reasons() == ["workers not ready (0: starting)"]
    pod.set_worker(1, Phase.DEAD)  # a dead worker's backlog leaves the pod's count
    assert pod.slot(0).others_pending(0) == 0
    pod.start_draining()
    assert pod.slot(0).not_ready_reasons() == ["the pod is shutting down"]
    pod.close()


def _held(gate: threading.Event):
    def infer(batch: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return np.zeros((len(batch), 2), np.float32)

    return infer


async def _two_workers(tmp: Path) -> None:
    pod = PodState.create(tmp / "pod.bin", 2)
    gate = threading.Event()
    metrics = Metrics()
    with ThreadPoolExecutor(2) as pool:
        batchers = [Batcher(f"m{i}", "CPU", _held(gate), row_shape=(4, 4), max_batch_size=8, max_delay_s=0,
                            max_in_flight=1, executor=pool, metrics=metrics) for i in range(2)]  # fmt: skip
        admissions = [Admission(b, 100, metrics) for b in batchers]
        for i, a in enumerate(admissions):
            a.share(pod.slot(i), 0)
        a0, a1 = admissions
        r0 = a0.admit(60, budget_s=10)  # worker 0 holds 60 rows (decoding)
        with pytest.raises(Overloaded, match=r"queue full: 60 rows in the pod \(limit 100\)"):
            a1.admit(50, budget_s=10)  # worker 1's own queue is empty: only the pod total refuses it
        r1 = a1.admit(40, budget_s=10)  # 60 + 40 = the limit exactly
        with pytest.raises(Overloaded):
            a0.admit(1, budget_s=10)
        r0.release()  # worker 0's rows are gone (answered): worker 1 sees it at once
        assert a1.pod_pending_rows() == 40
        r2 = a1.admit(60, budget_s=10)
        r1.release()
        r2.release()
        assert pod.pending(0) == [0, 0]
    gate.set()
    pod.close()


def test_queue_limit_counts_every_worker_of_the_pod(tmp_path: Path) -> None:
    asyncio.run(_two_workers(tmp_path))


@pytest.mark.integration
def test_pod_whose_workers_cannot_start_exits_nonzero(tmp_path: Path) -> None:
    """A bad model repository fails every worker before it is ready: the pod exits 1 (no crash loop)."""
    cmd = [sys.executable, "-m", "service", "--workers", "2", "--port", str(free_port()),
           "--model-repository", str(tmp_path / "absent"), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "before it was ready: stopping the pod" in proc.stderr
    assert "is not a folder" in proc.stderr


def test_signal_handler_takes_no_lock_the_interrupted_code_may_hold() -> None:
    """SIGTERM can land while the main thread holds a metric's (non-reentrant) lock; draining from inside the
    handler deadlocked a worker. The handler only schedules the drain on the event loop."""
    import signal
    from types import SimpleNamespace

    import uvicorn

    from service.__main__ import DrainingServer
    from service.settings import Settings

    lock = threading.Lock()  # stands for prometheus_client's value lock
    outcome: list[str] = []

    async def scenario() -> None:
        done = asyncio.Event()

        class Omr:
            def start_draining(self) -> None:
                got = lock.acquire(timeout=2)
                outcome.append("drained" if got else "would deadlock")
                if got:
                    lock.release()
                done.set()

        server = DrainingServer(uvicorn.Config(SimpleNamespace(state=SimpleNamespace(omr=Omr()))), Settings())
        with lock:  # the signal arrives inside a metric update
            server.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(done.wait(), 10)

    asyncio.run(scenario())
    assert outcome == ["drained"]


def test_connection_balance_closes_only_what_is_above_the_share_of_ready_workers(tmp_path: Path) -> None:
    pod = PodState.create(tmp_path / "pod.bin", 3)
    open_now = {"n": 7}
    now = [0.0]
    for i in range(3):
        pod.slot(i).set_phase(Phase.READY)
    me = ConnectionBalance(pod.slot(0), lambda: open_now["n"], settle_s=1.0, clock=lambda: now[0])
    pod.set_connections(1, 1)
    pod.set_connections(2, 1)
    me.update()  # 9 connections over 3 ready workers: a share of 3, this worker holds 7 ...
    assert pod.connections() == [7, 1, 1] and me.excess == 0  # ... but not for long yet: nothing closes
    now[0] = 0.5
    me.update()
    assert me.excess == 0
    now[0] = 1.0
    me.update()  # above its share for 1 s: close the 4 above it
    assert me.excess == 4
    assert [me.close_next() for _ in range(5)] == [True, True, True, True, False]
    pod.slot(2).set_phase(Phase.STARTING)  # a worker warming up takes no share (its count is reset too)
    open_now["n"] = 3
    me.update()  # 3 + 1 over 2 ready workers: a share of 2, and still above a share since t=0
    assert pod.connections() == [3, 1, 0] and me.excess == 1
    open_now["n"] = 2
    me.update()  # back to its share: the clock restarts
    assert me.excess == 0
    open_now["n"] = 3
    now[0] = 1.5
    me.update()
    assert me.excess == 0  # above again, but only just
    pod.slot(1).set_phase(Phase.STARTING)
    me.update()  # alone among the ready: keep everything
    assert me.excess == 0
    pod.slot(1).set_phase(Phase.READY)
    pod.set_connections(1, 0)
    open_now["n"] = 1
    me.update()  # one connection: ceil(1 / 2) = 1, never closed
    assert me.excess == 0
    open_now["n"] = 5
    pod.start_draining()
    me.update()  # draining closes every connection anyway
    assert me.excess == 0


def test_worker_cpu_pins_only_a_container_with_exactly_its_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.serve import cpus

    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: {4, 5})
    assert [cpus.worker_cpu(i, 2, None) for i in range(2)] == [4, 5]  # 2 CPUs of its own, 2 workers: pinned
    assert cpus.worker_cpu(0, 2, None, split_sheets=False) is None  # no split: the batcher wants both CPUs
    assert cpus.worker_cpu(0, 3, None) is None  # more workers than CPUs: the kernel places them
    assert cpus.worker_cpu(0, 1, True) is None  # one process: nothing to keep apart
    assert cpus.worker_cpu(1, 2, False) is None
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert cpus.worker_cpu(0, 2, None) is None  # the node's 64 CPUs under a 2-CPU quota: never pinned
    assert [cpus.worker_cpu(i, 2, True) for i in range(2)] == [0, 1]  # asked for: the first CPUs of the mask
