"""A real service (uvicorn + its grpc.aio server, one process, one app state) on 127.0.0.1 for the gRPC tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc
from reliability._support import LiveServer, live_server

from loadtest.server import free_port
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.settings import Settings

MODEL = "omr-bubble"


@dataclass
class GrpcLive:
    live: LiveServer
    grpc_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def triton(self) -> triton_grpc.InferenceServerClient:
        return triton_grpc.InferenceServerClient(self.target)

    @contextlib.contextmanager
    def stub(self) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
        """Our own generated client: it can send what tritonclient never would (typed contents, bad tensors)."""
        with grpc.insecure_channel(self.target) as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)

    def http(self) -> httpx.Client:
        return self.live.client()


@contextlib.contextmanager
def grpc_service(session_factory: Any = None, **settings: Any) -> Iterator[GrpcLive]:
    port = free_port()
    config = Settings(grpc_port=port, log_level="warning", **settings)
    with live_server(config, session_factory) as live:
        yield GrpcLive(live, port)


@pytest.fixture(scope="module")
def grpc_live() -> Iterator[GrpcLive]:
    """One service for a module; small limits so the limit cases are cheap."""
    with grpc_service(max_crops_per_request=8, max_body_bytes=64 * 1024) as g:
        yield g


@pytest.fixture(scope="session")
def make_grpc_service() -> Callable[..., contextlib.AbstractContextManager[GrpcLive]]:
    """`with make_grpc_service(session_factory=None, **settings) as g:` - a fresh service."""
    return grpc_service
