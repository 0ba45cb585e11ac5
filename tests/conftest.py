"""Shared fixtures: synthetic crops encoded as real images, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

REPO = Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = REPO / "models" / "repository"


def encode(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok, ext
    return buf.tobytes()


def random_crops(n: int, seed: int = 0, min_side: int = 12, max_side: int = 64) -> list[np.ndarray]:
    """Bubble-ish grayscale crops of random sizes: a light background with a random dark disc."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        img = rng.integers(180, 256, size=(h, w), dtype=np.uint8)
        r = max(2, min(h, w) // 3)
        cv2.circle(img, (w // 2, h // 2), r, int(rng.integers(0, 200)), int(rng.choice([-1, 1, 2])))
        crops.append(img)
    return crops


@pytest.fixture(scope="session")
def make_crops() -> Callable[..., list[np.ndarray]]:
    """`make_crops(n, seed=0, min_side=12, max_side=64)` -> random grayscale crops."""
    return random_crops


@pytest.fixture(scope="session")
def encode_image() -> Callable[..., bytes]:
    """`encode_image(img, ".png")` -> encoded image bytes (cv2.imencode)."""
    return encode


@pytest.fixture(scope="session")
def b64_crops() -> Callable[..., list[dict[str, str]]]:
    """`b64_crops(images, ext=".png")` -> the `crops` list of a /classify JSON body (ids q0, q1, ...)."""

    def build(images: list[np.ndarray], ext: str = ".png") -> list[dict[str, str]]:
        return [{"id": f"q{i}", "image": base64.b64encode(encode(im, ext)).decode()} for i, im in enumerate(images)]

    return build


@contextlib.contextmanager
def serve(app: object, timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> Iterator[str]:
    """Run `app` on a real uvicorn server on 127.0.0.1 (free port) in a thread; yield its base URL once ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert thread.is_alive(), "server thread died during start-up"
            try:
                if httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()


@pytest.fixture(scope="session")
def live_server() -> Callable[[object], contextlib.AbstractContextManager[str]]:
    """`with live_server(create_app(settings)) as url:` - a real uvicorn on 127.0.0.1."""
    return serve
