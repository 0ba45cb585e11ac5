"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http.deps import State, require_auth_health, require_auth_metrics
from service.http.errors import json_response
from service.http.schemas import error_responses

health = APIRouter(dependencies=[Depends(require_auth_health)], tags=["health"], responses=error_responses(401, 503))
metrics = APIRouter(dependencies=[Depends(require_auth_metrics)], tags=["metrics"], responses=error_responses(401))


@health.get("/healthz")
async def healthz() -> Response:
    """Live: the process serves HTTP (models may still be loading)."""
    return json_response({"status": "live"})


@health.get("/readyz")
async def readyz(state: State) -> Response:
    """Ready: every model loaded AND warmed on every batch bucket, required providers active, not draining."""
    models = [
        {"name": m.name, "version": m.version, "provider": m.provider, "file": m.path.name}
        for m in state.registry.all()
    ]
    reasons = state.not_ready_reasons()
    if reasons:
        return json_response(
            {"status": "not ready", "error": "; ".join(reasons), "code": "unavailable", "models": models},
            503,
            {"Retry-After": "1"},
        )
    return json_response({"status": "ready", "models": models})


@metrics.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
