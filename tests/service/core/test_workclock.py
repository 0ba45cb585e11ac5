"""The decode cost admission learns is work time, not the time a request waited behind others."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.core.classifier import WorkClock


def test_work_clock_counts_work_not_queueing_behind_other_requests() -> None:
    async def burst() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:

            async def one() -> tuple[float, float]:
                clock, t0 = WorkClock(), time.perf_counter()
                await loop.run_in_executor(pool, clock.run, time.sleep, 0.01)
                return clock.seconds, time.perf_counter() - t0

            return await asyncio.gather(*(one() for _ in range(20)))

    spans = asyncio.run(burst())
    work = [w for w, _ in spans]
    wall = [t for _, t in spans]
    assert all(0.009 < w < 0.1 for w in work)
    assert max(wall) > 0.15  # the last request queued behind ~19 others; its work was still ~10 ms


def test_work_clock_sums_spans_and_counts_failed_work() -> None:
    clock = WorkClock()
    assert clock.run(sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        clock.run(lambda: 1 / 0)
    assert 0 <= clock.seconds < 0.05 and len(clock._spans) == 2
