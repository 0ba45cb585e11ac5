"""Crop decoding and preprocessing: the ONE implementation shared by the service and `models.evaluate`.

Measured accuracy equals served accuracy only if both run exactly this code.

Decoding reads the header first (`service.core.sniff`): only PNG, JPEG, BMP, TIFF and WebP pass, and the
declared size (and for TIFF the tile size and the pixel memory) is checked *before* decompressing, so a tiny
file that declares a huge image (a decompression bomb) is refused without allocating it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from service.core.modelconfig import InputSpec, PreprocessSpec
from service.core.sniff import HeaderError, sniff

#: Crop side limits in pixels (the public contract: 8 to 512 px a side).
MIN_SIDE = 8
MAX_SIDE = 512

cv2.setNumThreads(1)  # preprocessing runs in our own worker threads; OpenCV's pool only adds hand-offs
# crafted crops make the codecs complain on stderr (libtiff, libpng warnings): the 422 says it once, in our words
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class CropError(ValueError):
    """A crop that cannot be used. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) declared by the image header, without decoding pixels; CropError for other formats."""
    try:
        header = sniff(data)
    except HeaderError as exc:
        raise CropError(exc.reason, exc.message) from None
    return header.width, header.height


def check_side(width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE:
        raise CropError("bad_size", f"crop is {width}x{height} px; each side must be {MIN_SIDE}-{MAX_SIDE} px")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 grayscale HxW. Raises CropError with a clear reason."""
    if not data:
        raise CropError("empty", "image is 0 bytes")
    check_side(*image_size(data))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CropError("undecodable", "image data is truncated or corrupt")
    if arr.dtype != np.uint8:
        raise CropError("bad_depth", f"image has {arr.dtype} samples; only 8-bit images are accepted")
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        elif channels == 1:
            arr = arr[:, :, 0]
        else:
            raise CropError("bad_channels", f"image has {channels} channels; send grayscale or RGB")
    check_side(arr.shape[1], arr.shape[0])
    return np.ascontiguousarray(arr)


def resize(gray: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 HxW -> uint8 height x width: INTER_AREA when shrinking, INTER_LINEAR when enlarging."""
    if gray.shape == (height, width):
        return gray
    shrinking = gray.shape[0] * gray.shape[1] >= height * width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (width, height), interpolation=interp)


def normalize(batch_u8: np.ndarray, spec: PreprocessSpec, dtype: str = "float32") -> np.ndarray:
    """uint8 [N,H,W] -> model input [N,1,H,W]: (pixel/255 - mean) / std."""
    x = batch_u8.astype(np.float32)
    x *= 1.0 / (255.0 * spec.std)
    if spec.mean:
        x -= spec.mean / spec.std
    return x[:, None, :, :].astype(dtype, copy=False)


def prepare(crops: Sequence[np.ndarray], inp: InputSpec) -> np.ndarray:
    """Decoded uint8 crops of any size -> uint8 [N, H, W] at the model's input size."""
    out = np.empty((len(crops), inp.height, inp.width), np.uint8)
    for i, crop in enumerate(crops):
        out[i] = resize(crop, inp.height, inp.width)
    return out


def prepare_raw(tensor: np.ndarray, inp: InputSpec) -> np.ndarray:
    """A raw uint8 [N,H,W] batch (the octet-stream fast path) -> uint8 [N, h, w] at model size."""
    if tensor.ndim != 3 or tensor.dtype != np.uint8:
        raise CropError("bad_shape", f"raw tensor must be uint8 [N,H,W], got {tensor.dtype} {list(tensor.shape)}")
    _n, h, w = tensor.shape
    check_side(w, h)
    if (h, w) == (inp.height, inp.width):
        return tensor
    return prepare(list(tensor), inp)
