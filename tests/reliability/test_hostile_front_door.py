"""Hostile clients at the HTTP front door (issue 16), each against a real `python -m service` on 127.0.0.1:
header size and count, heads that never finish, bodies that stall, the connection cap and the buffered-bytes
budget, HTTP conformance, and what the logs and the 413 path do. Each test checks the status, the time to
answer (bounds are generous; measured figures are in docs/reliability.md), the server's RSS and fds, and that
a normal client (the canary) was served meanwhile.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from loadtest.hostile_payloads import bubble_png, classify_json, post
from loadtest.rawhttp import exchange
from tests.reliability._hostile import Hostile, MiB, hostile_service, statuses, watched


@pytest.fixture(scope="module")
def h() -> Iterator[Hostile]:
    with hostile_service() as hostile:
        yield hostile


def test_refuse_huge_and_countless_headers_431(h: Hostile) -> None:
    """A 100 MB header value and 1,000,000 headers: 431 as soon as the head passes its limit, parsed no further."""
    with watched(h, max_rss_growth=64 * MiB):
        for name in ("header-100MB", "headers-1M"):
            _, answers = h.probe(name)
            assert statuses(answers) == {431}, (name, answers[0].head[:200])
            assert all(a.seconds < 5 for a in answers), name
            assert b'"code":"header_too_large"' in answers[0].body or b"too_many_headers" in answers[0].body


def test_time_out_heads_that_never_finish_408(h: Hostile) -> None:
    """Half-sent heads get 408 after OMR_HEAD_TIMEOUT_S; connections that send nothing are closed, not held."""
    limit = h.target.head_timeout_s
    with watched(h, max_rss_growth=64 * MiB):
        _, answers = h.probe("half-sent-head")
        assert statuses(answers) == {408}
        assert all(limit * 0.9 <= a.seconds < limit + 5 for a in answers), [a.seconds for a in answers]
        _, idle = h.probe("idle-connections")  # 190 connections; the worker's cap is 128
        assert statuses(idle) <= {None, 503}, statuses(idle)
        assert all(a.seconds < limit + 5 for a in idle)


def test_time_out_stalled_bodies_408(h: Hostile) -> None:
    """A withheld last byte, a short Content-Length, an unterminated chunked body: 408 after OMR_BODY_TIMEOUT_S."""
    limit = h.target.body_timeout_s
    with watched(h, max_rss_growth=64 * MiB):
        for name in ("withheld-last-byte", "short-content-length", "unterminated-chunked"):
            _, answers = h.probe(name)
            assert statuses(answers) == {408}, (name, [a.head[:80] for a in answers])
            assert all(limit * 0.9 <= a.seconds < limit + 5 for a in answers), (name, [a.seconds for a in answers])


def test_budget_bodies_held_across_connections_503(h: Hostile) -> None:
    """6 clients declaring 30 MB each and stalling before the last byte, with a 64 MiB budget: the ones beyond the
    budget get 503 + Retry-After at once, the others 408 when their time is up; RSS grows by about the budget."""
    with watched(h, max_rss_growth=64 * MiB + 96 * MiB):
        _, answers = h.probe("buffer-budget")
    refused = [a for a in answers if a.status == 503]
    assert statuses(answers) <= {408, 503} and len(refused) >= 4, [a.status for a in answers]
    assert all(b"retry-after: 1" in a.head.lower() for a in refused)
    assert all(a.seconds < h.target.body_timeout_s for a in refused)  # at once, not after the others' timeout


def test_cap_connections_per_worker_503(h: Hostile) -> None:
    """OMR_MAX_CONNECTIONS open connections: the next ones get 503 + Retry-After and are closed."""
    with watched(h, max_rss_growth=64 * MiB):
        _, answers = h.probe("connection-cap")
    assert statuses(answers) == {503}, [a.status for a in answers]
    assert all(b"retry-after: 1" in a.head.lower() and a.seconds < 5 for a in answers)


def test_conform_to_rfc9112_host_and_request_line(h: Hostile) -> None:
    """No Host or two Host headers: 400 (RFC 9112 3.2); an HTTP/0.9-style line is never served; X-Crop-Shape takes
    strict digits only (1_0 is not 10). HTTP/1.0 without Host is still served."""
    with watched(h, max_rss_growth=64 * MiB):
        for name in ("no-host", "two-hosts", "crop-shape-1_0"):
            _, answers = h.probe(name)
            assert statuses(answers) == {400}, (name, answers[0].head[:100], answers[0].body[:200])
        _, answers = h.probe("http-0.9")
        assert statuses(answers) <= {400, 408, None} and b"200 OK" not in answers[0].head
        ok = exchange(h.target.port, [b"GET /healthz HTTP/1.0\r\n\r\n"])
        assert ok.status == 200, ok.head


def test_log_rejections_rate_limited_and_answer_413_before_reset(h: Hostile) -> None:
    """300 malformed requests write at most a few warnings (one per reason per 10 s); a client that writes its whole
    40 MB body before reading sees the 413, not a reset."""
    before = len(re.findall("refused a request", h.log()))
    with watched(h, max_rss_growth=64 * MiB):
        for _ in range(300):
            assert exchange(h.target.port, [b"GET /healthz HTTP/1.1\r\n\r\n"]).status == 400
        answer = exchange(h.target.port, [post("/classify", bytes(40 << 20))])
    assert answer.status == 413 and answer.error is None, (answer.status, answer.error)
    assert b"connection: close" in answer.head.lower()
    written = len(re.findall("refused a request", h.log())) - before
    assert written <= 3, written  # 0 when an earlier test's bad_host warning still holds the 10 s window
    assert "refused a request (400 bad_host)" in h.log()
    metrics = exchange(h.target.port, [b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n"]).body.decode()
    counted = re.search(r'omr_rejections_total\{reason="bad_host"\} ([0-9.]+)', metrics)
    assert counted and float(counted.group(1)) >= 300, metrics[-2000:]  # every refusal counted, if not logged
    assert "Traceback" not in h.log()


def test_cover_the_body_read_with_the_request_deadline_408() -> None:
    """With a 1 s request deadline and a 30 s body timeout, a trickled body gets 408 `request_timeout` from the
    route at the deadline (the deadline covers reading), and the connection closes."""
    env = {"OMR_REQUEST_TIMEOUT_S": "1", "OMR_BODY_TIMEOUT_S": "30"}
    with hostile_service(env) as slow, watched(slow, max_rss_growth=64 * MiB):
        answer = exchange(slow.target.port, [post("/classify", bytes(1000))[:-10]], read_timeout=20)
        assert answer.status == 408 and b'"code":"request_timeout"' in answer.body, (answer.status, answer.body)
        assert 0.9 <= answer.seconds < 10, answer.seconds
        assert b"connection: close" in answer.head.lower()


def test_keep_smuggling_refused_and_pipelining_in_order(h: Hostile) -> None:
    """What held up before the front door must still: CL+TE, two Content-Lengths and obs-fold are 400 and closed;
    three pipelined requests (GET, POST, GET) are answered in order on one connection."""
    with watched(h, max_rss_growth=64 * MiB):
        for shape in (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                      b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", b"X-A: a\r\n b\r\n\r\n"):  # fmt: skip
            answer = exchange(h.target.port, [b"POST /classify HTTP/1.1\r\nHost: h\r\n" + shape])
            assert answer.status == 400 and b"connection: close" in answer.head.lower(), (shape, answer.head)
        pipelined = [b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", post("/classify", classify_json([bubble_png()])),
                     b"GET /readyz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"]  # fmt: skip
        with socket.create_connection(("127.0.0.1", h.target.port), timeout=20) as sock:
            sock.sendall(b"".join(pipelined))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3, data[:500]
    assert data.index(b'{"status":"live"}') < data.index(b'"results"') < data.index(b'"status":"ready"'), data[:500]
