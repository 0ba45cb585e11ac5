"""Shared fixtures: synthetic crops encoded as real images, a real uvicorn server on 127.0.0.1, bounded waits on
observable state, and the test session's isolation.

Isolation (every test, every subprocess a test starts):
- `OMR_*` environment variables are removed when the session starts, so a stray `OMR_AUTH_TOKEN` in a
  developer's shell changes nothing (subprocesses inherit the cleaned environment); the session sets only its
  own `OMR_GRPC_PORT=0` (gRPC off unless a test asks for it);
- the session runs in an empty temporary working directory, so `Settings()` never reads a `.env` lying in the
  checkout (pydantic-settings reads `.env` relative to the working directory). Use absolute paths (`REPO / ...`).

External data and tools (see `pytest --help`, "omr" options):
- the real-dev labelled crops: `--real-dev PATH` or `OMR_REAL_DEV=PATH` (the labels.csv), default
  `<checkout>/../shared/data/real-dev/labels.csv`; tests take them through the `real_dev` fixture;
- system tools: `@pytest.mark.needs_tool("wrk", "promtool")`.
Where they are missing, those tests skip with the reason - unless `CI=true`, where a missing tool or missing
real-dev data FAILS the test: CI must not stay green by running less.

Order: the default run is in file order. `pytest --random-order` (pytest-random-order, dev extra) shuffles
modules and the tests inside each; `--random-order-bucket=global` shuffles across modules; the seed is printed
in the header, `--random-order-seed=N` replays it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

REPO = Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = REPO / "models" / "repository"
#: where the real-dev set lies beside a checkout of this repository (as the Makefile's REAL_LABELS)
DEFAULT_REAL_DEV = REPO.parent / "shared" / "data" / "real-dev" / "labels.csv"
#: read before `OMR_*` is cleared: the one OMR_ variable meant for the test session itself
_REAL_DEV_ENV = os.environ.get("OMR_REAL_DEV")


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, ...): missing data or tools fail instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip with `reason`; under CI=true fail with it (a green CI must have run the test)."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("omr", "OMR test data")
    group.addoption(
        "--real-dev",
        type=Path,
        default=Path(_REAL_DEV_ENV) if _REAL_DEV_ENV else DEFAULT_REAL_DEV,
        help="labels.csv of the real-dev crops (env OMR_REAL_DEV; default <checkout>/../shared/data/real-dev/"
        "labels.csv). Missing: those tests skip, or fail with CI=true.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tool(*names): system tools on PATH; skip without (fail with CI=true)")
    for name in [k for k in os.environ if k.startswith("OMR_")]:
        del os.environ[name]  # subprocesses inherit this environment too
    # gRPC off unless a test asks for it: its default port (8001) is shared with SO_REUSEPORT, so apps of
    # different tests would otherwise all listen on one port and could answer each other's calls
    os.environ["OMR_GRPC_PORT"] = "0"


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_tool"):
        missing = [t for t in mark.args if shutil.which(t) is None]
        if missing:
            hint = mark.kwargs.get("hint", "make system-deps")
            skip_or_fail(f"{', '.join(missing)} not on PATH ({hint})")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run the session in an empty folder: `Settings()` must not read a `.env` from the checkout."""
    before = Path.cwd()
    cwd = tmp_path_factory.mktemp("cwd")
    os.chdir(cwd)
    try:
        yield cwd
    finally:
        os.chdir(before)


@pytest.fixture(scope="session")
def real_dev(pytestconfig: pytest.Config) -> Path:
    """The real-dev labels.csv (`--real-dev` / OMR_REAL_DEV); skips without it (fails with CI=true)."""
    path: Path = pytestconfig.getoption("real_dev")
    if not path.is_file():
        skip_or_fail(f"real-dev labels not found at {path} (pass --real-dev PATH or set OMR_REAL_DEV)")
    return path.resolve()


def wait_until(predicate: Callable[[], object], timeout_s: float = 20.0, what: str = "condition") -> None:
    """Block until `predicate()` is truthy; AssertionError naming `what` after `timeout_s`.

    For observing another thread's or process's progress where no event can be handed over (a gauge, a
    counter, a socket): it polls, but only ever waits for a state, never for an amount of time.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        time.sleep(0.005)


async def await_until(
    predicate: Callable[[], Awaitable[object]], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    """`wait_until` for a coroutine predicate (e.g. one that reads /metrics with an async client)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture(scope="session")
def until() -> Callable[..., None]:
    """`until(predicate, timeout_s=20, what="...")`: a bounded wait on observable state (see `wait_until`)."""
    return wait_until


@pytest.fixture(scope="session")
def async_until() -> Callable[..., Awaitable[None]]:
    """`await async_until(async_predicate, timeout_s=20, what="...")`: `until` for coroutine predicates."""
    return await_until


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
