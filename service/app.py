"""The app factory: `create_app(settings)` -> a FastAPI app whose lifespan loads, verifies and warms models.

Loading (file checks + sessions) happens at start-up and fails it loudly; warm-up (every batch bucket) runs in
a thread afterwards, so `/healthz` answers while `/readyz` waits for it. On shutdown the batchers drain
(bounded by `drain_timeout_s`) before the thread pools stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.core.classifier import Classifier
from service.core.registry import Registry
from service.core.runtime import SessionFactory, create_session
from service.grpc import server as grpc_server
from service.http import classify, docs, errors, fastpath, health, limits, middleware, v2
from service.metrics import Metrics
from service.serve.peers import start_peers
from service.serve.pod import WorkerSlot
from service.settings import Settings
from service.state import AppState

log = logging.getLogger(__name__)


def _build_state(settings: Settings, session_factory: SessionFactory) -> AppState:
    metrics = Metrics()
    inference_pool = ThreadPoolExecutor(settings.max_batches_in_flight, thread_name_prefix="omr-infer")
    preprocess_pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="omr-prep")
    registry = Registry.load(settings, session_factory, inference_pool, metrics)
    classifier = Classifier(registry, settings, metrics, preprocess_pool)
    return AppState(
        settings=settings,
        metrics=metrics,
        registry=registry,
        classifier=classifier,
        preprocess_pool=preprocess_pool,
        inference_pool=inference_pool,
        token=settings.bearer_token(),
    )


def create_app(
    settings: Settings | None = None, session_factory: SessionFactory = create_session, pod: WorkerSlot | None = None
) -> ServiceApp:
    """Build the service. `session_factory` lets a test wrap the real ONNX Runtime session (fault injection);
    `pod`: this process is one worker of several (`service.serve`), readiness/admission/metrics are the pod's."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _build_state(settings, session_factory)
        app.state.omr = state
        peers = None
        if pod is not None:
            state.join_pod(pod)
            peers = await start_peers(state.classifier, state.metrics, pod, settings)  # None: no sheet splitting
        # gRPC (Open Inference Protocol) beside REST, over the same state; bound first so a taken port fails start-up
        grpc = await grpc_server.start(state) if settings.grpc_port else None
        if grpc is not None:
            state.on_drain.append(lambda: grpc.stop_later(settings.shutdown_delay_s, settings.drain_timeout_s))
        for served in state.registry.all():
            served.batcher.start()
        warm = asyncio.get_running_loop().run_in_executor(state.inference_pool, state.warm)
        try:
            yield
        finally:
            state.start_draining()
            if grpc is not None:  # refuse new calls, finish those in flight (the batchers still run)
                await grpc.stop(settings.drain_timeout_s)
            if peers is not None:  # finish the other workers' parts in hand (new ones go elsewhere or stay home)
                await peers.stop(settings.drain_timeout_s)
            await asyncio.gather(warm, return_exceptions=True)
            for served in state.registry.all():
                if not await served.batcher.drain(settings.drain_timeout_s):
                    log.warning("drain timed out for %s/%s", served.name, served.version)
                await served.batcher.stop()
            state.inference_pool.shutdown(wait=True, cancel_futures=True)
            state.preprocess_pool.shutdown(wait=True, cancel_futures=True)

    app = ServiceApp(
        title="OMR bubble classification",
        version=__version__,
        description="Classifies optical-mark-recognition bubble crops with an ONNX model (see docs/api.md).",
        lifespan=lifespan,
        openapi_url=None,  # service.http.docs serves it, behind the token when one is set; no CDN UI by default
        docs_url=None,
        redoc_url=None,
    )
    # around every route, the fast one included: one body budget per worker, one request metric
    app.wrap(lambda inner: middleware.RequestMetrics(limits.BodyBudget(
        inner, max_buffered_bytes=settings.max_buffered_bytes, max_body_bytes=settings.max_body_bytes)))  # fmt: skip
    errors.install(app)
    app.include_router(docs.router(app.title, settings.docs_ui))
    app.include_router(classify.router)
    app.include_router(health.health)
    app.include_router(health.metrics)
    app.include_router(v2.health)
    app.include_router(v2.infer_router)
    _merge_openapi_components(app, classify.OPENAPI_COMPONENTS)
    return app


class ServiceApp(FastAPI):
    """FastAPI, with `POST /classify` answered by its plain-ASGI endpoint (`service.http.fastpath`) before
    FastAPI's routing: the route that carries single-crop traffic skips FastAPI's per-request machinery.
    `wrap` puts middleware around both (FastAPI's own `add_middleware` would only wrap FastAPI's routes)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outer: ASGIApp = self._dispatch

    def wrap(self, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
        self._outer = middleware(self._outer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        await self._outer(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == fastpath.PATH and scope["method"] == "POST":
            await fastpath.classify_endpoint(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _merge_openapi_components(app: FastAPI, components: dict[str, Any]) -> None:
    """Hand-declared request bodies (orjson parsing) reference schemas FastAPI does not know: add them."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
