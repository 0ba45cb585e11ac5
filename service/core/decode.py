"""Decoding a request's encoded crops to model-size rows: the per-thread chunk loop, its work clock, and
the rule for which small requests may decode on the event loop.

Every bad crop is collected (one 422 names them all); a crop's error carries its index in the *request* and
its id, whichever worker decodes it (`service.core.parts`).
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.core.modelconfig import InputSpec
from service.core.preprocess import CropError, decode_image, resize
from service.core.sniff import sniff
from service.errors import DeadlineExceeded


def crop_error(index: int, crop_id: str, reason: str, message: str) -> dict[str, Any]:
    return {"index": index, "id": crop_id, "reason": reason, "message": message}


#: requests with at most this many encoded crops may be decoded on the event loop, not in the executor ...
INLINE_DECODE_MAX = 4
#: ... when each crop's header proves it small and simple (PNG, BMP, baseline JPEG; no tiles, scans, frames)
INLINE_MAX_BYTES = 16 * 1024
INLINE_MAX_PIXELS = 256 * 256
#: a request's crops are decoded in chunks of at least this many, one chunk per preprocessing thread
DECODE_CHUNK_MIN = 32


def inline_safe(images: Sequence[str | bytes], b64: bool) -> bool:
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


def decode_chunk(
    images: Sequence[str | bytes],
    ids: Sequence[str],
    start: int,
    b64: bool,
    inp: InputSpec,
    sizes: np.ndarray | None = None,
    deadline: float = math.inf,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Executor thread: decode crops [start, start+len) to model-size uint8 rows; collect every bad crop.

    `ids`: the chunk's crop ids (ids[k] is crop start + k); an error names the crop's index in the request.

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
            errors.append(crop_error(i, ids[offset], exc.reason, exc.message))
        except Exception as exc:  # untrusted bytes: any decoder failure is the crop's fault, never a 500
            message = f"image could not be decoded ({type(exc).__name__})"
            errors.append(crop_error(i, ids[offset], "undecodable", message))
    return out, errors
