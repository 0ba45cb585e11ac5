"""A hostile-client corpus against a real service: every probe must get a 4xx, 408 or 503 or a closed connection
(never a 200 for a bomb, never a 5xx other than 503), while a canary measures the event loop's largest stall and
the server's RSS is sampled.

    python -m loadtest.hostile --out runs/hostile            # starts python -m service with FRONT_DOOR_ENV
    python -m loadtest.hostile --port 8000 --pid 1234        # an already running service (its own settings)

Probes are grouped by family (the table in docs/reliability.md, "hostile clients"); the tests in
tests/reliability/test_hostile_*.py run the same probes one family at a time. Payloads are built here, from
nothing but the standard library, numpy, OpenCV and Pillow (for formats OpenCV does not write).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from loadtest.rawhttp import Answer, Canary, RssPeak, exchange, proc_fds, proc_status, wait_for

#: settings the corpus runs under when it starts the service itself (short timeouts keep a run short)
FRONT_DOOR_ENV = {
    "OMR_HEAD_TIMEOUT_S": "1",
    "OMR_BODY_TIMEOUT_S": "1.5",
    "OMR_MAX_CONNECTIONS": "128",
    "OMR_MAX_BODY_BYTES": str(32 * 1024 * 1024),
    "OMR_MAX_BUFFERED_BYTES": str(64 * 1024 * 1024),
    "OMR_WORKERS": "1",
}
REFUSED = frozenset({400, 401, 404, 405, 408, 413, 415, 422, 429, 431, 503, None})


# --- payloads ---
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


# --- probes ---
@dataclass(frozen=True)
class Target:
    port: int
    pid: int
    head_timeout_s: float
    body_timeout_s: float
    max_connections: int


@dataclass(frozen=True)
class Probe:
    name: str
    family: str
    run: Callable[[Target], list[Answer]]
    expect: frozenset[int | None] = REFUSED


def _one(chunks: Callable[[], list[bytes]], timeout: float = 20.0) -> Callable[[Target], list[Answer]]:
    return lambda t: [exchange(t.port, chunks(), read_timeout=timeout)]


def _hold(t: Target, heads: list[bytes], wait_s: float) -> list[Answer]:
    """Open one connection per head, send it, and read each answer (in parallel)."""
    with concurrent.futures.ThreadPoolExecutor(min(len(heads), 64)) as pool:
        return list(pool.map(lambda h: exchange(t.port, [h], read_timeout=wait_s), heads))


def _idle(t: Target, n: int = 190) -> list[Answer]:
    """n connections that never send a byte: each must be closed by the server, not held."""
    socks = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(n)]
    answers = []
    try:
        for s in socks:
            s.settimeout(t.head_timeout_s + 10)
            started = time.monotonic()
            try:
                data = s.recv(4096)
                answers.append(Answer(int(data.split()[1]) if data else None, data, b"", time.monotonic() - started))
            except TimeoutError:
                answers.append(Answer(200, b"", b"", time.monotonic() - started, "still open"))  # counted as held
    finally:
        for s in socks:
            s.close()
    _settle(t)
    return answers


def _settle(t: Target) -> None:
    """Wait until the server has seen the probe's connections close (its cap counts them until then)."""
    wait_for(lambda: proc_fds(t.pid) < 64, 15)


def _budget(t: Target, n: int = 6, size: int = 30 * 1024 * 1024) -> list[Answer]:
    """n clients that each declare `size` bytes, send all but the last, and stall: 503 beyond the budget."""
    head = b"POST /classify HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size
    return _hold(t, [head + bytes(size - 1)] * n, t.body_timeout_s + 15)


def _cap(t: Target) -> list[Answer]:
    """max_connections + 8 idle connections: the extra ones are refused with 503 at once."""
    socks = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(t.max_connections + 8)]
    answers = []
    try:
        for s in socks[-8:]:
            s.settimeout(5)
            started = time.monotonic()
            try:
                data = s.recv(4096)
            except TimeoutError:
                data = b""
            answers.append(Answer(int(data.split()[1]) if data else None, data, b"", time.monotonic() - started))
    finally:
        for s in socks:
            s.close()
    _settle(t)
    return answers


def _many_headers() -> list[bytes]:
    return [b"GET /healthz HTTP/1.1\r\nHost: h\r\n", b"X-A: 1\r\n" * 1_000_000, b"\r\n"]


def _v2_bytes_elements(n: int = 8_250_000) -> list[bytes]:
    header = json.dumps(
        {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [n], "parameters": {"binary_data_size": 4 * n}}]}
    ).encode()
    extra = b"Inference-Header-Content-Length: %d\r\n" % len(header)
    return [post(V2, header + bytes(4 * n), "application/octet-stream", extra)]


def _v2_big_json() -> list[bytes]:
    n = 16 * 512 * 512
    body = b'{"inputs":[{"name":"PIXELS","datatype":"UINT8","shape":[16,512,512],"data":[' + b"0," * (n - 1) + b"0]}]}"
    return [post(V2, body)]


def probes() -> list[Probe]:
    bomb = tiff_tile_bomb()
    formats = other_formats()
    hdr = b"GET /healthz HTTP/1.1\r\n"
    out = [
        Probe("header-100MB", "headers", _one(lambda: [hdr + b"Host: h\r\nX-Big: ", b"a" * (100 << 20), b"\r\n\r\n"])),
        Probe("headers-1M", "headers", _one(_many_headers), frozenset({431, None})),
        Probe(
            "half-sent-head",
            "slow-head",
            lambda t: _hold(t, [hdr + b"Host: h\r\n"] * 20, t.head_timeout_s + 10),
            frozenset({408}),
        ),
        Probe("idle-connections", "slow-head", _idle, frozenset({None, 503})),
        Probe(
            "withheld-last-byte",
            "slow-body",
            lambda t: _hold(t, [post("/classify", bytes(1000))[:-1]] * 4, t.body_timeout_s + 10),
            frozenset({408}),
        ),
        Probe(
            "short-content-length", "slow-body", _one(lambda: [post("/classify", bytes(50))[:-25]]), frozenset({408})
        ),
        Probe(
            "unterminated-chunked",
            "slow-body",
            _one(
                lambda: [
                    b"POST /classify HTTP/1.1\r\nHost: h\r\n"
                    b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"cr\r\n'
                ]
            ),
            frozenset({408}),
        ),
        Probe("buffer-budget", "slow-body", _budget, frozenset({408, 503})),
        Probe("connection-cap", "slow-body", _cap, frozenset({503, None})),
        Probe("tiff-tile-bomb", "tiff", _one(lambda: [post("/classify", classify_json([bomb]))]), frozenset({422})),
        Probe(
            "tiff-bombs-x60", "tiff", _one(lambda: [post("/classify", classify_json([bomb] * 60))]), frozenset({422})
        ),
    ]
    for name, data in formats.items():
        out.append(
            Probe(
                f"format-{name}",
                "formats",
                _one(lambda d=data: [post("/classify", classify_json([d]))]),
                frozenset({422}),
            )
        )
    for name, literal in (
        ("2**64", "18446744073709551616"),
        ("2**64-1", "18446744073709551615"),
        ("1e300", "1e300"),
        ("1.9", "1.9"),
        ("string", '"7"'),
        ("true", "true"),
    ):
        out.append(
            Probe(f"v2-uint8-{name}", "v2-numbers", _one(lambda v=literal: [post(V2, v2_pixels(v))]), frozenset({400}))
        )
    for name, outputs in (
        ("not-list", '"label"'),
        ("no-name", "[{}]"),
        ("bad-params", '[{"name":"label","parameters":7}]'),
        ("unknown", '[{"name":"x"}]'),
    ):
        body = b'{"inputs":[{"name":"PIXELS","datatype":"UINT8","shape":[1,8,8],"data":[%s]}],"outputs":%s}' % (
            b",".join([b"0"] * 64),
            outputs.encode(),
        )
        out.append(Probe(f"v2-outputs-{name}", "v2-numbers", _one(lambda b=body: [post(V2, b)]), frozenset({400})))
    out += [
        Probe("v2-8M-bytes-elements", "v2-parsing", _one(_v2_bytes_elements), frozenset({413})),
        Probe("v2-33MB-json-pixels", "v2-parsing", _one(_v2_big_json), frozenset({413})),
        Probe(
            "profile-20MB",
            "hygiene",
            _one(lambda: [post("/classify", classify_json([bubble_png()], profile="p" * (20 << 20)))]),
            frozenset({400, 413}),
        ),
        Probe("no-host", "conformance", _one(lambda: [b"GET /healthz HTTP/1.1\r\n\r\n"]), frozenset({400})),
        Probe(
            "two-hosts",
            "conformance",
            _one(lambda: [b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"]),
            frozenset({400}),
        ),
        Probe("http-0.9", "conformance", _one(lambda: [b"GET /healthz\r\n"]), frozenset({400, 408, None})),
        Probe(
            "crop-shape-1_0",
            "conformance",
            _one(
                lambda: [post("/classify", bytes(10 * 8 * 8), "application/octet-stream", b"X-Crop-Shape: 1_0,8,8\r\n")]
            ),
            frozenset({400}),
        ),
        Probe(
            "upgrade-websocket",
            "conformance",
            _one(
                lambda: [
                    hdr + b"Host: h\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n\r\n"
                ]
            ),
            REFUSED | {200},
        ),  # served as plain HTTP (no WebSocket protocol without these limits)
        Probe(
            "http2-preface", "conformance", _one(lambda: [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), frozenset({400, None})
        ),
        Probe(
            "chunked-1-byte-x1M",
            "slow-body",
            _one(
                lambda: [
                    b"POST /classify HTTP/1.1\r\nHost: h\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"1\r\nx\r\n" * (1 << 20)
                    + b"0\r\n\r\n"
                ],
                30,
            ),
            frozenset({400, 408}),
        ),
        Probe("413-body-first", "logs", _one(lambda: [post("/classify", bytes(40 << 20))]), frozenset({413})),
    ]
    return out


# --- the run ---
def run(target: Target, selected: list[Probe] | None = None) -> dict[str, object]:
    rows = []
    fds_before, rss_before = proc_fds(target.pid), proc_status(target.pid, "VmRSS")
    with Canary(target.port) as canary, RssPeak(target.pid) as rss:
        for probe in selected or probes():
            seen = len(canary.latencies)
            answers = probe.run(target)
            stall = max(canary.latencies[seen:], default=0.0)  # the canary's slowest answer during this probe
            statuses = sorted({a.status for a in answers}, key=lambda s: -1 if s is None else s)
            ok = all(a.status in probe.expect for a in answers)
            rows.append(
                {
                    "probe": probe.name,
                    "family": probe.family,
                    "statuses": statuses,
                    "ok": ok,
                    "seconds_max": round(max(a.seconds for a in answers), 3),
                    "answers": len(answers),
                    "rss_mib": round(proc_status(target.pid, "VmRSS") / 2**20, 1),
                    "canary_max_s": round(stall, 3),
                }
            )
    wait_for(lambda: proc_fds(target.pid) <= fds_before + 2, 15)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "probes": rows,
        "all_ok": all(r["ok"] for r in rows) and not canary.failures,
        "canary": {
            "requests": len(canary.latencies),
            "failures": canary.failures[:20],
            "max_s": round(canary.max_s, 3),
        },
        "rss_mib": {
            "before": round(rss_before / 2**20, 1),
            "peak": round(rss.peak / 2**20, 1),
            "after": round(proc_status(target.pid, "VmRSS") / 2**20, 1),
        },
        "fds": {"before": fds_before, "after": proc_fds(target.pid)},
    }


def markdown(report: dict[str, object]) -> str:
    lines = [
        "| probe | family | statuses | ok | slowest answer s | canary max s | RSS after MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["probes"]:  # type: ignore[attr-defined]
        statuses = ", ".join("closed" if s is None else str(s) for s in r["statuses"])
        cells = [r["probe"], r["family"], statuses, r["ok"], r["seconds_max"], r["canary_max_s"], r["rss_mib"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    c, m, f = report["canary"], report["rss_mib"], report["fds"]  # type: ignore[index]
    lines.append(
        f"\ncanary: {c['requests']} requests, {len(c['failures'])} failed, slowest {c['max_s']} s; "  # type: ignore[index]
        f"RSS {m['before']} -> peak {m['peak']} -> {m['after']} MiB; fds {f['before']} -> {f['after']}"
    )  # type: ignore[index]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.hostile", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int)
    p.add_argument("--pid", type=int, help="the service's process (for RSS and fds)")
    p.add_argument("--out", type=Path, default=Path("runs/hostile"))
    args = p.parse_args(argv)
    env = {k: float(v) for k, v in FRONT_DOOR_ENV.items() if k.endswith("_S")}
    if args.port:
        target = Target(args.port, args.pid, 10.0, 10.0, 512)
        report = run(target)
    else:
        from loadtest import server

        svc = server.start(FRONT_DOOR_ENV)
        try:
            target = Target(
                svc.port,
                svc.process.pid,
                env["OMR_HEAD_TIMEOUT_S"],
                env["OMR_BODY_TIMEOUT_S"],
                int(FRONT_DOOR_ENV["OMR_MAX_CONNECTIONS"]),
            )
            report = run(target)
        finally:
            server.stop(svc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "hostile.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
