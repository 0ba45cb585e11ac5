"""The decode cost admission learns is work time, not the time a request waited behind others.

No wall-clock thresholds: every check is an inequality between instants of the same monotonic clock that holds
in any order of events on a loaded machine (a span can only start after the job ahead of it returned).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.core.classifier import WorkClock


def test_work_clock_counts_work_not_queueing_behind_other_requests() -> None:
    gate = threading.Event()
    a_returned: list[float] = []

    def ahead() -> None:  # the job in front: holds the only worker until the test opens the gate
        assert gate.wait(30)
        a_returned.append(time.perf_counter())

    def behind() -> int:
        return sum(range(1000))

    with ThreadPoolExecutor(1) as pool:
        clock_a, clock_b = WorkClock(), WorkClock()
        fa = pool.submit(clock_a.run, ahead)
        submitted = time.perf_counter()
        fb = pool.submit(clock_b.run, behind)  # queued behind `ahead`
        gate.set()
        assert fb.result(30) == sum(range(1000))
        done = time.perf_counter()
        fa.result(30)
    (t_a,) = a_returned
    assert submitted < t_a  # b really waited in the queue
    # b's clock started only once `ahead` had returned: its work fits between that and its result,
    # although b's wall time (done - submitted) includes the whole wait
    assert 0 < clock_b.seconds <= done - t_a
    assert clock_a.seconds >= t_a - submitted  # a's work includes its time held at the gate


def test_work_clock_sums_spans_and_counts_failed_work() -> None:
    inner: list[float] = []

    def work(fail: bool) -> int:
        t0 = time.perf_counter()
        total = sum(range(20_000))
        inner.append(time.perf_counter() - t0)
        if fail:
            raise ZeroDivisionError
        return total

    clock = WorkClock()
    start = time.perf_counter()
    assert clock.run(work, False) == sum(range(20_000))
    after_first = clock.seconds
    with pytest.raises(ZeroDivisionError):
        clock.run(work, True)
    end = time.perf_counter()
    assert after_first >= inner[0]
    assert clock.seconds >= inner[0] + inner[1]  # the failed call's work counts too
    assert clock.seconds - after_first >= inner[1]
    assert clock.seconds <= end - start  # and nothing outside the two calls
