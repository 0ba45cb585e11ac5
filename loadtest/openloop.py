"""An open-loop HTTP/1.1 load client small enough not to measure itself on a 2-core machine.

`open_loop` sends requests when they are due whatever the earlier ones are doing, and latency counts from the
due time (no coordinated omission: a slow server cannot slow its own load down); `closed_loop` is N clients
each waiting for its answer. Requests are pre-built bytes on a keep-alive pool (`Client`). Used by
`loadtest.overload`, `loadtest.soak` and the reliability tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

KEEPALIVE_S = 2.0


@dataclass
class Shot:
    """One request: when it was due, when its answer was complete, and what came back."""

    due: float
    done: float
    status: int  # 0: connection-level failure
    retry_after: str | None = None
    sent: float = 0.0  # when a connection was free and the bytes went out (client-side queueing = sent - due)

    @property
    def latency(self) -> float:
        return self.done - self.due


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


class Client:
    """Keep-alive HTTP/1.1 connections to one host; `send` returns (status, headers, body)."""

    def __init__(self, url: str, max_connections: int = 256) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        #: (reader, writer, idle since); a connection idle for longer than KEEPALIVE_S is not reused, because the
        #: server may close it at any moment (uvicorn's keep-alive timeout is 5 s) and a request on it would fail
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._slots = asyncio.Semaphore(max_connections)

    @staticmethod
    def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def send(self, raw: bytes, on_sent: list[float] | None = None) -> tuple[int, dict[str, str], bytes]:
        async with self._slots:
            reader, writer = await self._connection()
            try:
                if on_sent is not None:
                    on_sent.append(time.monotonic())
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            except BaseException:
                writer.close()
                raise
            if headers.get("connection", "").lower() == "close":
                writer.close()
            else:
                self._idle.append((reader, writer, time.monotonic()))
            return status, headers, body

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < KEEPALIVE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _fire(client: Client, raw: bytes, due: float, shots: list[Shot]) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    sent: list[float] = []
    try:
        status, headers, _ = await client.send(raw, sent)
        shots.append(Shot(due, time.monotonic(), status, headers.get("retry-after"), sent[0]))
    except (OSError, asyncio.IncompleteReadError, ValueError):
        shots.append(Shot(due, time.monotonic(), 0, None, sent[0] if sent else due))


async def open_loop(client: Client, bodies: Sequence[bytes], rate: float, seconds: float) -> list[Shot]:
    """Requests due at a fixed rate for `seconds`, each sent when due whatever the earlier ones are doing."""
    shots: list[Shot] = []
    t0 = time.monotonic()
    n = max(1, int(rate * seconds))
    tasks = [asyncio.create_task(_fire(client, bodies[k % len(bodies)], t0 + k / rate, shots)) for k in range(n)]
    await asyncio.gather(*tasks)
    return shots


async def closed_loop(
    client: Client, bodies: Sequence[bytes], clients: int, seconds: float, backoff_s: float = 0.05
) -> list[Shot]:
    shots: list[Shot] = []
    stop = time.monotonic() + seconds

    async def user(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            await _fire(client, bodies[i % len(bodies)], time.monotonic(), shots)
            i += clients
            if shots[-1].status != 200:
                await asyncio.sleep(backoff_s)  # a refused client backs off, so refusals do not become the load

    await asyncio.gather(*(user(k) for k in range(clients)))
    return shots
