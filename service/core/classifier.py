"""Crops in, decisions out: decode -> resize -> (TTA views) -> batcher -> calibrated decisions.

Knows nothing of HTTP: the routes hand it decoded request fields and a deadline and translate its answers
and `service.errors` exceptions back. Decoding and preprocessing run in a small thread pool, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core import tta
from service.core.context import combine_views, crop_stats, decide_request
from service.core.modelconfig import InputSpec
from service.core.preprocess import CropError, decode_image, prepare_raw, resize
from service.core.registry import Registry, ServedModel
from service.core.result import Classification
from service.core.sniff import sniff
from service.errors import DeadlineExceeded, InvalidCrops, PayloadTooLarge, UnknownProfile, clip
from service.metrics import Metrics
from service.settings import Settings


def _crop_error(index: int, crop_id: str, reason: str, message: str) -> dict[str, Any]:
    return {"index": index, "id": crop_id, "reason": reason, "message": message}


@dataclass(frozen=True)
class _SheetArgs:
    """What the sheet context needs from the transport: the sheet's name, on/off, native crop sizes."""

    sheet: str | None
    enabled: bool
    sizes: np.ndarray | None  # int [N, 2] (height, width), or None: one group


#: requests with at most this many encoded crops may be decoded on the event loop, not in the executor ...
INLINE_DECODE_MAX = 4
#: ... when each crop's header proves it small and simple (PNG, BMP, baseline JPEG; no tiles, scans, frames)
INLINE_MAX_BYTES = 16 * 1024
INLINE_MAX_PIXELS = 256 * 256
#: a request's crops are decoded in chunks of at least this many, one chunk per preprocessing thread
DECODE_CHUNK_MIN = 32


def _inline_safe(images: Sequence[str | bytes], b64: bool) -> bool:
    """True when decoding these crops costs microseconds whatever their bytes say (see INLINE_DECODE_MAX)."""
    if len(images) > INLINE_DECODE_MAX:
        return False
    for item in images:
        if len(item) > (INLINE_MAX_BYTES * 4 // 3 + 4 if b64 else INLINE_MAX_BYTES):
            return False
        try:
            data = item if isinstance(item, bytes) else item.encode()
            if b64:  # PNG and BMP say all in their first 54 bytes: decode only those (the hot path: ~1 us)
                head = base64.b64decode(data[:96], validate=True)
                data = head if head[:2] in (b"\x89P", b"BM") else base64.b64decode(data, validate=True)
            header = sniff(data)
        except (binascii.Error, ValueError):
            continue  # refused from its first bytes, wherever it is decoded: cheap here too
        if not header.simple or header.width * header.height > INLINE_MAX_PIXELS:
            return False
    return True


class WorkClock:
    """Time spent *working* on a request's rows (decode, resize, TTA views), summed over the worker calls.

    Admission prices rows still decoding at this per-row cost. The request's wall time is the wrong
    measure: under a burst of small requests it includes waiting behind the others in the executor, and
    pricing every reserved row at that inflated cost refused requests the service had time for.
    """

    def __init__(self) -> None:
        self._spans: list[float] = []  # list.append is atomic: safe from executor threads

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._spans.append(time.perf_counter() - t0)

    @property
    def seconds(self) -> float:
        return sum(self._spans)


def _decode_chunk(
    images: Sequence[str | bytes],
    ids: Sequence[str],
    start: int,
    b64: bool,
    inp: InputSpec,
    sizes: np.ndarray | None = None,
    deadline: float = math.inf,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Executor thread: decode crops [start, start+len) to model-size uint8 rows; collect every bad crop.

    `sizes` (optional, int [len, 2], written in place): each crop's native (height, width), which the sheet
    context groups by.

    Each crop is resized as soon as it is decoded, so memory stays N x H x W at model size however large the
    crops are (4,096 highly compressible 512 x 512 PNGs would otherwise be 1 GiB of pixels). The deadline is
    checked between crops: a request past it stops decoding (504) instead of holding the thread.
    """
    out = np.empty((len(images), inp.height, inp.width), np.uint8)
    errors: list[dict[str, Any]] = []
    for offset, item in enumerate(images):
        i = start + offset
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"the request timed out while its crops were decoded (at crop {i})")
        try:
            if b64:
                try:
                    data = base64.b64decode(item, validate=True)
                except (binascii.Error, ValueError):
                    raise CropError("invalid_base64", "image is not valid standard base64 (RFC 4648, padded, "
                                    "no whitespace)") from None  # fmt: skip
            else:
                data = item if isinstance(item, bytes) else item.encode()
            if not errors:  # after the first bad crop, only validate: no more pixels needed
                gray = decode_image(data)
                if sizes is not None:
                    sizes[offset] = gray.shape
                out[offset] = resize(gray, inp.height, inp.width)
            else:
                decode_image(data)
        except CropError as exc:
            errors.append(_crop_error(i, ids[i], exc.reason, exc.message))
        except Exception as exc:  # untrusted bytes: any decoder failure is the crop's fault, never a 500
            errors.append(_crop_error(i, ids[i], "undecodable", f"image could not be decoded ({type(exc).__name__})"))
    return out, errors


class Classifier:
    def __init__(self, registry: Registry, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._executor = executor

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
            raise InvalidCrops([_crop_error(0, "", "no_crops", "the request has no crops")])
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

        The request is one sheet (`sheet` names it; `sheet_context=False` turns the context off).
        """
        self.check_count(len(images))
        served, profile = self._resolve(model, version, profile)
        id_list = list(ids) if ids is not None else [str(i) for i in range(len(images))]
        inp = served.config.input
        sizes = np.zeros((len(images), 2), np.int64)  # native (height, width), filled by the decode

        async def decode(clock: WorkClock) -> np.ndarray:
            if _inline_safe(images, base64_encoded):
                # a few small crops decode in ~50 us each: cheaper on the loop than queueing behind other
                # requests' chunks in the preprocessing executor (measured: docs/performance.md, note 2)
                results = [clock.run(_decode_chunk, images, id_list, 0, base64_encoded, inp, sizes, deadline)]
            else:
                loop = asyncio.get_running_loop()
                chunk = max(DECODE_CHUNK_MIN, math.ceil(len(images) / self.settings.preprocess_threads))
                jobs = [
                    loop.run_in_executor(
                        self._executor,
                        clock.run,
                        _decode_chunk,
                        images[s : s + chunk],
                        id_list,
                        s,
                        base64_encoded,
                        inp,
                        sizes[s : s + chunk],  # a view: the worker writes into `sizes`
                        deadline,
                    )
                    for s in range(0, len(images), chunk)
                ]
                results = await asyncio.gather(*jobs, return_exceptions=True)
            late = [r for r in results if isinstance(r, BaseException)]
            if late:  # past the deadline between two crops (anything else is a bug: re-raised as is)
                if isinstance(late[0], DeadlineExceeded):
                    self.metrics.rejections.labels("timeout").inc()
                raise late[0]
            errors = [e for _, errs in results for e in errs]
            if errors:
                self.metrics.rejections.labels("invalid_crop").inc()
                raise InvalidCrops(errors)
            return results[0][0] if len(results) == 1 else np.concatenate([r for r, _ in results])

        context = _SheetArgs(sheet, sheet_context is not False, sizes)
        return await self._classify(served, profile, id_list, tta_requested, deadline, decode, context)

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
                raise InvalidCrops([_crop_error(0, id_list[0], exc.reason, exc.message)]) from exc

        context = _SheetArgs(sheet, sheet_context is not False, None)
        return await self._classify(served, profile, id_list, tta_requested, deadline, resize, context)

    async def _classify(
        self,
        served: ServedModel,
        profile: str,
        ids: list[str],
        tta_requested: bool | None,
        deadline: float,
        make_rows: Callable[[WorkClock], Awaitable[np.ndarray]],
        context: _SheetArgs | None = None,
    ) -> Classification:
        """Admit (or 429) before any work, make model-size rows, queue them, decide."""
        use_tta = self._tta_on(served, tta_requested)
        views = served.config.tta.views if use_tta else ("identity",)
        budget = min(
            (deadline - time.monotonic()) * self.settings.admission_wait_fraction,
            self.settings.admission_max_wait_ms / 1000.0,
        )
        reservation = served.admission.admit(len(ids) * len(views), budget)
        try:
            t0 = time.monotonic()
            clock = WorkClock()
            rows = identity = await make_rows(clock)
            # the sheet context compares a request's crops: one crop has none to compare with (decide_request)
            stats = crop_stats(rows) if len(ids) > 1 else None  # ~1 us per crop, vectorised, + ~20 us a call
            if use_tta:
                rows = await asyncio.get_running_loop().run_in_executor(
                    self._executor, clock.run, tta.expand, rows, views
                )
            self.metrics.preprocess_seconds.labels(served.name).observe(time.monotonic() - t0)
            served.admission.observe_decode(len(rows), clock.seconds)
            budget = deadline - time.monotonic()
            if budget <= 0:
                self.metrics.rejections.labels("timeout").inc()
                raise DeadlineExceeded("the request timed out while its crops were decoded")
            queued = served.batcher.submit(rows)
            reservation.release()  # the rows count as queued from here on
            try:
                # the deadline cancels this task's wait, which cancels `queued`: its rows still queued are dropped
                async with asyncio.timeout(budget):
                    probs = await queued
            except TimeoutError:
                self.metrics.rejections.labels("timeout").inc()
                raise DeadlineExceeded(
                    f"the request did not finish within {self.settings.request_timeout_s:g}s; "
                    "its queued crops were dropped"
                ) from None
        finally:
            reservation.release()
        context = context or _SheetArgs(None, True, None)
        probs, agree = combine_views(probs.reshape(len(ids), len(views), -1), served.config, tuple(views))
        decisions = decide_request(
            probs, stats, served.config, profile, agree if use_tta else None, context.sizes, context.enabled
        )
        for label, count in collections.Counter(d.label for d in decisions).items():
            self.metrics.crops.labels(served.name, label).inc(count)
        return Classification(served, ids, decisions, probs, use_tta, profile, context.sheet, identity, stats)
