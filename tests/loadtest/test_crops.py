"""Crop pools and request bodies: what the load generators send must be what the API accepts."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import orjson
import pytest

from loadtest.crops import REAL_DEV_DIR, CropPool, check_response
from service.core.preprocess import decode_image


@pytest.fixture(scope="module")
def pool() -> CropPool:
    return CropPool.build(24, seed=3)


def test_build_pool_gives_every_form(pool: CropPool) -> None:
    assert len(pool) == 24
    assert pool.raw.shape == (24, 32, 32) and pool.raw.dtype == np.uint8
    first = decode_image(base64.b64decode(pool.b64[0], validate=True))
    assert 16 <= first.shape[0] <= 128  # native size, not model size
    assert len(set(pool.pngs)) > 20  # distinct crops, not one repeated


def test_build_pool_is_deterministic() -> None:
    assert CropPool.build(4, seed=9).pngs == CropPool.build(4, seed=9).pngs


def test_json_body_wraps_and_numbers_crops(pool: CropPool) -> None:
    body, ids = pool.json_body(20, 10, prefix="x")
    doc = orjson.loads(body)
    assert doc["tta"] is False
    assert [c["id"] for c in doc["crops"]] == ids == [f"x{k}-{(20 + k) % 24}" for k in range(10)]
    assert doc["crops"][4]["image"] == pool.b64[0]  # index 24 wrapped to 0


def test_raw_body_matches_shape_header(pool: CropPool) -> None:
    body, headers = pool.raw_body(0, 7)
    assert headers == {"Content-Type": "application/octet-stream", "X-Crop-Shape": "7,32,32"}
    assert np.array_equal(np.frombuffer(body, np.uint8).reshape(7, 32, 32), pool.raw[:7])


def _response(ids: list[str]) -> bytes:
    return orjson.dumps({"results": [{"id": i, "label": "empty", "marked": False} for i in ids]})


def test_check_response_accepts_matching_results() -> None:
    assert check_response(_response(["a", "b", "c"]), ["a", "b", "c"], 3) is None


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"<html>", "not JSON"),
        (b'{"detail": "x"}', "no results"),
        (_response(["a", "b"]), "2 results for 3 crops"),
        (_response(["a", "b", "z"]), "expected 'c'"),
        (orjson.dumps({"results": [{"id": "a"}, {}, {"id": "c"}]}), "lacks label"),
    ],
)
def test_check_response_rejects_wrong_answers(payload: bytes, why: str) -> None:
    reason = check_response(payload, ["a", "b", "c"], 3)
    assert reason is not None and why in reason


def test_build_pool_from_real_pngs_keeps_their_bytes(real_dev: Path) -> None:
    folder = real_dev.parent / "crops"
    pool = CropPool.build(5, seed=0, source="real", folder=folder)
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pool.pngs)
    assert {p for p in pool.pngs} <= {f.read_bytes() for f in folder.glob("*.png")}


def test_build_pool_from_a_folder_of_pngs(tmp_path: Path) -> None:
    """The real-crop path without the real-dev set: any folder of PNG crops, bytes kept as they are."""
    files = []
    for i in range(4):
        img = np.full((20 + i, 24), 200 + i, np.uint8)
        files.append(tmp_path / f"c{i}.png")
        assert cv2.imwrite(str(files[-1]), img)
    pool = CropPool.build(3, seed=0, source="real", folder=tmp_path)
    assert len(pool.pngs) == 3 and {p for p in pool.pngs} <= {f.read_bytes() for f in files}


def test_default_real_dev_dir_is_beside_the_checkout() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert repo.parent / "shared" / "data" / "real-dev" / "crops" == REAL_DEV_DIR
