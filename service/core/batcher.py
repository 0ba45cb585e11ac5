"""The dynamic batcher: rows (crops x TTA views) from concurrent requests share model calls.

Loop (the Ray Serve / LitServe shape): wait for the first row; fix ONE monotonic deadline `max_delay_s`
ahead; while a model call is in flight, fill until `max_batch_size` rows are queued or the deadline passes
(an idle model is called at once); take a batch slot (at most
`max_in_flight` model calls at once); take up to `max_batch_size` rows from the head of the FIFO, splitting a
large request across batches; pad to a power-of-two bucket; run off the event loop; fan the rows back.

Invariants:
- a request's future is never resolved once it is done (cancelled by a timeout or a disconnect); rows of a
  cancelled request that are still queued are dropped, so abandoned work is not computed;
- a model call returns exactly one output row per input row, or every request in that batch fails loudly;
- a failed batch fails only its own requests; the loop keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.core.rowcost import RowCost
from service.errors import InferenceFailed
from service.metrics import Metrics

log = logging.getLogger(__name__)

#: uint8 [B, H, W] padded batch -> float32 [B, C] calibrated probabilities (runs in an executor thread)
InferFn = Callable[[np.ndarray], np.ndarray]


def buckets(max_batch_size: int) -> list[int]:
    """Padded batch sizes: powers of two below `max_batch_size`, then `max_batch_size` itself."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    out.append(max_batch_size)
    return out


def bucket_for(n: int, sizes: list[int]) -> int:
    return next(b for b in sizes if b >= n)


@dataclass(eq=False)
class _Work:
    rows: np.ndarray  # uint8 [n, H, W]
    future: asyncio.Future[np.ndarray]
    enqueued: float
    out: np.ndarray | None = None  # float32 [n, C], filled batch by batch
    taken: int = 0  # rows handed to batches so far
    finished: int = 0  # rows whose output arrived


class Batcher:
    def __init__(
        self,
        model: str,
        provider: str,
        infer: InferFn,
        *,
        row_shape: tuple[int, int],
        max_batch_size: int,
        max_delay_s: float,
        max_in_flight: int,
        executor: Executor,
        metrics: Metrics,
        pad: bool = True,
        split_min_rows: int = 32,
    ) -> None:
        self.model = model
        self.provider = provider
        self.max_batch_size = max_batch_size
        self.buckets = buckets(max_batch_size)
        self.row_shape = row_shape
        self._infer = infer
        self._max_delay_s = max_delay_s
        self._executor = executor
        self._metrics = metrics
        # this model's metric children, looked up once (`labels()` per request was a measurable cost)
        self._queue_depth = metrics.queue_depth.labels(model)
        self._batches_in_flight = metrics.batches_in_flight.labels(model)
        self._queue_wait = metrics.queue_wait_seconds.labels(model)
        self._inference_seconds = metrics.inference_seconds.labels(model, provider)
        self._batch_size = metrics.batch_size.labels(model)
        self._fill_ratio = metrics.batch_fill_ratio.labels(model)
        self._queue: deque[_Work] = deque()
        self._queued_rows = 0
        self._running_rows = 0
        self._in_flight = 0
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._pad = pad
        self._split_min_rows = split_min_rows
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._row_cost = RowCost(max_batch_size)  # seconds per row of throughput (feeds admission)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            # the gauges exist from the start: in multiprocess mode a gauge never set is not exported at all,
            # and an idle pod's dashboard, alerts and HPA need the series at 0
            self._queue_depth.set(self._queued_rows)
            self._batches_in_flight.set(self._in_flight)
            self._loop_task = asyncio.create_task(self._run_loop(), name=f"batcher-{self.model}")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running (True), or `timeout_s` passes (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for work in self._queue:
            if not work.future.done():
                work.future.set_exception(InferenceFailed("the service stopped before this request ran"))
        self._queue.clear()

    def warm(self) -> list[float]:
        """Run every bucket once, synchronously, before readiness (TensorRT/CUDA build their kernels for each
        shape here, not under the first real request). Seeds the row-cost estimate. Returns seconds per bucket."""
        timings = []
        for size in self.buckets:
            t0 = time.monotonic()
            probs = self._infer(np.zeros((size, *self.row_shape), np.uint8))
            timings.append(time.monotonic() - t0)
            if probs.ndim != 2 or probs.shape[0] != size:
                raise InferenceFailed(f"model returned shape {list(probs.shape)} for a batch of {size} rows")
        self._row_cost.seed(timings[-1] / self.buckets[-1])
        return timings

    # --- what admission control reads (`service.core.admission`) -----------------------------------------
    @property
    def pads(self) -> bool:
        """Model calls are padded to a bucket (`Settings.pad_batches`)."""
        return self._pad

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def running_rows(self) -> int:
        return self._running_rows

    @property
    def sec_per_row(self) -> float | None:
        """Observed seconds per row of throughput (`service.core.rowcost`); None before any batch ran."""
        return self._row_cost.sec_per_row

    # --- the request side --------------------------------------------------------------------------------
    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """Queue uint8 [n, H, W] model-size rows now; the future gives float32 [n, C] probabilities.

        Cancelling the future (a timeout, a disconnect) drops the rows still queued.
        """
        work = _Work(rows=rows, future=asyncio.get_running_loop().create_future(), enqueued=time.monotonic())
        work.future.add_done_callback(lambda _f: self._forget(work))
        self._queue.append(work)
        self._queued_rows += len(rows)
        self._idle.clear()
        self._queue_depth.set(self._queued_rows)
        self._arrived.set()
        return work.future

    def _forget(self, work: _Work) -> None:
        """A request finished (any way): rows it still had queued no longer count."""
        rest = len(work.rows) - work.taken
        if rest:
            work.taken = len(work.rows)
            self._queued_rows -= rest
            self._queue_depth.set(self._queued_rows)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._queued_rows == 0 and self._in_flight == 0:
            self._idle.set()

    # --- the loop ----------------------------------------------------------------------------------------
    async def _run_loop(self) -> None:
        while True:
            while self._queued_rows == 0:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = time.monotonic() + self._max_delay_s
            # fill only while a model call is running: with the model idle, waiting cannot overlap with
            # anything and only adds max_delay to every request (Triton/TF-Serving dispatch-when-idle);
            # under load calls are always in flight, so batches still fill (docs/performance.md, note 3)
            while self._queued_rows < self.max_batch_size and self._in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._slots.acquire()
            limit = self._split_limit()
            while True:
                parts = self._take(limit)
                if not parts:
                    self._slots.release()
                    break
                self._launch(parts)
                # a split request's other parts go to the other idle slots now, not after a fill wait
                if limit >= self.max_batch_size or self._queued_rows == 0 or self._slots.locked():
                    break
                await self._slots.acquire()  # a free slot: does not wait

    def _split_limit(self) -> int:
        """Rows for the next batch. With several model slots idle, a large backlog (one big sheet on an idle
        pod) is split evenly across them, so its parts run in parallel on the cores instead of one after the
        other (idle latency); never below `split_min_rows` a part (small calls cost more per row). Under load
        the slots are busy and batches fill to `max_batch_size` as before."""
        free = self._max_in_flight - self._in_flight  # the slot just acquired is not counted in flight yet
        if free < 2 or self._queued_rows < 2 * self._split_min_rows:
            return self.max_batch_size
        return min(self.max_batch_size, max(self._split_min_rows, -(-self._queued_rows // free)))

    def _launch(self, parts: list[tuple[_Work, int, int]]) -> None:
        n = sum(b - a for _, a, b in parts)
        self._in_flight += 1
        self._running_rows += n
        self._batches_in_flight.set(self._in_flight)
        # padding to a bucket gives fixed shapes to providers that compile per shape (TensorRT, CUDA); on CPU
        # any batch size runs as is, and padding 86 rows to 128 would cost 49 % more model time for nothing
        size = bucket_for(n, self.buckets) if self._pad else n
        # the executor gets the batch now, not when a task first runs (one loop iteration, ~50-80 us, later)
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            computed = loop.run_in_executor(self._executor, self._compute, parts, n, size)
        except Exception as exc:  # an executor shut down: this batch's requests fail, the loop keeps running
            computed = loop.create_future()
            computed.set_exception(exc)
        task = asyncio.create_task(self._finish_batch(parts, n, size, computed, t0))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self, limit: int) -> list[tuple[_Work, int, int]]:
        parts: list[tuple[_Work, int, int]] = []
        n = 0
        now = time.monotonic()
        while self._queue and n < limit:
            work = self._queue[0]
            if work.future.done() or work.taken >= len(work.rows):
                self._forget(work)  # now, not in its done-callback: the loop must see the rows gone
                self._queue.popleft()
                continue
            if work.taken == 0:
                self._queue_wait.observe(now - work.enqueued)
            k = min(limit - n, len(work.rows) - work.taken)
            parts.append((work, work.taken, work.taken + k))
            work.taken += k
            n += k
            self._queued_rows -= k
            if work.taken >= len(work.rows):
                self._queue.popleft()
        self._queue_depth.set(self._queued_rows)
        return parts

    async def _finish_batch(
        self, parts: list[tuple[_Work, int, int]], n: int, size: int, computed: asyncio.Future[np.ndarray], t0: float
    ) -> None:
        try:
            probs = await computed
            dt = time.monotonic() - t0
        except Exception as exc:
            log.exception("batch of %d rows failed on model %s", n, self.model)
            self._metrics.batch_failures.labels(self.model).inc()
            reason = exc.message if isinstance(exc, InferenceFailed) else type(exc).__name__
            for work, _, _ in parts:
                if not work.future.done():
                    work.future.set_exception(InferenceFailed(f"inference failed for this request's batch: {reason}"))
        else:
            self._observe(n, size, dt)
            offset = 0
            for work, a, b in parts:
                chunk = probs[offset : offset + (b - a)]
                offset += b - a
                if work.future.done():  # cancelled (timeout, disconnect) or failed earlier: never resolve twice
                    continue
                if work.out is None:
                    work.out = np.empty((len(work.rows), probs.shape[1]), np.float32)
                work.out[a:b] = chunk
                work.finished += b - a
                if work.finished == len(work.rows):
                    work.future.set_result(work.out)
        finally:
            self._in_flight -= 1
            self._running_rows -= n
            self._batches_in_flight.set(self._in_flight)
            self._slots.release()
            self._check_idle()

    def _compute(self, parts: list[tuple[_Work, int, int]], n: int, size: int) -> np.ndarray:
        """Executor thread: gather rows, pad to the bucket, run the model, check the row contract."""
        batch = np.zeros((size, *self.row_shape), np.uint8)
        offset = 0
        for work, a, b in parts:
            batch[offset : offset + (b - a)] = work.rows[a:b]
            offset += b - a
        probs = self._infer(batch)
        if probs.ndim != 2 or probs.shape[0] != size:
            raise InferenceFailed(f"model returned shape {list(probs.shape)} for a batch of {size} rows")
        return probs[:n]

    def _observe(self, n: int, size: int, dt: float) -> None:
        self._inference_seconds.observe(dt)
        self._batch_size.observe(n)
        self._fill_ratio.observe(n / size)
        self._row_cost.observe(n, dt)
