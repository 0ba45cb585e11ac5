"""Admission control against a real batcher whose model is held, so the backlog is known exactly.

Everything is read and set through public methods: the decode cost is taught with `observe_decode`, the model
cost is whatever the batcher reports (`sec_per_row`, None before any call), so the expected waits below are
computed by hand from the documented formula, not by calling the code under test twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.core.admission import Admission
from service.core.batcher import Batcher
from service.errors import Overloaded
from service.metrics import Metrics


class HeldModel:
    """[B,4,4] -> zeros [B,2]; each call sets `entered` and then waits for `gate` (bounded)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        return np.zeros((len(batch), 2), np.float32)


def rows(n: int) -> np.ndarray:
    return np.zeros((n, 4, 4), np.uint8)


def batcher(model: HeldModel, pool: ThreadPoolExecutor, metrics: Metrics) -> Batcher:
    return Batcher("m", "CPU", model, row_shape=(4, 4), max_batch_size=8, max_delay_s=0, max_in_flight=1,
                   executor=pool, metrics=metrics)  # fmt: skip


async def _with_backlog(queue_limit: int, check: Callable[[Admission, Batcher], None], warm: bool = False) -> None:
    """8 rows running in a held model call, 6 more queued; then `check(admission, batcher)`; then release.

    `warm=True` runs the batcher's warm-up first (model not held), so it reports a model cost per row."""
    model = HeldModel()
    metrics = Metrics()
    with ThreadPoolExecutor(1) as pool:
        b = batcher(model, pool, metrics)
        if warm:
            model.gate.set()
            b.warm()
            model.gate.clear()
            model.entered.clear()
        admission = Admission(b, queue_limit, metrics)
        b.start()
        running = b.submit(rows(8))
        assert await asyncio.to_thread(model.entered.wait, 30), "the first batch never reached the model"
        queued = b.submit(rows(6))
        assert (b.running_rows, b.queued_rows) == (8, 6)
        try:
            check(admission, b)
        finally:
            model.gate.set()
            await asyncio.gather(running, queued)
            await b.stop()


def test_admit_queue_full_counts_reserved_rows() -> None:
    def check(admission: Admission, _b: Batcher) -> None:
        first = admission.admit(2, budget_s=10)  # 6 queued + 2 <= 10, reserved while it decodes
        assert admission.reserved_rows == 2 and admission.backlog_rows == 2 + 6 + 8
        with pytest.raises(Overloaded, match="queue full") as info:
            admission.admit(3, budget_s=10)  # 6 + 2 reserved + 3 > 10
        assert info.value.status == 429 and int(info.value.headers()["Retry-After"]) >= 1
        first.release()
        first.release()  # idempotent
        assert admission.reserved_rows == 0
        admission.admit(3, budget_s=10).release()
        assert admission.reserved_rows == 0

    asyncio.run(_with_backlog(10, check))


def test_observe_decode_learns_an_exponential_average_per_row() -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            admission = Admission(batcher(HeldModel(), pool, metrics), 100, metrics)
            assert admission.decode_sec_per_row is None
            admission.observe_decode(10, 1.0)  # first sample taken as is: 0.1 s/row
            assert admission.decode_sec_per_row == pytest.approx(0.1)
            admission.observe_decode(20, 4.0)  # 0.2 s/row, weight 0.2: 0.8 * 0.1 + 0.2 * 0.2
            assert admission.decode_sec_per_row == pytest.approx(0.12)
            admission.observe_decode(0, 5.0)  # no rows: nothing learned (no division by zero)
            assert admission.decode_sec_per_row == pytest.approx(0.12)
            admission.observe_decode(5, 0.0)  # a free request pulls it down: 0.8 * 0.12
            assert admission.decode_sec_per_row == pytest.approx(0.096)

    asyncio.run(go())


def test_estimated_wait_prices_reserved_rows_at_decode_and_model_cost() -> None:
    def check(admission: Admission, b: Batcher) -> None:
        model_cost = b.sec_per_row
        assert model_cost is not None and model_cost > 0  # seeded by warm-up
        admission.observe_decode(4, 0.2)  # 50 ms per row decoding
        r = admission.admit(3, budget_s=1e9)  # 3 rows reserved, still "decoding"
        try:
            # decoding rows (3 reserved + 5 extra) pay the decode cost, and every row ahead the model cost
            expected = (3 + 5) * 0.05 + (3 + 5 + 6 + 8) * model_cost
            assert admission.estimated_wait_s(5) == pytest.approx(expected)
            assert admission.estimated_wait_s() == pytest.approx(3 * 0.05 + (3 + 6 + 8) * model_cost)
        finally:
            r.release()
        assert admission.estimated_wait_s() == pytest.approx((6 + 8) * model_cost)

    asyncio.run(_with_backlog(10_000, check, warm=True))


def test_admit_estimated_wait_over_budget_rejects_early_behind_held_batch() -> None:
    def check(admission: Admission, b: Batcher) -> None:
        assert b.sec_per_row is None  # no model call has finished: rows ahead cost nothing yet
        admission.observe_decode(1, 0.01)  # 10 ms per row decoding
        assert admission.estimated_wait_s(50) == pytest.approx(0.5)  # 50 rows to decode
        with pytest.raises(Overloaded, match=r"estimated wait 0\.50s exceeds") as info:
            admission.admit(50, budget_s=0.45)
        assert info.value.status == 429 and info.value.headers() == {"Retry-After": "1"}
        assert admission.reserved_rows == 0  # a refusal reserves nothing
        admission.admit(50, budget_s=0.55).release()
        big = admission.admit(250, budget_s=3.0)  # 2.5 s of decoding fits a 3 s budget ...
        try:
            with pytest.raises(Overloaded) as info:
                admission.admit(100, budget_s=3.0)  # ... but not 3.5 s: 250 reserved + 100
            assert info.value.headers() == {"Retry-After": "3"}  # ceil of the wait already ahead: 2.5 s
        finally:
            big.release()

    asyncio.run(_with_backlog(10_000, check))


def test_admit_oversized_request_only_into_empty_queue() -> None:
    async def go() -> None:
        with ThreadPoolExecutor(1) as pool:
            metrics = Metrics()
            admission = Admission(batcher(HeldModel(), pool, metrics), 10, metrics)
            big = admission.admit(50, budget_s=10)  # empty: admitted although 50 > 10
            with pytest.raises(Overloaded):
                admission.admit(1, budget_s=10)
            big.release()
            admission.admit(1, budget_s=10).release()

    asyncio.run(go())
