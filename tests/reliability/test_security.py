"""Security against a real uvicorn on 127.0.0.1: bearer-token auth on/off, 401 without detail, health/metrics
configurable, limits enforced before decoding, no stack traces in any answer.

The token comparison itself is `hmac.compare_digest` (constant time). A timing test on a shared 2-core machine
would be noise, so constant time is a code-review item (docs/reliability.md); what the tests pin is behaviour:
every near miss, odd byte and odd spacing is a 401 (never a 500), the exact token is accepted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import ValidationError

from loadtest import server as service_process
from service.settings import Settings

from ._support import FAIL_VALUE, FaultInjector, LiveServer, assert_json_error, json_crops, live_server

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def locked() -> Iterator[LiveServer]:
    settings = Settings(auth_token=TOKEN, max_body_bytes=1024 * 1024, max_crops_per_request=100, log_level="critical")
    with live_server(settings) as live:
        yield live


WRONG = {
    "no-header": {},
    "wrong-token": bearer("s3cret-token-0123456789abcdeX"),
    "prefix-of-token": bearer(TOKEN[:-1]),
    "token-plus-one": bearer(TOKEN + "x"),
    "basic-scheme": {"Authorization": "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode()},
    "no-scheme": {"Authorization": TOKEN},
    "bearer-only": {"Authorization": "Bearer"},
    "uppercased-token": bearer(TOKEN.upper()),
}


@pytest.mark.parametrize("headers", WRONG.values(), ids=list(WRONG))
def test_reject_classify_without_valid_token(locked: LiveServer, headers: dict[str, str]) -> None:
    with locked.client() as c:
        r = c.post("/classify", json=json_crops(2), headers=headers)
        body = assert_json_error(r, 401)
        assert body == {"error": "unauthorized", "code": "unauthorized"}  # no hint of what was wrong
        assert r.headers["www-authenticate"] == "Bearer"
        v2 = c.post("/v2/models/omr-bubble/infer", json={"inputs": []}, headers=headers)
        assert_json_error(v2, 401)


def test_accept_classify_with_token(locked: LiveServer) -> None:
    with locked.client() as c:
        r = c.post("/classify", json=json_crops(2), headers=bearer())
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        r = c.post("/classify", json=json_crops(2), headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200  # the scheme is case-insensitive (RFC 7235)


def test_health_and_metrics_open_by_default(locked: LiveServer) -> None:
    with locked.client() as c:
        for path in ("/healthz", "/readyz", "/v2/health/ready", "/metrics"):
            assert c.get(path).status_code == 200, path


def test_auth_before_body_is_read(locked: LiveServer) -> None:
    """An unauthenticated 5 MB body gets 401 (not 413, not 422): nothing is parsed for a stranger."""
    with locked.client() as c:
        r = c.post("/classify", content=b"x" * (5 * 2**20), headers={"Content-Type": "application/json"})
        assert_json_error(r, 401)


def test_limits_checked_before_decoding(locked: LiveServer) -> None:
    """101 undecodable crops -> 413 for the count, not 422 for the crops: nothing was decoded. A body over the
    limit -> 413 from Content-Length alone. Neither reaches preprocessing (its histogram does not move)."""
    prep = locked.state.metrics.preprocess_seconds.labels("omr-bubble")
    before = prep._sum.get()
    with locked.client() as c:
        crops = {"crops": [{"image": "!!not base64!!"}] * 101}
        r = c.post("/classify", json=crops, headers=bearer())
        assert assert_json_error(r, 413)["code"] == "payload_too_large"
        json_headers = {**bearer(), "Content-Type": "application/json"}
        r = c.post("/classify", content=b"{" + b" " * (2 * 2**20) + b"}", headers=json_headers)
        assert "limit" in assert_json_error(r, 413)["error"]
        r = c.post("/classify", content=b"\0" * 64, headers={**bearer(), "Content-Type": "application/octet-stream",
                                                              "X-Crop-Shape": "101,8,8"})  # fmt: skip
        assert_json_error(r, 413)
    assert prep._sum.get() == before
    text = httpx.get(f"{locked.url}/metrics").text
    assert 'omr_rejections_total{reason="too_many_crops"}' in text
    assert 'omr_rejections_total{reason="body_too_large"}' in text


def test_open_service_needs_no_token() -> None:
    with live_server(Settings(log_level="critical")) as live, live.client() as c:
        assert c.post("/classify", json=json_crops(1)).status_code == 200
        assert c.post("/classify", json=json_crops(1), headers=bearer("anything-at-all-here")).status_code == 200


def test_token_file_and_guarded_health_metrics(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")  # k8s secrets often end in a newline
    settings = Settings(auth_token_file=secret, auth_health=True, auth_metrics=True, log_level="critical")
    with live_server(settings) as live, live.client() as c:
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
            assert_json_error(c.get(path), 401)
            assert c.get(path, headers=bearer()).status_code == 200, path
        assert c.post("/classify", json=json_crops(1), headers=bearer()).status_code == 200
        assert_json_error(c.post("/classify", json=json_crops(1)), 401)


def test_refuse_unsafe_token_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(auth_token="short")
    with pytest.raises(ValidationError, match="not both"):
        Settings(auth_token=TOKEN, auth_token_file=tmp_path / "t")
    assert TOKEN not in repr(Settings(auth_token=TOKEN))  # SecretStr: never logged by accident


def test_no_stack_trace_in_server_errors() -> None:
    injector = FaultInjector(release=True)
    with live_server(Settings(log_level="critical"), injector) as live, live.client() as c:
        body = bytes([FAIL_VALUE]) * (32 * 32)
        r = c.post("/classify", content=body, headers={"Content-Type": "application/octet-stream",
                                                        "X-Crop-Shape": "1,32,32"})  # fmt: skip
        err = assert_json_error(r, 500)
        text = orjson.dumps(err).decode()
        for leak in ("Traceback", ".py", "injected", "/work", "site-packages", "line "):
            assert leak not in text, f"{leak!r} leaked: {text}"


ODD_HEADERS = {
    # bytes a client (or an attacker) can put in the header: a str compare_digest would raise on non-ASCII
    "non-ascii-token": b"Bearer " + TOKEN[:-1].encode() + "\u00e9".encode(),
    "latin1-token": b"Bearer " + TOKEN.encode() + b"\xff",
    "token-of-other-length": b"Bearer " + TOKEN.encode() * 3,
    "two-tokens": b"Bearer " + TOKEN.encode() + b" " + TOKEN.encode(),
    "tab-separated": b"Bearer\t" + TOKEN.encode(),
}


@pytest.mark.parametrize("value", ODD_HEADERS.values(), ids=list(ODD_HEADERS))
def test_reject_odd_authorization_bytes_with_401(locked: LiveServer, value: bytes) -> None:
    with locked.client() as c:
        r = c.post("/classify", json=json_crops(1), headers=[(b"Authorization", value)])
        assert assert_json_error(r, 401) == {"error": "unauthorized", "code": "unauthorized"}


def test_accept_exact_token_with_any_scheme_case(locked: LiveServer) -> None:
    with locked.client() as c:
        for value in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}"):
            assert c.post("/classify", json=json_crops(1), headers={"Authorization": value}).status_code == 200, value


def test_container_runs_non_root() -> None:
    """Every runtime stage of the Dockerfile (stages not named *-build) ends with a non-root USER."""
    dockerfile = REPO / "Dockerfile"
    assert dockerfile.is_file(), "the repository ships a Dockerfile"
    stages: dict[str, list[str]] = {}
    current = None
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            current = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else f"stage{len(stages)}"
            stages[current] = []
        elif words and words[0].upper() == "USER" and current is not None:
            stages[current].append(words[1])
    runtime = {name: users for name, users in stages.items() if not name.endswith("build")}
    assert runtime, "no runtime stage found"
    for name, users in runtime.items():
        assert users, f"stage {name} sets no USER: it would run as root"
        assert users[-1].split(":")[0] not in ("root", "0"), f"stage {name} runs as {users[-1]}"


def test_token_from_environment_in_real_process(tmp_path: Path) -> None:
    """`OMR_AUTH_TOKEN` in the environment of `python -m service` (how a k8s Secret env var arrives)."""
    with service_process.running({"OMR_AUTH_TOKEN": TOKEN, "OMR_LOG_LEVEL": "warning"}, tmp_path / "log") as svc:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            assert_json_error(c.post("/classify", json=json_crops(1)), 401)
            assert c.post("/classify", json=json_crops(1), headers=bearer()).status_code == 200
            assert c.get("/readyz").status_code == 200
        assert TOKEN not in svc.log_tail(100_000)
