"""With a token set, the OpenAPI document and the docs pages are not open (issue 16), against a real
`python -m service` on 127.0.0.1: `/openapi.json` needs the token, `/docs` and `/redoc` (Swagger UI and ReDoc
load their scripts from a CDN) are off unless OMR_DOCS_UI is set, and then need the token too.
"""

from __future__ import annotations

from loadtest.rawhttp import exchange
from tests.reliability._hostile import MiB, hostile_service, watched

TOKEN = "hostile-docs-token-0123456789"


def _get(port: int, path: str, token: str | None = None) -> int | None:
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    return exchange(port, [b"GET %s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (path.encode(), auth)]).status


def test_guard_openapi_and_docs_with_a_token() -> None:
    with hostile_service({"OMR_AUTH_TOKEN": TOKEN}) as h, watched(h, max_rss_growth=32 * MiB):
        port = h.target.port
        assert _get(port, "/openapi.json") == 401
        assert _get(port, "/openapi.json", "wrong-token-0123456789") == 401
        assert _get(port, "/openapi.json", TOKEN) == 200
        for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            assert _get(port, page) in (401, 404), page
            assert _get(port, page, TOKEN) == 404, page  # off by default: no CDN-loaded page at all


def test_serve_docs_ui_only_when_asked_and_behind_the_token() -> None:
    with hostile_service({"OMR_AUTH_TOKEN": TOKEN, "OMR_DOCS_UI": "true"}) as h:
        port = h.target.port
        assert _get(port, "/docs") == 401 and _get(port, "/redoc") == 401
        assert _get(port, "/docs", TOKEN) == 200 and _get(port, "/redoc", TOKEN) == 200
