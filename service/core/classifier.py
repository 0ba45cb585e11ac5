"""Crops in, decisions out: decode -> resize -> (TTA views) -> batcher -> calibrated decisions.

Knows nothing of HTTP: the routes hand it decoded request fields and a deadline and translate its answers
and `service.errors` exceptions back. Decoding and preprocessing run in a small thread pool, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.core import tta
from service.core.context import combine_views, crop_stats, decide_request
from service.core.decode import DECODE_CHUNK_MIN, WorkClock, crop_error, decode_chunk, inline_safe
from service.core.parts import FarPart, Offload, Part, PartResult, Peer, far_errors
from service.core.preprocess import CropError, prepare_raw
from service.core.registry import Registry, ServedModel
from service.core.result import Classification
from service.errors import DeadlineExceeded, InvalidCrops, PayloadTooLarge, UnknownProfile, clip
from service.metrics import Metrics
from service.settings import Settings


@dataclass(frozen=True)
class _SheetArgs:
    """What the sheet context needs from the transport: the sheet's name, on/off, native crop sizes."""

    sheet: str | None
    enabled: bool
    sizes: np.ndarray | None  # int [N, 2] (height, width), or None: one group


class Classifier:
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._executor = executor
        #: the pod's other workers (`AppState.join_pod`); None: a single process, nothing to share work with
        self.offload: Offload | None = None
        self._active = 0

    def _resolve(self, model: str | None, version: str | None, profile: str | None) -> tuple[ServedModel, str]:
        served = self.registry.get(model, version)
        profile = profile or served.config.default_profile
        if profile not in served.config.profiles:
            raise UnknownProfile(f"unknown profile {clip(profile)}; known: {sorted(served.config.profiles)}")
        return served, profile

    def _tta_on(self, served: ServedModel, requested: bool | None) -> bool:
        if requested is not None:
            return requested
        if self.settings.tta_default is not None:
            return self.settings.tta_default
        return served.config.tta.default

    def check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidCrops([crop_error(0, "", "no_crops", "the request has no crops")])
        if n > self.settings.max_crops_per_request:
            self.metrics.rejections.labels("too_many_crops").inc()
            raise PayloadTooLarge(f"{n} crops in one request; the limit is {self.settings.max_crops_per_request}")

    async def classify_encoded(
        self,
        images: Sequence[str | bytes],
        ids: Sequence[str] | None,
        *,
        base64_encoded: bool,
        deadline: float,
        model: str | None = None,
        version: str | None = None,
        profile: str | None = None,
        tta_requested: bool | None = None,
        sheet: str | None = None,
        sheet_context: bool | None = None,
    ) -> Classification:
        """Encoded images (base64 text or raw bytes) -> one decision per crop, in request order.

        The request is one sheet (`sheet` names it; `sheet_context=False` turns the context off). On a pod
        whose other worker is idle, a big sheet's second half is classified there (`service.core.parts`).
        """
        self.check_count(len(images))
        served, profile = self._resolve(model, version, profile)
        id_list = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        inp = served.config.input
        sizes = np.zeros((len(images), 2), np.int64)  # native (height, width), filled by the decode
        with self._tracking():
            inline = inline_safe(images, base64_encoded)
            peer = None if inline else self._split_peer(len(images))
            here = len(images) if peer is None else len(images) // 2  # crops [0, here) are decoded here

            async def decode(clock: WorkClock) -> np.ndarray:
                if inline:
                    # a few small crops decode in ~50 us each: cheaper on the loop than queueing behind other
                    # requests' chunks in the preprocessing executor (measured: docs/performance.md, note 2)
                    results = [clock.run(decode_chunk, images, id_list, 0, base64_encoded, inp, sizes, deadline)]
                else:
                    loop = asyncio.get_running_loop()
                    chunk = max(DECODE_CHUNK_MIN, math.ceil(here / self.settings.preprocess_threads))
                    spans = [(s, min(s + chunk, here)) for s in range(0, here, chunk)]
                    jobs = [
                        loop.run_in_executor(
                            self._executor,
                            clock.run,
                            decode_chunk,
                            images[s:e],
                            id_list[s:e],
                            s,
                            base64_encoded,
                            inp,
                            sizes[s:e],  # a view: the worker writes into `sizes`
                            deadline,
                        )
                        for s, e in spans
                    ]
                    results = await asyncio.gather(*jobs, return_exceptions=True)
                late = [r for r in results if isinstance(r, BaseException)]
                if late:  # past the deadline between two crops (anything else is a bug: re-raised as is)
                    if isinstance(late[0], DeadlineExceeded):
                        self.metrics.rejections.labels("timeout").inc()
                    raise late[0]
                errors = [e for _, errs in results for e in errs]
                if errors:
                    raise InvalidCrops(errors)
                return results[0][0] if len(results) == 1 else np.concatenate([r for r, _ in results])

            far = None
            if peer is not None:
                rest = Part(
                    served.name, served.version, images[here:], id_list[here:], here, base64_encoded, (), deadline
                )
                far = FarPart(peer, rest)
            context = _SheetArgs(sheet, sheet_context is not False, sizes)
            return await self._classify(served, profile, id_list, tta_requested, deadline, decode, context, far)

    async def classify_raw(
        self,
        tensor: np.ndarray,
        ids: Sequence[str] | None,
        *,
        deadline: float,
        model: str | None = None,
        version: str | None = None,
        profile: str | None = None,
        tta_requested: bool | None = None,
        sheet: str | None = None,
        sheet_context: bool | None = None,
    ) -> Classification:
        """A uint8 [N, H, W] grayscale batch -> one decision per crop (one sheet, crops of one size)."""
        self.check_count(int(tensor.shape[0]) if tensor.ndim else 0)
        served, profile = self._resolve(model, version, profile)
        id_list = list(ids) if ids is not None else [str(i) for i in range(len(tensor))]

        async def resize(clock: WorkClock) -> np.ndarray:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, clock.run, prepare_raw, tensor, served.config.input
                )
            except CropError as exc:
                raise InvalidCrops([crop_error(0, id_list[0], exc.reason, exc.message)]) from exc

        with self._tracking():
            context = _SheetArgs(sheet, sheet_context is not False, None)
            return await self._classify(served, profile, id_list, tta_requested, deadline, resize, context)

    async def classify_part(self, part: Part) -> PartResult:
        """Another worker's part of its request (`service.serve.peers`), or our own when the peer failed.

        Decoded, expanded and run through this worker's batcher exactly as a request's rows are; bad crops
        come back as errors (no model call). DeadlineExceeded / ModelNotFound propagate.
        """
        served = self.registry.get(part.model, part.version)
        with self._tracking():
            n = len(part.images)
            sizes = np.zeros((n, 2), np.int64)
            clock = WorkClock()
            loop = asyncio.get_running_loop()
            rows, errors = await loop.run_in_executor(
                self._executor, clock.run, decode_chunk, part.images, part.ids, part.start, part.base64,
                served.config.input, sizes, part.deadline,
            )  # fmt: skip
            if errors:
                return PartResult(np.zeros((0, 0), np.float32), sizes, np.zeros((0, 0), np.float32), errors)
            expanded = await self._expand(rows, part.views, clock)
            served.admission.observe_decode(len(expanded), clock.seconds)
            probs = await self._infer(served, expanded, part.deadline)
            return PartResult(crop_stats(rows), sizes, probs)

    async def _expand(self, rows: np.ndarray, views: Sequence[str], clock: WorkClock) -> np.ndarray:
        """The TTA views of the identity rows (`tta.expand`, in the executor); the rows themselves without TTA."""
        if tuple(views) == ("identity",):
            return rows
        return await asyncio.get_running_loop().run_in_executor(self._executor, clock.run, tta.expand, rows, views)

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """Count this worker's requests in flight; in a pod the others read it to find an idle worker."""
        self._active += 1
        if self.offload is not None:
            self.offload.set_active(self._active)
        try:
            yield
        finally:
            self._active -= 1
            if self.offload is not None:
                self.offload.set_active(self._active)

    def _split_peer(self, crops: int) -> Peer | None:
        """A worker to take half of this request: only a big one, only when it is all this worker does."""
        if self.offload is None or crops < self.settings.split_min_crops or self._active > 1:
            return None
        return self.offload.peer()

    async def _infer(
        self, served: ServedModel, rows: np.ndarray, deadline: float, queued_now: Callable[[], None] | None = None
    ) -> np.ndarray:
        """Queue rows in the batcher and wait for their probabilities until the deadline."""
        budget = deadline - time.monotonic()
        if budget <= 0:
            self.metrics.rejections.labels("timeout").inc()
            raise DeadlineExceeded("the request timed out while its crops were decoded")
        queued = served.batcher.submit(rows)
        if queued_now is not None:
            queued_now()
        try:
            # the deadline cancels this task's wait, which cancels `queued`: its rows still queued are dropped
            async with asyncio.timeout(budget):
                return await queued
        except TimeoutError:
            self.metrics.rejections.labels("timeout").inc()
            raise DeadlineExceeded(
                f"the request did not finish within {self.settings.request_timeout_s:g}s; its queued crops were dropped"
            ) from None

    async def _classify(
        self,
        served: ServedModel,
        profile: str,
        ids: list[str],
        tta_requested: bool | None,
        deadline: float,
        make_rows: Callable[[WorkClock], Awaitable[np.ndarray]],
        context: _SheetArgs | None = None,
        far: FarPart | None = None,
    ) -> Classification:
        """Admit (or 429) before any work, make model-size rows, queue them, decide.

        `far`: the request's last crops, sent to another worker now and joined before deciding."""
        use_tta = self._tta_on(served, tta_requested)
        views = served.config.tta.views if use_tta else ("identity",)
        budget = min(
            (deadline - time.monotonic()) * self.settings.admission_wait_fraction,
            self.settings.admission_max_wait_ms / 1000.0,
        )
        reservation = served.admission.admit(len(ids) * len(views), budget)
        away = None if far is None else far.start(tuple(views), self.classify_part, self.metrics.sheet_splits)
        try:
            t0 = time.monotonic()
            clock = WorkClock()
            try:
                rows = identity = await make_rows(clock)
            except InvalidCrops as exc:  # one 422 names every bad crop, the far part's too
                crops = exc.extra["crops"] + (await far_errors(away) if away is not None else [])
                self.metrics.rejections.labels("invalid_crop").inc()
                raise InvalidCrops(crops) from None
            rows = await self._expand(rows, views, clock)
            self.metrics.preprocess_seconds.labels(served.name).observe(time.monotonic() - t0)
            served.admission.observe_decode(len(rows), clock.seconds)
            probs = await self._infer(served, rows, deadline, reservation.release)  # queued: no longer reserved
            stats = None
            if away is not None:
                # per-crop statistics: this half's while the far half is usually still on its way
                stats = crop_stats(identity)
                part = await away
                if part.errors:
                    self.metrics.rejections.labels("invalid_crop").inc()
                    raise InvalidCrops(part.errors)
                if context is not None and context.sizes is not None:
                    context.sizes[len(identity) :] = part.sizes
                stats = np.concatenate([stats, part.stats])
                probs = np.concatenate([probs, part.probs])
        finally:
            reservation.release()
            if away is not None and not away.done():
                away.cancel()  # the request failed or was cancelled: the far part's answer is not wanted
        # the sheet context compares a request's crops: one crop has none to compare with (decide_request)
        if stats is None and len(ids) > 1:
            stats = crop_stats(identity)  # ~1 us per crop, vectorised, + ~20 us a call
        context = context or _SheetArgs(None, True, None)
        probs, agree = combine_views(probs.reshape(len(ids), len(views), -1), served.config, tuple(views))
        decisions = decide_request(
            probs, stats, served.config, profile, agree if use_tta else None, context.sizes, context.enabled
        )
        for label, count in collections.Counter(d.label for d in decisions).items():
            self.metrics.crops.labels(served.name, label).inc(count)
        # a split request's far rows stayed with the peer: its stats came back instead (and are measured here)
        rows_kept = identity if stats is None else None
        return Classification(served, ids, decisions, probs, use_tta, profile, context.sheet, rows_kept, stats)
