"""Admission control: refuse a request EARLY (429 + Retry-After) rather than let it time out in the queue.

Decided before any decoding work is spent, from the backlog ahead of the request (rows admitted and still
decoding, queued, and in running model calls) and the service rate the batcher observes end to end:
- queue full: reserved + queued rows + this request > `queue_limit` (a request larger than the limit is
  admitted only into an empty queue, so it is never refused forever);
- too slow: the estimated wait > min(remaining time x `admission_wait_fraction`, `admission_max_wait_ms`).
  The wait prices rows still *decoding* at the observed decode cost per row (on CPU decoding, not the model,
  is the bottleneck: pricing them at the model's cost admitted seconds of backlog and led to 504s) and rows
  queued or running at the batcher's observed seconds per row.
Admitted rows are *reserved* until they are queued, so a burst of concurrent requests that are all still
decoding cannot all slip past the check at once.
"""

from __future__ import annotations

from service.core.batcher import Batcher
from service.errors import Overloaded
from service.metrics import Metrics


class Reservation:
    """Rows admitted but not yet queued. Released exactly once (further calls do nothing)."""

    def __init__(self, admission: Admission, rows: int) -> None:
        self._admission: Admission | None = admission
        self.rows = rows

    def release(self) -> None:
        if self._admission is not None:
            self._admission.reserved_rows -= self.rows
            self._admission = None


class Admission:
    def __init__(self, batcher: Batcher, queue_limit: int, metrics: Metrics) -> None:
        self.batcher = batcher
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.reserved_rows = 0
        self.decode_sec_per_row: float | None = None  # EWMA of decode work time per row (WorkClock)

    @property
    def backlog_rows(self) -> int:
        return self.reserved_rows + self.batcher.queued_rows + self.batcher.running_rows

    def observe_decode(self, rows: int, seconds: float) -> None:
        """Learn the decode cost per row from the work time a request's rows took in the workers."""
        if rows > 0:
            sample = seconds / rows
            prev = self.decode_sec_per_row
            self.decode_sec_per_row = sample if prev is None else 0.8 * prev + 0.2 * sample

    def estimated_wait_s(self, extra_rows: int = 0) -> float:
        model_cost = self.batcher.sec_per_row or 0.0
        decode_cost = self.decode_sec_per_row or 0.0
        decoding = self.reserved_rows + extra_rows
        return decoding * decode_cost + (decoding + self.batcher.queued_rows + self.batcher.running_rows) * model_cost

    def admit(self, rows: int, budget_s: float) -> Reservation:
        """Reserve `rows`, or raise Overloaded (429) now."""
        pending = self.reserved_rows + self.batcher.queued_rows
        if pending and pending + rows > self.queue_limit:
            self.metrics.rejections.labels("queue_full").inc()
            raise Overloaded(
                f"queue full: {pending} rows waiting (limit {self.queue_limit})",
                retry_after_s=self.estimated_wait_s(),
            )
        wait = self.estimated_wait_s(rows)
        if self.backlog_rows and wait > budget_s:
            self.metrics.rejections.labels("estimated_wait").inc()
            raise Overloaded(
                f"estimated wait {wait:.2f}s exceeds the request's time budget {budget_s:.2f}s",
                retry_after_s=self.estimated_wait_s(),
            )
        self.reserved_rows += rows
        return Reservation(self, rows)
