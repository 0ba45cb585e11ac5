"""Parts of a sheet between the workers of one pod (`service.core.parts`): a Unix socket per worker.

Each worker listens on `peer-<index>.sock` in the pod's private scratch folder beside the shared block. A
worker with a big sheet and nothing else to do picks a READY worker whose published requests-in-flight word
is 0 (`PodState.active`), sends it the sheet's second half as one frame and decodes the first half itself;
the peer answers with the half's sheet statistics, native sizes and probabilities. Anything that goes wrong
on the way (peer restarted, draining, connection lost, deadline) returns None and the sender classifies the
half itself: a split can cost latency, never an answer.

Frame: `<II` (header bytes, payload bytes), an orjson header, a binary payload. Only processes of this pod
can reach the socket (the folder is the supervisor's `mkdtemp`, mode 0700).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.core.classifier import Classifier
from service.core.parts import Part, PartResult
from service.errors import ServiceError
from service.metrics import Metrics
from service.serve.pod import Phase, WorkerSlot
from service.settings import Settings

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
#: longest AF_UNIX socket path Linux takes (sun_path is 108 bytes with its NUL)
MAX_SOCKET_PATH = 107
_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def socket_path(slot: WorkerSlot, index: int) -> Path:
    return slot.pod.path.parent / f"peer-{index}.sock"


def _frame(header: dict[str, Any], *payload: bytes) -> list[bytes]:
    head = orjson.dumps(header)
    return [_FRAME.pack(len(head), sum(len(p) for p in payload)), head, *payload]


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head_len, body_len = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    return orjson.loads(await reader.readexactly(head_len)), await reader.readexactly(body_len)


def encode_part(part: Part) -> list[bytes]:
    items = [x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in part.images]
    header = {
        "model": part.model, "version": part.version, "ids": list(part.ids), "start": part.start,
        "base64": part.base64, "views": list(part.views), "lengths": [len(x) for x in items],
        "deadline": None if math.isinf(part.deadline) else part.deadline,
    }  # fmt: skip
    return _frame(header, b"".join(items))


def decode_part(header: dict[str, Any], payload: bytes) -> Part:
    images, at = [], 0
    for n in header["lengths"]:
        images.append(payload[at : at + n])
        at += n
    deadline = math.inf if header["deadline"] is None else float(header["deadline"])
    return Part(header["model"], header["version"], images, header["ids"], header["start"], header["base64"],
                tuple(header["views"]), deadline)  # fmt: skip


def encode_result(result: PartResult) -> list[bytes]:
    if result.errors:
        return _frame({"status": "invalid", "errors": result.errors})
    stats, sizes = result.stats.astype(np.float32), result.sizes.astype(np.int64)
    probs = result.probs.astype(np.float32)
    header = {"status": "ok", "stats": list(stats.shape), "probs": list(probs.shape)}
    return _frame(header, sizes.tobytes(), stats.tobytes(), probs.tobytes())  # int64 first: every array aligned


def decode_result(header: dict[str, Any], payload: bytes) -> PartResult | None:
    if header["status"] == "invalid":
        return PartResult(np.zeros((0, 0), np.float32), np.zeros((0, 2), np.int64), np.zeros((0, 0), np.float32),
                          header["errors"])  # fmt: skip
    if header["status"] != "ok":
        return None
    shape, pshape = tuple(header["stats"]), tuple(header["probs"])
    n_stats, n = int(np.prod(shape)), shape[0]
    sizes = np.frombuffer(payload, np.int64, n * 2).reshape(n, 2)
    stats = np.frombuffer(payload, np.float32, n_stats, offset=16 * n).reshape(shape)
    probs = np.frombuffer(payload, np.float32, int(np.prod(pshape)), offset=16 * n + 4 * n_stats).reshape(pshape)
    return PartResult(stats, sizes, probs)


class PeerServer:
    """This worker's end: classify other workers' parts with this worker's classifier."""

    def __init__(self, classifier: Classifier, metrics: Metrics, path: Path) -> None:
        self.classifier = classifier
        self.metrics = metrics
        self.path = path
        self._server: asyncio.Server | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a replaced worker's socket file
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                header, payload = await _read_frame(reader)
                self._busy += 1
                self._idle.clear()
                try:
                    reply = await self._answer(decode_part(header, payload))
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._idle.set()
                writer.writelines(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender closed the connection (or went away): nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, part: Part) -> list[bytes]:
        try:
            result = await self.classifier.classify_part(part)
        except ServiceError as exc:  # past its deadline, model gone, queue full: the sender does it itself
            return _frame({"status": "refused", "message": exc.message})
        self.metrics.peer_parts.inc()
        return encode_result(result)

    async def stop(self, timeout_s: float) -> None:
        """Stop listening, finish the parts in hand (bounded), then close the connections."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        for writer in list(self._writers):
            writer.close()
        self.path.unlink(missing_ok=True)


class PodPeers:
    """This worker's view of the others, as `service.core.parts.Offload`: who is idle, and a link to it."""

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self._idle_conns: dict[int, list[_Conn]] = {}

    def set_active(self, requests: int) -> None:
        self.slot.pod.set_active(self.slot.index, requests)

    def peer(self) -> _Link | None:
        pod, me = self.slot.pod, self.slot.index
        if pod.draining:
            return None
        for step in range(1, pod.workers):  # the next workers first: two splitting workers rarely pick alike
            i = (me + step) % pod.workers
            if pod.phase(i) is Phase.READY and pod.active(i) == 0:
                return _Link(self, i)
        return None

    def send(self, index: int, part: Part) -> Awaitable[PartResult | None]:
        """Write the part to worker `index` now if a connection is open (else once connected)."""
        idle = self._idle_conns.setdefault(index, [])
        while idle and idle[-1][1].is_closing():
            idle.pop()
        frame = encode_part(part)
        conn = idle.pop() if idle else None
        if conn is not None:
            conn[1].writelines(frame)  # the peer starts on its half while this worker decodes its own
        return self._answer(index, conn, frame, part.deadline)

    async def _answer(self, index: int, conn: _Conn | None, frame: list[bytes], deadline: float) -> PartResult | None:
        try:
            async with asyncio.timeout(deadline - time.monotonic() if math.isfinite(deadline) else None):
                if conn is None:
                    conn = await asyncio.open_unix_connection(str(socket_path(self.slot, index)))
                    conn[1].writelines(frame)
                await conn[1].drain()
                header, payload = await _read_frame(conn[0])
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("worker %d did not answer a part: %r", index, exc)
            if conn is not None:
                conn[1].close()
            return None
        except BaseException:  # cancelled mid-frame: the connection's state is unknown, never reuse it
            if conn is not None:
                conn[1].close()
            raise
        self._idle_conns[index].append(conn)
        return decode_result(header, payload)

    def close(self) -> None:
        for conns in self._idle_conns.values():
            for _reader, writer in conns:
                writer.close()
        self._idle_conns.clear()


class _Link:
    """One peer worker (`service.core.parts.Peer`)."""

    def __init__(self, peers: PodPeers, index: int) -> None:
        self.peers = peers
        self.index = index

    def send(self, part: Part) -> Awaitable[PartResult | None]:
        return self.peers.send(self.index, part)


@dataclass(frozen=True)
class Peers:
    """This worker's two ends, started together and stopped together."""

    server: PeerServer
    client: PodPeers

    async def stop(self, timeout_s: float) -> None:
        await self.server.stop(timeout_s)
        self.client.close()


async def start_peers(classifier: Classifier, metrics: Metrics, slot: WorkerSlot, settings: Settings) -> Peers | None:
    """Listen for other workers' parts and let `classifier` send its own (`classifier.offload`); None when sheets
    are not split: the setting is off, the pod has one worker, or the socket path is too long for AF_UNIX."""
    if not settings.split_sheets or slot.pod.workers < 2:
        return None
    path = socket_path(slot, slot.index)
    if len(str(path)) > MAX_SOCKET_PATH:  # a TMPDIR too deep
        log.warning("not splitting sheets: socket path %s is longer than %d bytes", path, MAX_SOCKET_PATH)
        return None
    peers = Peers(PeerServer(classifier, metrics, path), PodPeers(slot))
    await peers.server.start()
    classifier.offload = peers.client
    return peers
