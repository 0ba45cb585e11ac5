"""Payloads for the hostile-client corpus (`loadtest.hostile`): raw requests, crops in refused formats, TIFF tile
bombs, V2 bodies whose numbers are not what they claim. Built from the standard library, numpy, OpenCV and Pillow
(for formats OpenCV does not write).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import cv2
import numpy as np
from PIL import Image


def post(path: str, body: bytes, ctype: str = "application/json", extra: bytes = b"") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
        % (path.encode(), ctype.encode(), len(body), extra)
    ) + body


def classify_json(images: list[bytes], **fields: object) -> bytes:
    crops = [{"id": f"c{i}", "image": base64.b64encode(im).decode()} for i, im in enumerate(images)]
    return json.dumps({"crops": crops, **fields}).encode()


def bubble_png(side: int = 32) -> bytes:
    img = np.full((side, side), 230, np.uint8)
    cv2.circle(img, (side // 2, side // 2), side // 3, 30, 2)
    return cv2.imencode(".png", img)[1].tobytes()


def tiff_tile_bomb(width: int = 64, height: int = 64, tile: int = 8192) -> bytes:
    """A TIFF declaring width x height with ONE deflate tile of tile x tile zeros (~65 KB for 8192)."""
    packed = zlib.compress(bytes(tile * tile), 9)
    entries = [
        (256, 3, width),
        (257, 3, height),
        (258, 3, 8),
        (259, 3, 8),
        (262, 3, 1),
        (277, 3, 1),
        (322, 3, tile),
        (323, 3, tile),
        (324, 4, 0),
        (325, 4, len(packed)),
    ]
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 324 else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + packed


def other_formats() -> dict[str, bytes]:
    """Crops in formats the contract does not list (each would decode with the codec that reads it)."""
    img = np.full((32, 32), 200, np.uint8)
    out = {name: cv2.imencode(ext, img)[1].tobytes() for name, ext in (("jpeg2000", ".jp2"), ("pnm", ".pgm"))}
    with_avif = cv2.imencode(".avif", cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    if with_avif[0]:
        out["avif"] = with_avif[1].tobytes()
    for name, fmt, extra in (("gif", "GIF", {}), ("mpo", "MPO", {"save_all": True})):
        buf = io.BytesIO()
        pil = Image.fromarray(img).convert("RGB")
        pil.save(buf, fmt, **({"append_images": [pil]} if extra else {}), **extra)
        out[name] = buf.getvalue()
    return out


def v2_json(inp: dict[str, object], **fields: object) -> bytes:
    return json.dumps({"inputs": [inp], **fields}).encode()


V2 = "/v2/models/omr-bubble/infer"
PIX = {"name": "PIXELS", "datatype": "UINT8", "shape": [1, 8, 8]}


def v2_pixels(values: str) -> bytes:
    """A V2 JSON body whose UINT8 data is 64 copies of the literal `values` (2**64, 1e300, 1.9, "7", true)."""
    return (
        b'{"inputs":[{"name":"PIXELS","datatype":"UINT8","shape":[1,8,8],"data":[%s]}]}'
        % ",".join([values] * 64).encode()
    )
