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

In a pod of several workers (`service.serve`) the queue limit holds for the POD: each worker publishes its own
reserved + queued rows to the shared block after every admission and release, and checks the sum over all
workers against `queue_limit` (memory is the pod's). The wait estimate stays per worker: a request waits only
behind its own worker's queue and model.
"""

from __future__ import annotations

from typing import Protocol

from service.core.batcher import Batcher
from service.errors import Overloaded
from service.metrics import Metrics


class SharedBacklog(Protocol):
    """The pod's view of pending rows (`service.serve.pod.WorkerSlot`)."""

    def publish_pending(self, model: int, rows: int) -> None: ...

    def others_pending(self, model: int) -> int: ...


class Reservation:
    """Rows admitted but not yet queued. Released exactly once (further calls do nothing)."""

    def __init__(self, admission: Admission, rows: int) -> None:
        self._admission: Admission | None = admission
        self._owner = admission
        self.rows = rows

    def release(self) -> None:
        if self._admission is not None:
            self._admission.reserved_rows -= self.rows
            self._admission = None
        self._owner.publish()  # every call: the last one (request done) reports the rows gone from the queue


class Admission:
    def __init__(self, batcher: Batcher, queue_limit: int, metrics: Metrics) -> None:
        self.batcher = batcher
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.reserved_rows = 0
        self.decode_sec_per_row: float | None = None  # EWMA of decode work time per row (WorkClock)
        self._shared: SharedBacklog | None = None
        self._model_index = 0

    def share(self, backlog: SharedBacklog, model_index: int) -> None:
        """Count the queue limit over the whole pod (`model_index`: this model's column in the shared block)."""
        self._shared = backlog
        self._model_index = model_index
        self.publish()

    @property
    def pending_rows(self) -> int:
        """Rows admitted here and not yet taken by a model call (reserved + queued)."""
        return self.reserved_rows + self.batcher.queued_rows

    def publish(self) -> None:
        if self._shared is not None:
            self._shared.publish_pending(self._model_index, self.pending_rows)

    def pod_pending_rows(self) -> int:
        """Pending rows in the whole pod: this worker's live figure + the others' last published ones."""
        others = self._shared.others_pending(self._model_index) if self._shared is not None else 0
        return self.pending_rows + others

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
        pending = self.pod_pending_rows()
        if pending and pending + rows > self.queue_limit:
            self.metrics.rejections.labels("queue_full").inc()
            where = "in the pod" if self._shared is not None else "waiting"
            raise Overloaded(
                f"queue full: {pending} rows {where} (limit {self.queue_limit})",
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
        self.publish()
        return Reservation(self, rows)
