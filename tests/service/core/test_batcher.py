"""The dynamic batcher in-process, with a real (numpy) model function in a real thread pool."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.core.batcher import Batcher, bucket_for, buckets
from service.errors import InferenceFailed
from service.metrics import Metrics

H = W = 4


class Model:
    """[B,H,W] uint8 -> [B,2]: column 0 is the row's first pixel (identifies the row), column 1 its complement.
    Records every batch it saw; fails on a batch holding a row marked 255; can be held to fill the queue."""

    def __init__(self, wrong_rows: bool = False) -> None:
        self.seen: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a call reaches the model (before the gate)
        self.wrong_rows = wrong_rows

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.seen.append(batch.copy())
        if (batch[:, 0, 0] == 255).any():
            raise RuntimeError("marked input")
        v = batch[:, 0, 0].astype(np.float32)
        out = np.stack([v, 1000 - v], axis=1)
        return out[:-1] if self.wrong_rows else out


def rows(values: list[int]) -> np.ndarray:
    out = np.zeros((len(values), H, W), np.uint8)
    out[:, 0, 0] = values
    return out


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


def make(model: Model, pool: ThreadPoolExecutor, **kw: float) -> Batcher:
    opts = {"max_batch_size": 8, "max_delay_s": 0.01, "max_in_flight": 1}
    opts.update(kw)
    return Batcher("m", "CPU", model, row_shape=(H, W), executor=pool, metrics=Metrics(), **opts)


def test_buckets_powers_of_two_capped() -> None:
    assert buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert buckets(1) == [1]
    assert bucket_for(5, buckets(100)) == 8 and bucket_for(65, buckets(100)) == 100


def test_submit_large_request_split_and_padded(pool) -> None:
    model = Model()

    async def go() -> np.ndarray:
        b = make(model, pool)
        b.start()
        try:
            return await b.submit(rows(list(range(1, 21))))
        finally:
            await b.stop()

    out = asyncio.run(go())
    assert out[:, 0].tolist() == list(range(1, 21))  # order kept across three batches
    assert [len(s) for s in model.seen] == [8, 8, 4]  # split at max_batch_size; 4 real rows stay bucket 4
    assert all(len(s) in buckets(8) for s in model.seen)


@pytest.mark.parametrize(("pad", "rows_computed"), [(True, 32), (False, 30)])
def test_submit_concurrent_requests_share_batches(pool, pad: bool, rows_computed: int) -> None:
    """30 rows in one call: padded to the 32-row bucket, or (on CPU, pad=False) exactly the 30 real rows."""
    model = Model()

    async def go() -> list[np.ndarray]:
        b = make(model, pool, max_batch_size=64, max_delay_s=0.05, pad=pad)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(rows([k, k, k])) for k in range(1, 11)))
        finally:
            await b.stop()

    outs = asyncio.run(go())
    for k, out in enumerate(outs, start=1):
        assert out[:, 0].tolist() == [k, k, k]
    assert len(model.seen) == 1 and len(model.seen[0]) == rows_computed
    assert (model.seen[0][30:] == 0).all()


def test_submit_cancelled_request_never_computed(pool) -> None:
    model = Model()

    async def go() -> np.ndarray:
        b = make(model, pool, max_delay_s=0)
        b.start()
        model.gate.clear()  # hold the first batch in the model
        first = b.submit(rows([1]))
        assert await asyncio.to_thread(model.entered.wait, 30)
        doomed = b.submit(rows([7, 7]))
        assert b.queued_rows == 2
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)  # its done-callbacks have run
        assert b.queued_rows == 0  # its rows no longer count
        model.gate.set()
        result = await first
        assert await b.drain(5)
        await b.stop()
        return result

    out = asyncio.run(go())
    assert out[:, 0].tolist() == [1]
    assert all(7 not in s[:, 0, 0] for s in model.seen)


def test_batch_failure_fails_only_its_requests(pool) -> None:
    model = Model()

    async def go() -> None:
        b = make(model, pool)
        b.start()
        with pytest.raises(InferenceFailed, match="RuntimeError"):
            await b.submit(rows([3, 255]))
        ok = await b.submit(rows([4]))  # the loop survived
        assert ok[:, 0].tolist() == [4]
        await b.stop()

    asyncio.run(go())


def test_an_executor_that_refuses_the_batch_fails_its_requests_not_the_loop() -> None:
    """The batch goes to the executor as it is launched (not from a task a loop iteration later): an executor
    that refuses it (shut down) fails that batch's requests with InferenceFailed, and the loop lives on."""
    model = Model()
    refusing = ThreadPoolExecutor(1)
    refusing.shutdown()

    async def go() -> None:
        b = make(model, refusing, max_delay_s=0)
        b.start()
        for _ in range(2):  # the second request proves the loop survived the first refusal
            with pytest.raises(InferenceFailed, match="RuntimeError"):
                await asyncio.wait_for(b.submit(rows([1])), 5)
        await b.stop()

    asyncio.run(go())
    assert model.seen == []


def test_batch_wrong_row_count_fails_loudly(pool) -> None:
    async def go() -> None:
        b = make(Model(wrong_rows=True), pool)
        b.start()
        with pytest.raises(InferenceFailed, match="shape"):
            await b.submit(rows([1, 2, 3]))
        await b.stop()

    asyncio.run(go())


def test_warm_runs_every_bucket_once(pool) -> None:
    model = Model()
    b = make(model, pool, max_batch_size=8)
    assert len(b.warm()) == 4
    assert [len(s) for s in model.seen] == [1, 2, 4, 8]


def test_cancelled_before_taken_does_not_stall_loop(pool) -> None:
    model = Model()

    async def go() -> np.ndarray:
        b = make(model, pool, max_delay_s=0)
        b.start()
        b.submit(rows([5, 5])).cancel()  # cancelled before the loop ever looks at it
        out = await asyncio.wait_for(b.submit(rows([6])), 5)
        await b.stop()
        return out

    assert asyncio.run(go())[:, 0].tolist() == [6]
    assert all(5 not in s[:, 0, 0] for s in model.seen)


def test_stop_fails_queued_requests(pool) -> None:
    """stop() while a request waits behind a held batch: the waiting one fails with InferenceFailed, not a hang."""
    model = Model()

    async def go() -> BaseException | None:
        b = make(model, pool, max_delay_s=0)
        b.start()
        model.gate.clear()
        running = b.submit(rows([1]))
        assert await asyncio.to_thread(model.entered.wait, 30)
        waiting = b.submit(rows([2, 3]))
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.wait_for(asyncio.shield(asyncio.gather(waiting, return_exceptions=True)), 30)
        model.gate.set()
        await stopping
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 30)
        return waiting.exception()

    exc = asyncio.run(go())
    assert isinstance(exc, InferenceFailed) and "stopped before this request ran" in str(exc)
    assert all(2 not in s[:, 0, 0] for s in model.seen)  # never computed


class Overlap(Model):
    """Counts model calls running at the same moment; each call waits until `want` are inside (or 10 s)."""

    def __init__(self, want: int) -> None:
        super().__init__()
        self.want = want
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.all_in = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside >= self.want:
                self.all_in.set()
        self.all_in.wait(10)
        try:
            return super().__call__(batch)
        finally:
            with self.lock:
                self.inside -= 1


def test_big_backlog_on_an_idle_model_is_split_across_the_free_slots(pool) -> None:
    """One 100-row sheet with two idle model slots: two calls of 50 rows, running at once (idle latency)."""
    model = Overlap(want=2)

    async def go() -> np.ndarray:
        b = make(model, pool, max_batch_size=256, max_in_flight=2, pad=False, split_min_rows=32)
        b.start()
        try:
            return await b.submit(rows([i % 250 for i in range(100)]))
        finally:
            await b.stop()

    out = asyncio.run(go())
    assert out[:, 0].tolist() == [i % 250 for i in range(100)]  # order kept across the two calls
    assert sorted(len(s) for s in model.seen) == [50, 50]
    assert model.most == 2  # both parts were in the model together


@pytest.mark.parametrize(("n", "calls"), [(63, [63]), (64, [32, 32])])
def test_a_backlog_below_two_split_minimums_goes_in_one_call(pool, n: int, calls: list[int]) -> None:
    model = Model()

    async def go() -> None:
        b = make(model, pool, max_batch_size=256, max_in_flight=2, pad=False, split_min_rows=32)
        b.start()
        try:
            await b.submit(rows([1] * n))
        finally:
            await b.stop()

    asyncio.run(go())
    assert sorted(len(s) for s in model.seen) == calls


class Slow(Model):
    """Model that takes `delay` seconds of wall time per call (a call descheduled on a busy machine)."""

    delay = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        threading.Event().wait(self.delay)
        return super().__call__(batch)


def test_row_cost_trusts_a_window_of_few_rows_only_in_part(pool) -> None:
    """A slow one-row call at light load moves the admission cost estimate by 1/max_batch of its figure;
    once the window has seen a full batch's worth of rows, the estimate is the measurement alone."""
    model = Slow()
    b = make(model, pool, max_batch_size=64, max_delay_s=0)
    b.warm()  # instant model: the seed is microseconds a row
    seed = b.sec_per_row
    assert seed is not None and seed < 0.001
    model.delay = 0.05

    async def submit(n: int) -> None:
        b.start()
        try:
            await b.submit(rows([1] * n))
        finally:
            await b.stop()

    asyncio.run(submit(1))  # one row, 50 ms: the window alone would say 50 ms a row
    assert seed < b.sec_per_row < seed + 0.05 / 64 + 0.001
    asyncio.run(submit(64))  # 65 rows seen: trusted fully, (>= 0.1 s) / 65 rows
    assert 0.1 / 65 <= b.sec_per_row < 0.2 / 65  # two 50 ms calls over 65 rows (and some scheduling)
