"""The probes of the hostile-client corpus, by family (docs/reliability.md, "hostile clients"), and what each may
get back: a 4xx, 408, 503 or a closed connection, never a 200 for a bomb, never a 5xx other than 503.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.hostile_payloads import V2, bubble_png, classify_json, other_formats, post, tiff_tile_bomb, v2_pixels
from loadtest.rawhttp import Answer, exchange, proc_fds, wait_for

REFUSED = frozenset({400, 401, 404, 405, 408, 413, 415, 422, 429, 431, 503, None})


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
