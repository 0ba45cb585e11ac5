"""Shared helpers for the reliability tests: a real uvicorn on 127.0.0.1 (in a thread, or `python -m service` in a
subprocess), real crops, and a fault-injecting ONNX Runtime session factory.

Nothing here patches the service: faults go in through `create_app(settings, session_factory=...)`, the
factory wraps the real `ort.InferenceSession` and only misbehaves on a marked input.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import uvicorn

from service.app import create_app
from service.core.modelconfig import ModelConfig
from service.core.preprocess import normalize
from service.core.runtime import Session, create_session
from service.settings import Settings
from service.state import AppState

HOST = "127.0.0.1"

#: pixel values that mark a crop for fault injection (a whole crop of one value, nothing real looks like it)
FAIL_VALUE = 7
SLOW_VALUE = 9


def png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray)
    assert ok
    return buf.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bubble(side: int = 32, seed: int = 0) -> np.ndarray:
    """A plausible uint8 bubble crop: a dark ring on paper, with a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side), 235, np.uint8)
    cv2.circle(img, (side // 2, side // 2), max(2, side // 3), 40, max(1, side // 16))
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    return cv2.subtract(img, noise)


def json_crops(n: int, side: int = 32, prefix: str = "c") -> dict[str, Any]:
    crop = b64(png(bubble(side)))
    return {"crops": [{"id": f"{prefix}{i}", "image": crop} for i in range(n)]}


@dataclass
class Hold:
    """How a batch holding a SLOW_VALUE crop is held: `entered` is set when such a batch reaches the model; it
    then waits until `release` is set (at most `max_s`, so a test that fails cannot hang the server)."""

    max_s: float = 60.0
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def arm(self) -> None:
        """Hold the next slow batch (again)."""
        self.entered.clear()
        self.release.clear()

    def wait_entered(self, timeout_s: float = 30.0) -> None:
        assert self.entered.wait(timeout_s), f"no slow batch reached the model within {timeout_s:g}s"


@dataclass
class FaultySession:
    """The real session, except: a batch holding a crop of FAIL_VALUE raises; one with SLOW_VALUE is held first."""

    inner: Session
    marks: dict[str, float]
    hold: Hold
    calls: list[int] = field(default_factory=list)

    def _has(self, x: np.ndarray, value: float) -> bool:
        flat = x.reshape(x.shape[0], -1)
        return bool(np.any(np.all(flat == np.float32(value), axis=1)))

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]:
        (x,) = input_feed.values()
        self.calls.append(int(x.shape[0]))
        if self._has(x, self.marks["fail"]):
            raise RuntimeError("injected fault: this batch holds a crop marked to fail")
        if self._has(x, self.marks["slow"]):
            self.hold.entered.set()
            self.hold.release.wait(self.hold.max_s)
        return self.inner.run(output_names, input_feed)

    def get_providers(self) -> list[str]:
        return self.inner.get_providers()

    def __getattr__(self, name: str) -> Any:  # get_inputs, get_modelmeta, ...: the real session answers
        return getattr(self.inner, name)


@dataclass
class FaultInjector:
    """A session factory (pass it to `create_app`) that wraps each real session in a FaultySession.

    Slow batches are held until `hold.release` is set; `release=True` lets them through at once."""

    release: bool = False
    hold: Hold = field(default_factory=Hold)
    sessions: list[FaultySession] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.release:
            self.hold.release.set()

    def __call__(self, path: Path, config: ModelConfig, settings: Settings) -> Session:
        def mark(v: int) -> float:
            return float(normalize(np.full((1, 1, 1), v, np.uint8), config.preprocess, config.input.dtype).flat[0])

        session = FaultySession(
            create_session(path, config, settings), {"fail": mark(FAIL_VALUE), "slow": mark(SLOW_VALUE)}, self.hold
        )
        self.sessions.append(session)
        return session


@dataclass
class LiveServer:
    """A real uvicorn serving `create_app(...)` on 127.0.0.1 from a background thread of this process."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    sock: socket.socket

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def state(self) -> AppState:
        state: AppState = self.server.config.app.state.omr
        return state

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30.0), **kw)


@contextlib.contextmanager
def live_server(
    settings: Settings | None = None, session_factory: Any = None, ready_s: float = 120.0
) -> Iterator[LiveServer]:
    # bound here and handed to uvicorn: no window in which another process can take the port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    port = int(sock.getsockname()[1])
    settings = settings or Settings()
    app = create_app(settings, session_factory) if session_factory else create_app(settings)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    live = LiveServer(server, thread, port, sock)
    deadline = time.monotonic() + ready_s
    try:
        with httpx.Client(base_url=live.url, timeout=5.0) as c:
            while True:
                if not thread.is_alive():
                    raise RuntimeError("uvicorn thread died during start-up")
                with contextlib.suppress(httpx.TransportError):
                    if c.get("/readyz", headers=_auth_header(settings)).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("server not ready")
                time.sleep(0.05)  # polls readiness (observable state), not a wait for an amount of time
        yield live
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _auth_header(settings: Settings) -> dict[str, str]:
    token = settings.bearer_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def assert_json_error(r: httpx.Response, status: int | tuple[int, ...]) -> dict[str, Any]:
    """A 4xx/5xx that is a JSON object with a string `error` and `code`, and nothing that looks like a trace."""
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, f"status {r.status_code} not in {wanted}: {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str), body
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]
    return body


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """Stop a helper process the test started (Prometheus): SIGTERM, then SIGKILL if it overstays."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
