"""Keep-alive connections spread over a real pod's workers (`service.serve.balance`): 8 connections that all
landed on one worker (the other was not started yet) end up 4 and 4, and the pod counts the closes."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.server import ESTABLISHED, held_sockets, tcp_sockets

from ._podctl import HOST, running_pod, total

pytestmark = pytest.mark.integration

CLIENTS = 8


def _established(pid: int, port: int) -> int:
    """TCP connections in state ESTABLISHED on local `port` whose socket `pid` holds open."""
    return len(held_sockets(pid) & tcp_sockets(port, ESTABLISHED))


def test_connections_pinned_to_one_worker_are_spread_over_the_pod(tmp_path: Path, until: Callable[..., None]) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "warm.hold").write_text("1")  # the first worker stays warming: the second is not even started
    with running_pod(tmp_path, {"OMR_WORKERS": "2"}, ready=False) as pod:
        clients = [http.client.HTTPConnection(HOST, pod.port, timeout=30) for _ in range(CLIENTS)]

        def round_trip() -> None:
            for c in clients:  # a closed connection (Connection: close) reconnects on its next request
                c.request("GET", "/healthz")
                r = c.getresponse()
                r.read()
                assert r.status == 200

        round_trip()
        (first,) = pod.worker_pids()
        assert _established(first, pod.port) == CLIENTS  # all 8 on the one worker there is
        (gate / "warm.hold").unlink()
        until(lambda: pod.ready_status() == 200, 120, "both workers ready")
        second = next(p for p in pod.worker_pids() if p != first)
        assert _established(second, pod.port) == 0  # connections stay where they are by themselves

        def spread() -> bool:
            round_trip()
            return (_established(first, pod.port), _established(second, pod.port)) == (CLIENTS // 2, CLIENTS // 2)

        until(spread, 60, "the 8 connections spread 4 and 4")
        moved = total(pod.metrics(), "omr_connections_rebalanced_total")
        assert moved >= CLIENTS // 2, moved
        for c in clients:
            c.close()
