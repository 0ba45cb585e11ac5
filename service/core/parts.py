"""A part of one request, classified by another worker of the pod: what is sent, what comes back, and who.

Why: a 100-crop sheet on an idle pod costs ~5 ms of decoding and ~7 ms of model on ONE worker, while the
pod's other workers sit idle. Decoding cannot be spread over threads (the GIL: 2 threads decode slower than
one on this service's crops), but it can over processes: the first half of the sheet is decoded and run
here while an idle worker does the second half with its own decoder, batcher and session (measured: idle
sheet p50 12.8 -> 6.8 ms in-process, docs/performance.md). The decisions are still made here, over the
whole sheet, so the sheet context sees every crop.

A part carries encoded crops and returns what the request needs to decide: the sheet statistics of its
identity rows (`crop_stats`, per crop: the same numbers the whole sheet's rows give), native sizes (for the
sheet's size groups) and per-view probabilities. The statistics, not the rows: 3 floats a crop instead of a
model-size image, so the answer is one small frame (~3.5 KB for 50 crops instead of ~55 KB). Bad crops come
back as the same error records the local decode makes, indexed in the request, so one 422 names them all.
The core knows the `Offload` protocol only; `service.serve.peers` carries parts between processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.errors import ServiceError


@dataclass(frozen=True)
class Part:
    """Crops [start, start + len(images)) of one request, for the model version `model`/`version`."""

    model: str
    version: str
    images: Sequence[str | bytes]
    ids: Sequence[str]  # the part's own ids: ids[k] is the request's crop start + k
    start: int
    base64: bool
    views: tuple[str, ...]
    #: absolute `time.monotonic()` deadline (CLOCK_MONOTONIC: one clock for every process of the machine)
    deadline: float = math.inf


@dataclass
class PartResult:
    """stats float32 [n, k] (`crop_stats` of the identity rows), sizes int64 [n, 2] native (height, width),
    probs float32 [n * V, C] crop-major (row i*V + v is crop i, view v); or, when any crop is bad, only
    `errors`."""

    stats: np.ndarray
    sizes: np.ndarray
    probs: np.ndarray
    errors: list[dict[str, Any]] = field(default_factory=list)


class Peer(Protocol):
    def send(self, part: Part) -> Awaitable[PartResult | None]:
        """Send the part to another worker NOW (so it works while the caller decodes its own half); the
        awaitable gives its answer, or None when there is none (gone, refused, connection lost): the caller
        then classifies the part itself, so nothing is lost."""
        ...


class Offload(Protocol):
    """The pod's other workers, as the classifier sees them (`service.serve.peers.PodPeers`)."""

    def set_active(self, requests: int) -> None:
        """This worker is classifying `requests` requests now (published for the others to read)."""
        ...

    def peer(self) -> Peer | None:
        """An idle, ready worker to hand part of a request to, or None (none idle, pod draining)."""
        ...


class SplitCounter(Protocol):
    """`Metrics.sheet_splits`: counted by outcome ("peer" or "fallback")."""

    def labels(self, outcome: str) -> Any: ...


@dataclass(frozen=True)
class FarPart:
    """The part of a request another worker classifies; done here (`fallback`) if that worker does not answer."""

    peer: Peer
    part: Part

    def start(
        self,
        views: tuple[str, ...],
        fallback: Callable[[Part], Awaitable[PartResult]],
        splits: SplitCounter,
    ) -> asyncio.Task[PartResult]:
        """Send now (`Peer.send` writes before returning); the task gives the part's result either way."""
        part = dataclasses.replace(self.part, views=views)
        answer = self.peer.send(part)

        async def run() -> PartResult:
            result = await answer
            splits.labels("peer" if result is not None else "fallback").inc()
            return result if result is not None else await fallback(part)

        task = asyncio.ensure_future(run())
        task.add_done_callback(_retrieve)
        return task


def _retrieve(task: asyncio.Task[PartResult]) -> None:
    """An unwanted far part's error (the request already failed) is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


async def far_errors(away: asyncio.Task[PartResult]) -> list[dict[str, Any]]:
    """The far part's bad crops, to add to the local ones; none when it failed otherwise (e.g. timed out)."""
    try:
        return (await away).errors
    except ServiceError:
        return []
