"""Property tests (hypothesis) for crop decoding (`service/core/preprocess.py`) and the raw-tensor path.

Decoding: any bytes either decode to a uint8 grayscale crop within the side limits or raise `CropError` (never
another exception); valid PNGs round-trip exactly; mutated and truncated real images never crash it; the header
size it checks matches what is decoded. Raw tensors: `prepare_raw` maps any in-range uint8 [N,H,W] batch to the
model size and refuses everything else with `CropError`; over HTTP (a real uvicorn on 127.0.0.1), a random
shape header and body length give 200 with N results exactly when they agree and are in range, else a JSON 4xx.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.core.modelconfig import InputSpec
from service.core.preprocess import MAX_SIDE, MIN_SIDE, CropError, decode_image, image_size, prepare_raw
from service.settings import Settings

from ._support import LiveServer, assert_json_error, bubble, live_server

INP = InputSpec()  # the model input (32 x 32 by default)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


SEEDS = [encode(".png", bubble(32)), encode(".jpg", bubble(40)), encode(".bmp", bubble(16)),
         encode(".png", cv2.cvtColor(bubble(24), cv2.COLOR_GRAY2BGR)), encode(".webp", bubble(20))]  # fmt: skip


def check_decoded(out: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.ndim == 2
    assert min(out.shape) >= MIN_SIDE and max(out.shape) <= MAX_SIDE
    assert out.flags["C_CONTIGUOUS"]


@FAST
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes_crop_or_croperror(data: bytes) -> None:
    try:
        check_decoded(decode_image(data))
    except CropError as exc:
        assert exc.reason and exc.message


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
)
def test_decode_mutated_real_images_never_crash(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, cut % (len(data) + 1))]
    try:
        check_decoded(decode_image(bytes(data)))
    except CropError as exc:
        assert exc.reason in {"empty", "undecodable", "bad_size", "bad_depth", "bad_channels"}, exc.reason


@FAST
@given(arrays(np.uint8, st.tuples(st.integers(MIN_SIDE, 96), st.integers(MIN_SIDE, 96))))
def test_decode_png_round_trips_exactly(img: np.ndarray) -> None:
    data = encode(".png", img)
    assert image_size(data) == (img.shape[1], img.shape[0])
    np.testing.assert_array_equal(decode_image(data), img)


@FAST
@given(arrays(np.uint8, st.tuples(st.integers(MIN_SIDE, 48), st.integers(MIN_SIDE, 48), st.just(3))))
def test_decode_colour_becomes_opencv_gray(img: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(encode(".png", img)), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))


@FAST
@given(st.integers(1, 700), st.integers(1, 700))
def test_decode_refuses_sides_out_of_range(h: int, w: int) -> None:
    data = encode(".png", np.full((h, w), 128, np.uint8))
    if min(h, w) >= MIN_SIDE and max(h, w) <= MAX_SIDE:
        assert decode_image(data).shape == (h, w)
    else:
        with pytest.raises(CropError) as info:
            decode_image(data)
        assert info.value.reason == "bad_size" and f"{w}x{h}" in info.value.message


@FAST
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 80), st.integers(1, 80))))
def test_prepare_raw_model_size_or_croperror(tensor: np.ndarray) -> None:
    _, h, w = tensor.shape
    if min(h, w) >= MIN_SIDE and max(h, w) <= MAX_SIDE:
        out = prepare_raw(tensor, INP)
        assert out.shape == (tensor.shape[0], INP.height, INP.width) and out.dtype == np.uint8
        lo, hi = int(tensor.min()), int(tensor.max())
        assert lo <= int(out.min()) and int(out.max()) <= hi  # resizing never invents values outside the input
    else:
        with pytest.raises(CropError):
            prepare_raw(tensor, INP)


@FAST
@given(st.sampled_from([np.float32, np.uint16, np.int8]), st.integers(0, 2))
def test_prepare_raw_refuses_wrong_dtype_or_rank(dtype: type, extra_dims: int) -> None:
    shape = (2, 32, 32) + (1,) * extra_dims
    tensor = np.zeros(shape if extra_dims else (32, 32), dtype)
    with pytest.raises(CropError) as info:
        prepare_raw(tensor, INP)
    assert info.value.reason == "bad_shape"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with live_server(Settings(max_crops_per_request=64, log_level="critical")) as srv:
        yield srv


@pytest.mark.integration
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 70),
    h=st.integers(0, 40),
    w=st.integers(0, 40),
    delta=st.sampled_from([0, 0, 0, -1, 1, -7]),
    header=st.booleans(),
)
def test_raw_http_accepts_exactly_consistent_shapes(live: LiveServer, n: int, h: int, w: int, delta: int,
                                                    header: bool) -> None:  # fmt: skip
    size = max(0, n * h * w + delta)
    body = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    headers = {"Content-Type": "application/octet-stream"}
    params: dict[str, int | bool] = {"tta": False}
    if header:
        headers["X-Crop-Shape"] = f"{n},{h},{w}"
    else:
        params.update(n=n, h=h, w=w)
    with httpx.Client(base_url=live.url, timeout=30) as c:
        r = c.post("/classify", content=body, headers=headers, params=params)
    valid = delta == 0 and 1 <= n <= 64 and min(h, w) >= MIN_SIDE
    if valid:
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == n
    else:
        body_json = assert_json_error(r, (400, 413, 422))
        if r.status_code == 422:
            assert body_json["crops"][0]["index"] == 0
