"""`/openapi.json` behind the token (when one is set), and `/docs` + `/redoc` only when `OMR_DOCS_UI` is on.

FastAPI's own routes for these answer anyone, and its Swagger UI and ReDoc pages load their scripts from a
CDN, so the app is built with them off (`create_app`) and these take their place. The UI pages stay a
development convenience: off by default, and behind the token too when one is configured (a browser then
needs a header-injecting proxy; docs/api.md has the document itself).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

from service.http.deps import require_auth
from service.http.errors import json_response

OPENAPI_URL = "/openapi.json"


def router(title: str, ui: bool) -> APIRouter:
    r = APIRouter(dependencies=[Depends(require_auth)], include_in_schema=False)

    @r.get(OPENAPI_URL)
    async def openapi(request: Request) -> Response:
        return json_response(request.app.openapi())

    if ui:

        @r.get("/docs")
        async def swagger() -> Response:
            return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{title} - Swagger UI")

        @r.get("/redoc")
        async def redoc() -> Response:
            return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{title} - ReDoc")

    return r
