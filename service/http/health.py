"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.http.deps import State, require_auth_health, require_auth_metrics
from service.http.errors import json_response

health = APIRouter(dependencies=[Depends(require_auth_health)], tags=["health"])
metrics = APIRouter(dependencies=[Depends(require_auth_metrics)], tags=["metrics"])


@health.get("/healthz")
async def healthz() -> Response:
    """Live: the process serves HTTP (models may still be loading)."""
    return json_response({"status": "live"})


@health.get("/readyz")
async def readyz(state: State) -> Response:
    """Ready: every model loaded AND warmed on every batch bucket, required providers active, not draining."""
    models = [{"name": m.name, "version": m.version, "provider": m.provider} for m in state.registry.all()]
    reasons = state.not_ready_reasons()
    if reasons:
        return json_response(
            {"status": "not ready", "error": "; ".join(reasons), "code": "unavailable", "models": models},
            503,
            {"Retry-After": "1"},
        )
    return json_response({"status": "ready", "models": models})


@metrics.get("/metrics")
async def prometheus(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
