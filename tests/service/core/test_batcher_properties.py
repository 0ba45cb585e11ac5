"""Property: whatever the request sizes, batch size, delay, calls in flight and cancellations (before or
while their batches run), every request that is not cancelled gets exactly its own rows back, in order, and
the batcher ends idle with nothing queued or running."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.batcher import Batcher
from service.metrics import Metrics


def identity_model(batch: np.ndarray) -> np.ndarray:
    """[B,2,2] uint16-as-uint8 pairs -> [B,1]: decodes the row's unique tag from its first two pixels."""
    return (batch[:, 0, 0].astype(np.float32) * 256 + batch[:, 0, 1])[:, None]


def tagged(start: int, n: int) -> np.ndarray:
    tags = np.arange(start, start + n)
    rows = np.zeros((n, 2, 2), np.uint8)
    rows[:, 0, 0], rows[:, 0, 1] = tags // 256, tags % 256
    return rows


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=25),
    cancel=st.lists(st.booleans(), min_size=25, max_size=25),
    max_batch=st.integers(1, 32),
    delay_ms=st.sampled_from([0.0, 0.5, 2.0]),
    in_flight=st.integers(1, 3),
    cancel_after=st.sampled_from([0, 1, 5]),
)
def test_batcher_returns_each_request_its_rows(sizes, cancel, max_batch, delay_ms, in_flight, cancel_after) -> None:
    async def go() -> None:
        with ThreadPoolExecutor(in_flight) as pool:
            b = Batcher(
                "m",
                "CPU",
                identity_model,
                row_shape=(2, 2),
                max_batch_size=max_batch,
                max_delay_s=delay_ms / 1000,
                max_in_flight=in_flight,
                executor=pool,
                metrics=Metrics(),
            )
            b.start()
            starts = np.cumsum([0, *sizes])
            futures = [b.submit(tagged(int(starts[i]), n)) for i, n in enumerate(sizes)]
            for _ in range(cancel_after):  # let some batches start before cancelling (mid-split, in flight)
                await asyncio.sleep(0)
            for i, f in enumerate(futures):
                if cancel[i]:
                    f.cancel()
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert await b.drain(10)
            assert b.queued_rows == 0 and b.running_rows == 0
            await b.stop()
        for i, (n, res) in enumerate(zip(sizes, results, strict=True)):
            if cancel[i] and isinstance(res, asyncio.CancelledError):
                continue  # (a request may have finished before its cancel arrived)
            assert not isinstance(res, BaseException), res
            assert res[:, 0].tolist() == list(range(int(starts[i]), int(starts[i]) + n))

    asyncio.run(go())
