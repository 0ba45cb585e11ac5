"""The malformed-input corpus against a real `python -m service` on 127.0.0.1 (a subprocess, so its RSS is its own).

Each case: the expected 4xx, a JSON error body (`error`, `code`), the offending crop named (index and id) when
the problem belongs to a crop, no stack trace; afterwards the service is still ready; at the end its peak RSS
(VmHWM) stayed within a fixed bound although the corpus sends 20 MB bodies and 100k crops.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import orjson
import pytest

from loadtest import server as service_process

from ._support import assert_json_error, b64, bubble, png

pytestmark = pytest.mark.integration

BODY_LIMIT = 8 * 1024 * 1024
#: peak RSS (VmHWM) may exceed the ready-time RSS by at most this much across the whole corpus
PEAK_RSS_BOUND = 256 * 2**20

GOOD = png(bubble(32))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 100_000) -> bytes:
    """A ~100-byte PNG declaring side x side 8-bit gray pixels (10 GB if decoded); one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A real small JPEG whose SOF0 header is edited to declare side x side pixels."""
    ok, buf = cv2.imencode(".jpg", bubble(32))
    assert ok
    data = bytearray(buf.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def corrupt_png() -> bytes:
    data = bytearray(GOOD)
    i = data.index(b"IDAT")
    data[i + 4 : i + 24] = b"\x00" * 20  # zlib stream header destroyed
    return bytes(data)


def encoded(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def urlsafe_b64() -> str:
    """A valid image in URL-safe base64 (with '-' or '_', which standard base64 does not allow)."""
    for seed in range(200):
        text = base64.urlsafe_b64encode(png(bubble(32, seed))).decode()
        if "-" in text or "_" in text:
            return text
    raise AssertionError("no seed gives a URL-safe-only character")


@dataclass(frozen=True)
class Case:
    name: str
    status: int | tuple[int, ...]
    send: Callable[[httpx.Client], httpx.Response]
    crop: tuple[int, str] | None = None  # (index, id) the error must name first
    says: str = ""  # a word the message must contain (case-insensitive)
    #: every (index, id) the error must name, exactly (default: just `crop`)
    named: tuple[tuple[int, str], ...] | None = None

    def expected_named(self) -> list[tuple[int, str]]:
        return list(self.named) if self.named is not None else [self.crop] if self.crop is not None else []


def post_json(body: Any) -> Callable[[httpx.Client], httpx.Response]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return lambda c: c.post("/classify", content=data, headers={"Content-Type": "application/json"})


def one_bad(image: str, index: int = 2, n: int = 4) -> Callable[[httpx.Client], httpx.Response]:
    """`n` crops, all good except crop `index` (id 'bad-<index>')."""
    crops = [{"id": f"ok-{i}", "image": b64(GOOD)} for i in range(n)]
    crops[index] = {"id": f"bad-{index}", "image": image}
    return post_json({"crops": crops})


def bad_crop(name: str, image: str, says: str = "", index: int = 2) -> Case:
    return Case(name, 422, one_bad(image, index), (index, f"bad-{index}"), says)


def raw(shape: str, body: bytes, query: str = "") -> Callable[[httpx.Client], httpx.Response]:
    headers = {"Content-Type": "application/octet-stream", "X-Crop-Shape": shape}
    return lambda c: c.post(f"/classify{query}", content=body, headers=headers)


def chunked(total: int) -> Callable[[httpx.Client], httpx.Response]:
    def gen() -> Iterator[bytes]:
        block = b"A" * 65536
        for _ in range(total // len(block)):
            yield block

    return lambda c: c.post("/classify", content=gen(), headers={"Content-Type": "application/json"})


_rgba = cv2.cvtColor(bubble(32), cv2.COLOR_GRAY2BGRA)
_u16 = bubble(32).astype(np.uint16) * 257
_good_crop = {"id": "a", "image": b64(GOOD)}

CASES = [
    bad_crop("base64-invalid-chars", "!!!not*base64!!!", "base64"),
    bad_crop("base64-with-newlines", base64.encodebytes(GOOD).decode(), "base64"),
    bad_crop("base64-with-spaces", " ".join(b64(GOOD)[i : i + 8] for i in range(0, 64, 8)), "base64"),
    bad_crop("base64-url-safe", urlsafe_b64(), "base64"),
    bad_crop("base64-missing-padding", b64(GOOD).rstrip("=") + ("" if b64(GOOD).endswith("=") else "A"), "base64"),
    bad_crop("zero-byte-image", "", "0 bytes"),
    bad_crop("png-truncated", b64(GOOD[: len(GOOD) // 2])),
    bad_crop("png-corrupted-idat", b64(corrupt_png())),
    bad_crop("jpeg-truncated", b64(encoded(".jpg", bubble(64))[:300])),
    bad_crop("jpeg-header-only", b64(b"\xff\xd8\xff\xe0" + b"\x00" * 40)),
    bad_crop("not-an-image", b64(b"hello, I am plain text, not a PNG"), "decodable"),
    bad_crop("png-decompression-bomb", b64(png_bomb()), "100000"),
    bad_crop("jpeg-decompression-bomb", b64(jpeg_bomb()), "60000"),
    bad_crop("png-16-bit", b64(encoded(".png", _u16)), "8-bit"),
    bad_crop("png-4-channel", b64(encoded(".png", _rgba)), "channels"),
    bad_crop("crop-below-min-size", b64(png(bubble(4))), "4x4"),
    bad_crop("crop-above-max-size", b64(png(bubble(600))), "600x600"),
    bad_crop("crop-first-of-many", "@@@", index=0),
    Case(
        "two-bad-crops-both-named",
        422,
        post_json({"crops": [_good_crop, {"id": "x1", "image": "@"}, {"id": "x2", "image": ""}]}),
        (1, "x1"),
        named=((1, "x1"), (2, "x2")),
    ),
    Case("crops-not-a-list", 400, post_json({"crops": "everything"}), says="crops"),
    Case("crop-image-is-number", 400, post_json({"crops": [_good_crop, {"id": "n", "image": 12345}]}), says="crops.1"),
    Case("crop-id-is-number", 400, post_json({"crops": [{"id": 7, "image": b64(GOOD)}]}), says="crops.0"),
    Case("crop-id-too-long", 400, post_json({"crops": [{"id": "x" * 300, "image": b64(GOOD)}]}), says="crops.0"),
    Case("crop-unknown-field", 400, post_json({"crops": [{"image": b64(GOOD), "rotate": 90}]}), says="crops.0"),
    Case("unknown-top-level-field", 400, post_json({"crops": [_good_crop], "threshold": 0.5}), says="threshold"),
    Case("tta-is-string", 400, post_json({"crops": [_good_crop], "tta": "yes"}), says="tta"),
    Case("nan-literal", 400, post_json(b'{"crops": [], "threshold": NaN}'), says="JSON"),
    Case("infinity-literal", 400, post_json(b'{"crops": [], "threshold": Infinity}'), says="JSON"),
    Case("huge-number-threshold", 400, post_json(b'{"crops": [{"image": "AAAA"}], "threshold": 1e999}')),
    Case("body-not-json", 400, post_json(b"crops=1&image=2"), says="JSON"),
    Case("body-empty", 400, post_json(b"")),
    Case("body-json-array", 400, post_json([{"image": b64(GOOD)}]), says="object"),
    Case("no-crops", 422, post_json({"crops": []}), says="no crops"),
    Case("id-not-utf8", 400, post_json(b'{"crops": [{"id": "\xff\xfe", "image": "AAAA"}]}'), says="UTF-8"),
    Case("id-lone-surrogate", 400, post_json(b'{"crops": [{"id": "\\ud800", "image": "AAAA"}]}')),
    Case("100k-crops", 413, post_json({"crops": [{"image": "AAAA"}] * 100_000}), says="100000"),
    Case("20MB-body", 413, post_json(b"{" + b" " * (20 * 2**20) + b"}"), says="limit"),
    Case("20MB-chunked-body", 413, chunked(20 * 2**20), says="limit"),
    Case(
        "content-type-text", 415, lambda c: c.post("/classify", content=b"{}", headers={"Content-Type": "text/plain"})
    ),
    Case("content-type-form", 415, lambda c: c.post("/classify", data={"crops": "x"})),
    Case("raw-shape-mismatch", 422, raw("2,32,32", b"\x00" * 1000), (0, "0"), says="2048"),
    Case("raw-shape-not-three-ints", 400, raw("32,32", b"\x00" * 1024), says="X-Crop-Shape"),
    Case("raw-shape-garbage", 400, raw("a,b,c", b"\x00" * 1024), says="X-Crop-Shape"),
    Case("raw-shape-negative", 400, raw("-1,32,32", b""), says="negative"),
    Case("raw-crop-below-min-size", 422, raw("2,4,4", b"\x00" * 32), says="4x4"),
    Case("raw-zero-crops", 422, raw("0,32,32", b""), says="no crops"),
    Case("raw-100k-crops", 413, raw("100000,32,32", b"\x00" * 1024), says="100000"),
    Case(
        "raw-no-shape",
        400,
        lambda c: c.post("/classify", content=b"\x00" * 1024, headers={"Content-Type": "application/octet-stream"}),
    ),
    Case("unknown-model", 404, post_json({"crops": [_good_crop], "model": "nope"}), says="nope"),
    Case("unknown-profile", 400, post_json({"crops": [_good_crop], "profile": "nope"}), says="nope"),
    Case("wrong-method", 405, lambda c: c.get("/classify")),
]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[service_process.Service]:
    log = Path(tmp_path_factory.mktemp("svc")) / "service.log"
    env = {"OMR_MAX_BODY_BYTES": str(BODY_LIMIT), "OMR_LOG_LEVEL": "warning"}
    with service_process.running(env, log) as s:
        s.start_rss = s.rss_bytes()  # type: ignore[attr-defined]
        yield s


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.fixture(scope="module")
def outcomes(svc: service_process.Service) -> dict[str, tuple[httpx.Response, int]]:
    """The whole corpus sent once, in order: each case's answer and the /readyz status right after it.

    The per-case tests read from here, so the memory test (which needs every case sent first) holds in any
    test order."""
    out = {}
    with httpx.Client(base_url=svc.url, timeout=60.0) as c:
        for case in CASES:
            r = case.send(c)
            out[case.name] = (r, c.get("/readyz").status_code)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reject_malformed_input(
    svc: service_process.Service, outcomes: dict[str, tuple[httpx.Response, int]], case: Case
) -> None:
    r, ready_after = outcomes[case.name]
    body = assert_json_error(r, case.status)
    assert body["error"].strip(), body
    if case.says:
        assert case.says.lower() in body["error"].lower(), body["error"]
    expected = case.expected_named()
    if expected:
        named = body.get("crops")
        assert isinstance(named, list), body
        assert [(n["index"], n["id"]) for n in named] == expected, "exactly the bad crops, none of the good ones"
        assert f"crop {expected[0][0]}" in body["error"], body["error"]
    assert ready_after == 200, "service not ready after a malformed request"
    assert svc.process.poll() is None, svc.log_tail()


def test_memory_bounded_after_corpus(
    svc: service_process.Service, outcomes: dict[str, tuple[httpx.Response, int]]
) -> None:
    """After the whole corpus (`outcomes`: in any test order): the peak RSS over all malformed requests."""
    assert len(outcomes) == len(CASES)
    peak = vm_hwm(svc.process.pid)
    start = svc.start_rss  # type: ignore[attr-defined]
    assert peak - start < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB vs {start / 2**20:.0f} MiB at ready"
    print(f"peak RSS {peak / 2**20:.0f} MiB, ready-time RSS {start / 2**20:.0f} MiB")
    assert "Traceback" not in svc.log_tail(1_000_000), "a malformed input raised an unhandled exception"
