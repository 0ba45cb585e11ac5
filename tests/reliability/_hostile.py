"""Shared by the hostile-client tests: `python -m service` with short front-door timeouts, and `watched(...)`,
which runs a normal client (the canary) beside the probes and checks the server's RSS and fds afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from loadtest import server
from loadtest.hostile import FRONT_DOOR_ENV
from loadtest.hostile_probes import Probe, Target, probes
from loadtest.rawhttp import Answer, Canary, RssPeak, proc_fds, proc_status, wait_for

MiB = 1 << 20


@dataclass
class Hostile:
    svc: server.Service
    target: Target

    def probe(self, name: str) -> tuple[Probe, list[Answer]]:
        (probe,) = [p for p in probes() if p.name == name]
        return probe, probe.run(self.target)

    def log(self) -> str:
        return self.svc.log_tail(1 << 20)


@contextlib.contextmanager
def hostile_service(env: Mapping[str, str] | None = None) -> Iterator[Hostile]:
    full = {**FRONT_DOOR_ENV, **(env or {})}
    with server.running(full) as svc:
        target = Target(svc.port, svc.process.pid, float(full["OMR_HEAD_TIMEOUT_S"]), float(full["OMR_BODY_TIMEOUT_S"]),
                        int(full["OMR_MAX_CONNECTIONS"]))  # fmt: skip
        yield Hostile(svc, target)


@contextlib.contextmanager
def watched(h: Hostile, max_rss_growth: int = 200 * MiB, canary_max_s: float = 3.0) -> Iterator[Canary]:
    """Probes inside the block; then: the canary was always served (none failed, none waited `canary_max_s`),
    RSS grew less than `max_rss_growth`, and the open fds came back to where they were."""
    pid = h.target.pid
    fds, rss = proc_fds(pid), proc_status(pid, "VmRSS")
    with Canary(h.target.port) as canary, RssPeak(pid) as peak:
        yield canary
    assert wait_for(lambda: proc_fds(pid) <= fds + 2, 20), f"fds {fds} -> {proc_fds(pid)}: connections held"
    assert canary.latencies and not canary.failures, canary.failures[:5]
    # generous: the measured figures are in docs/reliability.md; this catches a loop frozen for seconds
    assert canary.max_s < canary_max_s, f"a normal client waited {canary.max_s:.2f}s"
    assert peak.peak - rss < max_rss_growth, f"RSS {rss / MiB:.0f} -> peak {peak.peak / MiB:.0f} MiB"


def statuses(answers: list[Answer]) -> set[int | None]:
    return {a.status for a in answers}
