"""What one row costs the model, as admission control prices a queue (`service.core.admission`).

Cost per row over a sliding window of recent model calls: total call time / total rows, so large batches (how
a backlog is actually served) dominate. An earlier end-to-end estimate (gap between completions / rows of one
batch) priced a 1-row batch that followed a decoding pause at the whole pause, turning a small backlog into
seconds of predicted wait and needless 429s. Decoding is priced separately (`Admission.observe_decode`).

The window is trusted in proportion to the rows it saw: at light load it holds a few one-row calls whose wall
time is mostly the scheduler's (a busy 2-core box made 1-row calls look like 60 ms a row, and the next sheet a
429 "estimated wait 8.2 s" at 6 users), so it is blended with the warm-up's full-batch cost until it has seen
a full batch's worth of rows. Under load the window is all measurement.
"""

from __future__ import annotations

from collections import deque


class RowCost:
    def __init__(self, full_batch: int, window: int = 32) -> None:
        self._full_batch = full_batch
        self._recent: deque[tuple[int, float]] = deque(maxlen=window)  # (rows, seconds) of recent model calls
        self._seed: float | None = None  # the warm-up's full-batch cost per row
        self._sec_per_row: float | None = None

    def seed(self, sec_per_row: float) -> None:
        """The warm-up's cost per row of a full batch: a cautious start (no overlap between calls assumed)."""
        self._seed = self._sec_per_row = sec_per_row

    def observe(self, rows: int, seconds: float) -> None:
        """One model call of `rows` rows took `seconds` of wall time."""
        self._recent.append((rows, seconds))
        total = sum(r for r, _ in self._recent)
        window = sum(t for _, t in self._recent) / total
        trust = min(1.0, total / self._full_batch)
        seed = self._seed if self._seed is not None else window
        self._sec_per_row = trust * window + (1.0 - trust) * seed

    @property
    def sec_per_row(self) -> float | None:
        """Seconds per row of throughput; None before warm-up or any call."""
        return self._sec_per_row
