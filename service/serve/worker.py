"""One worker process of a pod: the ordinary service on the supervisor's listening socket.

Started by `service.serve.supervisor` with multiprocessing's *spawn* (a fresh interpreter: no threads, ONNX
Runtime state or event loop copied from the parent), so prometheus_client is imported here for the first
time, after the supervisor set `PROMETHEUS_MULTIPROC_DIR`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from service.serve.cpus import worker_cpu
from service.serve.pod import PodState
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.runtime import SessionFactory

log = logging.getLogger("service.worker")

_PR_SET_PDEATHSIG = 1
#: exit code of a worker whose app did not start (model load failed): the supervisor stops the pod
STARTUP_FAILURE = 3


def _follow_parent(parent: int) -> None:
    """Get SIGTERM (and drain) if the supervisor dies, even by SIGKILL; leave its process group so a terminal's
    Ctrl-C reaches only the supervisor, which forwards it once."""
    os.setpgrp()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: an orphaned worker then lives until it is stopped
        log.warning("cannot ask for a parent-death signal on this platform")
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        raise SystemExit(0)


def worker_main(
    settings: Settings,
    sock: socket.socket,
    index: int,
    pod_path: str,
    parent: int,
    ready: Connection | None = None,
    session_factory: SessionFactory | None = None,  # None: the real ONNX Runtime session
) -> None:
    from service.__main__ import serve, setup_logging  # here: after PROMETHEUS_MULTIPROC_DIR is in the env

    _follow_parent(parent)
    setup_logging(settings)
    pod = PodState.attach(Path(pod_path))
    cpu = worker_cpu(index, pod.workers, settings.pin_workers, settings.split_sheets)
    if cpu is not None:  # before any thread starts: the threads inherit it
        os.sched_setaffinity(0, {cpu})
        log.info("worker %d keeps to CPU %d", index, cpu)
    log.info("worker %d (pid %d) starting", index, os.getpid())
    started = serve(settings, sockets=[sock], pod=pod.slot(index, ready), session_factory=session_factory)
    pod.close()
    if not started:
        raise SystemExit(STARTUP_FAILURE)
