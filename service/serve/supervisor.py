"""The pod's supervisor: one listening socket, N worker processes, restarts, and a pod-wide shutdown.

- binds host:port once; every worker inherits the socket and accepts from the same kernel queue (the
  gunicorn / uvicorn `--workers` shape), so a worker that stops accepting leaves its share to the others and
  no connection waits in a queue only a closed socket can reset (SO_REUSEPORT would give each worker its own);
- creates the shared block (`service.serve.pod`) and the prometheus_client multiprocess folder;
- starts the workers one after another, each when the previous one reports ready (`_start_next`);
- a worker that dies after it was ready is replaced and counted (`omr_worker_restarts_total`); /readyz is 503
  until the replacement is warm. A worker that dies before it was ever ready stops the pod (exit 1): a start-up
  failure (bad model, bad settings) must fail the container, not crash-loop inside it;
- SIGTERM / SIGINT: mark the pod draining (every worker's /readyz 503 at once), forward the signal to every
  worker (each keeps accepting for `shutdown_delay_s`, then drains), close this process's copy of the
  listener, wait for all workers, exit 0. Further signals are forwarded too (skip the delay / force exit).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections import deque
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import multiprocess

from service.serve.pod import Phase, PodState
from service.serve.worker import worker_main
from service.settings import Settings

if TYPE_CHECKING:  # the supervisor never loads a model: ONNX Runtime is imported in the workers only
    from service.core.runtime import SessionFactory

log = logging.getLogger("service.supervisor")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The pod's listening socket, inheritable by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _metrics_dir(scratch: Path) -> Path:
    """The operator's PROMETHEUS_MULTIPROC_DIR (emptied: stale files would add old counts), else a fresh one."""
    configured = os.environ.get(MULTIPROC_ENV)
    folder = Path(configured) if configured else scratch / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


class Supervisor:
    def __init__(
        self, settings: Settings, workers: int, sock: socket.socket, pod: PodState, metrics_dir: Path,
        session_factory: SessionFactory | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.sock: socket.socket | None = sock
        self.pod = pod
        self.metrics_dir = metrics_dir
        self.session_factory = session_factory
        self.procs: list[BaseProcess | None] = [None] * workers
        self.draining = False
        self.failed = False
        self._ctx = multiprocessing.get_context("spawn")
        self._signals: deque[int] = deque()
        self._ready: dict[Connection, int] = {}  # workers not ready yet: the end they report on
        self._unstarted = list(range(workers))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def spawn(self, index: int) -> None:
        assert self.sock is not None, "no workers are started once the pod drains"
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.settings, self.sock, index, str(self.pod.path), os.getpid(), ready_w, self.session_factory),
            name=f"omr-worker-{index}",
        )
        self.pod.set_worker(index, Phase.STARTING, 0)
        proc.start()
        ready_w.close()  # the worker holds the other end
        self._ready[ready_r] = index
        self.pod.set_worker(index, Phase.STARTING, proc.pid)
        self.procs[index] = proc
        log.info("started worker %d (pid %s)", index, proc.pid)

    def on_signal(self, sig: int, _frame: FrameType | None) -> None:
        """The signal handler: note the signal and wake the main loop, nothing else. A handler runs between two
        bytecodes of whatever the main thread is doing (spawning a worker, logging); closing the socket or
        taking a lock from here could break that or deadlock (it did in a worker: a metric's lock)."""
        self._signals.append(sig)
        with contextlib.suppress(BlockingIOError):  # the pipe is full: the loop is awake anyway
            os.write(self._wake_w, b"\0")

    def _forward(self, sig: int) -> None:
        if not self.draining:
            log.info("signal %d: draining %d workers", sig, len(self.procs))
            self._drain()
        for proc in self.procs:
            if proc is not None and proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, sig)

    def _drain(self) -> None:
        self.draining = True
        self.pod.start_draining()  # readiness 503 in every worker before any of them sees the signal
        if self.sock is not None:
            self.sock.close()  # the workers' copies keep the listener open until the last one closes it
            self.sock = None

    def _reap(self, index: int, proc: BaseProcess) -> None:
        proc.join()
        assert proc.pid is not None
        multiprocess.mark_process_dead(proc.pid, str(self.metrics_dir))  # its live gauges leave the sums
        was = self.pod.phase(index)
        self.pod.set_worker(index, Phase.DEAD)
        self.procs[index] = None
        code = proc.exitcode
        if self.draining:
            log.info("worker %d (pid %d) exited with %s", index, proc.pid, code)
            if code != 0:
                self.failed = True
            return
        if was is Phase.STARTING:
            log.error("worker %d (pid %d) exited with %s before it was ready: stopping the pod", index, proc.pid,
                      code)  # fmt: skip
            self.failed = True
            self._forward(signal.SIGTERM)
            return
        self.pod.count_restart()
        log.warning("worker %d (pid %d) died (exit %s): starting a replacement", index, proc.pid, code)
        self.spawn(index)

    def _start_next(self) -> None:
        """Start the next worker of the initial set. One warm-up at a time: a worker warming beside another
        measures a slow model (admission's first cost estimate) and, on a new GPU, both would build the same
        TensorRT engine into the shared cache at once; the next one starts when this one is ready."""
        if self._unstarted and not self.draining:
            self.spawn(self._unstarted.pop(0))

    def _on_ready(self, conn: Connection) -> None:
        index = self._ready.pop(conn)
        try:
            conn.recv_bytes()
        except (EOFError, OSError):  # it died before it was ready: its sentinel says so (and stops the pod)
            return
        finally:
            conn.close()
        log.info("worker %d ready", index)
        self._start_next()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        try:
            self._start_next()
            while True:
                while self._signals:
                    self._forward(self._signals.popleft())
                alive = {p.sentinel: (i, p) for i, p in enumerate(self.procs) if p is not None}
                if not alive:
                    break
                for ready in wait([*alive, self._wake_r, *self._ready]):  # a signal wakes it through the pipe
                    if ready == self._wake_r:
                        while True:
                            try:
                                os.read(self._wake_r, 512)
                            except BlockingIOError:
                                break
                    elif isinstance(ready, Connection):
                        self._on_ready(ready)
                    else:
                        index, proc = alive[ready]
                        self._reap(index, proc)
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)
            for conn in self._ready:
                conn.close()
        if self.sock is not None:
            self.sock.close()
        return 1 if self.failed else 0


def run(settings: Settings, workers: int, session_factory: SessionFactory | None = None) -> int:
    """Serve with `workers` processes until SIGTERM; the exit code (0 after a clean drain)."""
    sock = bind(settings.host, settings.port)
    scratch = Path(tempfile.mkdtemp(prefix="omr-pod-"))
    try:
        metrics_dir = _metrics_dir(scratch)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited by the spawned workers
        pod = PodState.create(scratch / "pod.bin", workers)
        log.info("serving on %s:%d with %d workers", settings.host, settings.port, workers)
        try:
            return Supervisor(settings, workers, sock, pod, metrics_dir, session_factory).run()
        finally:
            pod.close()
    finally:
        sock.close()
        shutil.rmtree(scratch, ignore_errors=True)
