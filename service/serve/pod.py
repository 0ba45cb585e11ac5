"""What the processes of one pod share: a small block of int64 counters in a memory-mapped file.

Layout (int64 words): a header, then one record per worker.

    header:  [draining, restarts, workers]
    worker:  [phase, pid, open connections, requests in flight, pending rows of model 0 .. MAX_MODELS-1]

Each word has ONE writer, so no lock is needed: the supervisor writes the header, a worker's phase when it
dies and the pid; a worker writes its own phase, its open connections, its requests in flight
(`service.serve.peers` reads them to find an idle worker) and its own pending rows. Readers may
see a value a moment old, which admission, readiness and the connection balance tolerate (an aligned 8-byte
store is never torn on the platforms we run).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

MAX_MODELS = 16
_HEADER = 3
_DRAINING, _RESTARTS, _WORKERS = range(_HEADER)
_PHASE, _PID, _CONNS, _ACTIVE, _PENDING = 0, 1, 2, 3, 4
_RECORD = _PENDING + MAX_MODELS


class Phase(IntEnum):
    STARTING = 0  # spawned, loading or warming
    READY = 1  # loaded and warmed on every bucket
    DRAINING = 2  # got SIGTERM
    DEAD = 3  # exited; the supervisor replaces it unless the pod is draining


class PodState:
    """The shared block; `create` (supervisor) or `attach` (worker) by path."""

    def __init__(self, path: Path, words: np.ndarray, mm: mmap.mmap) -> None:
        self.path = path
        self._w = words
        self._mm = mm

    @classmethod
    def create(cls, path: Path, workers: int) -> PodState:
        size = 8 * (_HEADER + workers * _RECORD)
        with path.open("wb") as f:
            f.write(b"\0" * size)
        pod = cls.attach(path)
        pod._w[_WORKERS] = workers
        return pod

    @classmethod
    def attach(cls, path: Path) -> PodState:
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(path, np.frombuffer(mm, np.int64), mm)

    def close(self) -> None:
        del self._w
        self._mm.close()

    # --- header (supervisor writes) ------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return int(self._w[_WORKERS])

    @property
    def draining(self) -> bool:
        return bool(self._w[_DRAINING])

    def start_draining(self) -> None:
        self._w[_DRAINING] = 1

    @property
    def restarts(self) -> int:
        return int(self._w[_RESTARTS])

    def count_restart(self) -> None:
        self._w[_RESTARTS] += 1

    # --- per worker -----------------------------------------------------------------------------------------
    def _base(self, index: int) -> int:
        if not 0 <= index < self.workers:
            raise IndexError(f"worker {index} of {self.workers}")
        return _HEADER + index * _RECORD

    def phase(self, index: int) -> Phase:
        return Phase(int(self._w[self._base(index) + _PHASE]))

    def pid(self, index: int) -> int:
        return int(self._w[self._base(index) + _PID])

    def set_worker(self, index: int, phase: Phase, pid: int | None = None) -> None:
        base = self._base(index)
        if pid is not None:
            self._w[base + _PID] = pid
        if phase is Phase.DEAD or phase is Phase.STARTING:  # a dead worker's connections and backlog are gone
            self._w[base + _CONNS : base + _RECORD] = 0
        self._w[base + _PHASE] = int(phase)

    def phases(self) -> list[Phase]:
        return [self.phase(i) for i in range(self.workers)]

    def ready_workers(self) -> int:
        return sum(p is Phase.READY for p in self.phases())

    def slot(self, index: int, ready: Connection | None = None) -> WorkerSlot:
        self._base(index)
        return WorkerSlot(self, index, ready)

    # --- open connections (`service.serve.balance`) ---------------------------------------------------------
    def set_connections(self, index: int, count: int) -> None:
        self._w[self._base(index) + _CONNS] = count

    def connections(self) -> list[int]:
        """Open HTTP connections of every worker (its last published figure)."""
        return [int(x) for x in self._w[_HEADER + _CONNS : _HEADER + self.workers * _RECORD : _RECORD]]

    # --- requests in flight (`service.serve.peers`) --------------------------------------------------------
    def set_active(self, index: int, requests: int) -> None:
        self._w[self._base(index) + _ACTIVE] = requests

    def active(self, index: int) -> int:
        return int(self._w[self._base(index) + _ACTIVE])

    # --- pending rows (admission) ---------------------------------------------------------------------------
    def set_pending(self, index: int, model: int, rows: int) -> None:
        self._w[self._base(index) + _PENDING + model] = rows

    def pending_column(self, model: int) -> np.ndarray:
        """A view of `model`'s pending rows, one element per worker."""
        return self._w[_HEADER + _PENDING + model : _HEADER + self.workers * _RECORD : _RECORD]

    def pending(self, model: int) -> list[int]:
        """Pending rows of `model` in every worker (its record's last published value)."""
        return [int(x) for x in self.pending_column(model)]


@dataclass(frozen=True)
class WorkerSlot:
    """One worker's view of the pod: write its own record, read everyone's."""

    pod: PodState
    index: int
    #: tells the supervisor this worker is ready (it starts the next one then: one warm-up at a time)
    ready: Connection | None = field(default=None, compare=False)

    def set_phase(self, phase: Phase) -> None:
        self.pod.set_worker(self.index, phase, os.getpid())
        if phase is Phase.READY and self.ready is not None:
            with contextlib.suppress(OSError):  # the supervisor is gone: nothing to tell
                self.ready.send_bytes(b"ready")

    def not_ready_reasons(self) -> list[str]:
        if self.pod.draining:
            return ["the pod is shutting down"]
        waiting = [f"{i}: {p.name.lower()}" for i, p in enumerate(self.pod.phases()) if p is not Phase.READY]
        return [f"workers not ready ({', '.join(waiting)})"] if waiting else []

    def publish_pending(self, model: int, rows: int) -> None:
        self.pod.set_pending(self.index, model, rows)

    def others_pending(self, model: int) -> int:
        """Rows of `model` pending in the other workers (their last published figures). Once per admission:
        one strided numpy sum, no Python list."""
        col = self.pod.pending_column(model)
        return int(col.sum()) - int(col[self.index])
