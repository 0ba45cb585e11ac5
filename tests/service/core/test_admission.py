"""Admission control against a real batcher whose model is held, so the backlog is known exactly."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.core.admission import Admission
from service.core.batcher import Batcher
from service.errors import Overloaded
from service.metrics import Metrics


def held_model(gate: threading.Event):
    def infer(batch: np.ndarray) -> np.ndarray:
        gate.wait(10)
        return np.zeros((len(batch), 2), np.float32)

    return infer


def rows(n: int) -> np.ndarray:
    return np.zeros((n, 4, 4), np.uint8)


async def _with_backlog(queue_limit: int, check) -> None:
    """8 rows running in a held model call, 6 more queued; then `check(admission)`; then release."""
    gate = threading.Event()
    metrics = Metrics()
    with ThreadPoolExecutor(1) as pool:
        b = Batcher("m", "CPU", held_model(gate), row_shape=(4, 4), max_batch_size=8, max_delay_s=0,
                    max_in_flight=1, executor=pool, metrics=metrics)  # fmt: skip
        admission = Admission(b, queue_limit, metrics)
        b.start()
        running = b.submit(rows(8))
        await asyncio.sleep(0.05)
        queued = b.submit(rows(6))
        await asyncio.sleep(0.01)
        assert (b.running_rows, b.queued_rows) == (8, 6)
        try:
            check(admission, b)
        finally:
            gate.set()
            await asyncio.gather(running, queued)
            await b.stop()


def test_admit_queue_full_counts_reserved_rows() -> None:
    def check(admission: Admission, _b: Batcher) -> None:
        first = admission.admit(2, budget_s=10)  # 6 queued + 2 <= 10, reserved while it decodes
        with pytest.raises(Overloaded, match="queue full") as info:
            admission.admit(3, budget_s=10)  # 6 + 2 reserved + 3 > 10
        assert info.value.status == 429 and int(info.value.headers()["Retry-After"]) >= 1
        first.release()
        first.release()  # idempotent
        admission.admit(3, budget_s=10).release()
        assert admission.reserved_rows == 0

    asyncio.run(_with_backlog(10, check))


def test_admit_estimated_wait_over_budget_rejects_early() -> None:
    def check(admission: Admission, b: Batcher) -> None:
        b._sec_per_row = 0.01  # as if observed: 10 ms per row
        # backlog 8 running + 6 queued; with 50 more: 64 rows x 10 ms
        assert admission.estimated_wait_s(50) == pytest.approx(0.64)
        with pytest.raises(Overloaded, match="estimated wait"):
            admission.admit(50, budget_s=0.5)
        admission.admit(50, budget_s=1.0).release()

    asyncio.run(_with_backlog(10_000, check))


def test_admit_oversized_request_only_into_empty_queue() -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            b = Batcher("m", "CPU", held_model(threading.Event()), row_shape=(4, 4), max_batch_size=8,
                        max_delay_s=0, max_in_flight=1, executor=pool, metrics=metrics)  # fmt: skip
            admission = Admission(b, 10, metrics)
            big = admission.admit(50, budget_s=10)  # empty: admitted although 50 > 10
            with pytest.raises(Overloaded):
                admission.admit(1, budget_s=10)
            big.release()

    asyncio.run(go())
