"""Real-looking crops and the request bodies built from them, shared by locust, wrk and the benchmark.

Crops come from the synthetic renderer (`models.synth`, native size 16-128 px, every class) so load runs
need no data outside the repository; `source="real"` reads the real-dev PNGs instead (their original
encodings, 20-90 px). Bodies are built once up front: a load generator that encodes per request measures
itself, not the service.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import orjson

from service.core.preprocess import resize

#: the real-dev crops beside this checkout (`../shared/data/real-dev/crops`, as the Makefile's REAL_LABELS)
REAL_DEV_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-dev" / "crops"
Source = Literal["synth", "real"]
#: model input side; raw-tensor bodies are sent at this size (what an engine holding pixels would send)
MODEL_SIDE = 32
#: crops per sheet an OMR engine posts (issue 6: 50-500)
SHEET_MIN, SHEET_MAX = 50, 500


def encode_png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError(f"cannot PNG-encode an array of shape {gray.shape}")
    return buf.tobytes()


def _synth_crops(n: int, seed: int) -> list[np.ndarray]:
    from models.synth.render import render_sample  # only the load generator needs the renderer
    from service.core.taxonomy import CLASSES

    rng = np.random.default_rng(seed)
    return [render_sample(CLASSES[i % len(CLASSES)], rng).image for i in range(n)]


def _real_pngs(n: int, seed: int, folder: Path) -> list[bytes]:
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG crops in {folder}")
    order = np.random.default_rng(seed).permutation(len(files))
    return [files[order[i % len(files)]].read_bytes() for i in range(n)]


@dataclass(frozen=True)
class CropPool:
    """`n` distinct crops in the forms requests carry them: PNG bytes, base64 text, raw model-size pixels."""

    source: str
    pngs: tuple[bytes, ...]
    b64: tuple[str, ...]
    raw: np.ndarray  # uint8 [n, 32, 32]

    def __len__(self) -> int:
        return len(self.pngs)

    @classmethod
    def build(cls, n: int = 256, seed: int = 0, source: Source = "synth", folder: Path = REAL_DEV_DIR) -> CropPool:
        if n < 1:
            raise ValueError("a crop pool needs at least one crop")
        if source == "synth":
            grays = _synth_crops(n, seed)
            pngs = [encode_png(g) for g in grays]
        else:
            pngs = _real_pngs(n, seed, folder)
            grays = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_GRAYSCALE) for p in pngs]
        raw = np.stack([resize(g, MODEL_SIDE, MODEL_SIDE) for g in grays])
        b64 = tuple(base64.b64encode(p).decode("ascii") for p in pngs)
        return cls(source=source, pngs=tuple(pngs), b64=b64, raw=raw)

    def indices(self, start: int, count: int) -> list[int]:
        return [(start + i) % len(self) for i in range(count)]

    def json_body(self, start: int, count: int, tta: bool = False, prefix: str = "c") -> tuple[bytes, list[str]]:
        """A JSON `POST /classify` body of `count` crops starting at pool index `start`, and its crop ids."""
        idx = self.indices(start, count)
        ids = [f"{prefix}{k}-{i}" for k, i in enumerate(idx)]
        crops = [{"id": cid, "image": self.b64[i]} for cid, i in zip(ids, idx, strict=True)]
        return orjson.dumps({"crops": crops, "tta": tta}), ids

    def raw_body(self, start: int, count: int) -> tuple[bytes, dict[str, str]]:
        """An octet-stream `POST /classify` body (uint8 [N,32,32]) and the headers that describe it."""
        batch = np.ascontiguousarray(self.raw[self.indices(start, count)])
        n, h, w = batch.shape
        return batch.tobytes(), {"Content-Type": "application/octet-stream", "X-Crop-Shape": f"{n},{h},{w}"}


def check_response(payload: bytes, expected_ids: Sequence[str] | None, n: int) -> str | None:
    """Why a `/classify` response body is wrong, or None when it is right (one result per crop, in order)."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "response is not JSON"
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return "response has no results list"
    if len(results) != n:
        return f"{len(results)} results for {n} crops"
    for pos in (0, n - 1):
        r = results[pos]
        if not isinstance(r, dict) or "label" not in r or "marked" not in r:
            return f"result {pos} lacks label/marked"
        if expected_ids is not None and str(r.get("id")) != expected_ids[pos]:
            return f"result {pos} has id {r.get('id')!r}, expected {expected_ids[pos]!r}"
    return None


@dataclass(frozen=True)
class Prepared:
    """One ready-to-send request: body, headers, crop count, and the ids the response must echo in order."""

    body: bytes
    headers: dict[str, str]
    crops: int
    ids: tuple[str, ...]


@cache
def prepared(seed: int) -> dict[str, tuple[Prepared, ...]]:
    """The locust users' requests per kind (sheet_json, sheet_raw, single), built once per process."""
    pool = CropPool.build(512, seed)
    rng = random.Random(seed)
    sizes = [rng.randint(SHEET_MIN, SHEET_MAX) for _ in range(12)]
    json_headers = {"Content-Type": "application/json"}
    sheets, raws, singles = [], [], []
    for k, n in enumerate(sizes):
        body, ids = pool.json_body(k * 37, n, prefix=f"s{k}-")
        sheets.append(Prepared(body, json_headers, n, tuple(ids)))
        raw, headers = pool.raw_body(k * 41, n)
        raws.append(Prepared(raw, headers, n, tuple(str(i) for i in range(n))))
    for k in range(128):
        body, ids = pool.json_body(k, 1, prefix=f"u{k}-")
        singles.append(Prepared(body, json_headers, 1, tuple(ids)))
    return {"sheet_json": tuple(sheets), "sheet_raw": tuple(raws), "single": tuple(singles)}
