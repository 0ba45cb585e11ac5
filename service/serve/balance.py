"""Keep-alive connections spread evenly over the pod's workers.

The workers accept from one listening socket (`service.serve.supervisor`): which worker takes a new
connection is a race, and asyncio's accept loop takes every connection waiting at that moment. An engine
that opens 8 keep-alive connections at the start of a burst can get all 8 on one worker; that worker's core
then does all the work while the others idle, for as long as the connections live (measured on 2 cores:
sheets 8,548 crops/s with 2 workers, no more than 1 worker's 8,300, against ~11,000 when spread). The remedy
is the one gRPC servers (max connection age) and HAProxy/Envoy use for long-lived connections: a worker
holding more than its share answers with `Connection: close`, the client reconnects, and the new connection
goes to whichever worker accepts first (usually one with little to do).

Each worker publishes its open connections to the pod's shared block on every uvicorn tick (0.1 s) and
computes its excess over the fair share, ceil(connections of ready workers / ready workers); once the excess
has lasted `settle_s` (a burst of short connections evens out by itself; keep-alive connections that stay
pinned do not), its next `excess` responses close their connections. Only ready workers count, so no client
is sent toward a worker still warming up, and a worker alone (or a pod with one connection) never closes any.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from service.serve.pod import Phase, PodState, WorkerSlot

#: how long a worker must have been above its share before it closes connections
SETTLE_S = 1.0


class ConnectionBalance:
    def __init__(self, slot: WorkerSlot, open_connections: Callable[[], int], settle_s: float = SETTLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._slot = slot
        self._open = open_connections
        self._settle_s = settle_s
        self._clock = clock
        self._above_since: float | None = None
        #: responses still to close their connection before this worker is back to its share
        self.excess = 0

    def update(self) -> None:
        """Publish this worker's open connections; recompute its excess over the pod's fair share."""
        mine = self._open()
        pod = self._slot.pod
        pod.set_connections(self._slot.index, mine)
        excess = self._over_share(pod, mine)
        if excess == 0:
            self._above_since = None
            self.excess = 0
            return
        now = self._clock()
        if self._above_since is None:
            self._above_since = now
        self.excess = excess if now - self._above_since >= self._settle_s else 0

    def _over_share(self, pod: PodState, mine: int) -> int:
        phases = pod.phases()
        ready = [p is Phase.READY for p in phases]
        if sum(ready) < 2 or not ready[self._slot.index] or pod.draining:
            return 0
        counts = pod.connections()
        counts[self._slot.index] = mine  # set just above; the others' as last published (<= 0.1 s old)
        total = sum(c for c, r in zip(counts, ready, strict=True) if r)
        share = -(-total // sum(ready))
        return max(0, mine - share)

    def close_next(self) -> bool:
        """A response starts: True when its connection should close (one less above the share)."""
        if self.excess <= 0:
            return False
        self.excess -= 1
        return True
