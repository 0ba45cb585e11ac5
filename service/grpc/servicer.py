"""The six `inference.GRPCInferenceService` RPCs, thin over the REST app's `AppState` (same classifier, batcher).

Each RPC: auth (metadata `authorization: Bearer <token>`; health and metadata RPCs only with `auth_health`, as
REST), then the work, then `service.errors` -> a status (`status.py`), and one count + latency per call in
`omr_grpc_requests_total` / `omr_grpc_request_duration_seconds` {method, code}. Inference waits for warm-up
(UNAVAILABLE before it); a draining server still serves what it accepts, as REST does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np

from service import __version__
from service.errors import ServiceError, Unauthorized, Unavailable
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc import status, tensors
from service.state import AppState

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how close to the client's deadline a cancellation counts as that deadline (clocks and wake-ups differ a little)
DEADLINE_SLACK_S = 0.05
#: typed UINT8 contents with more elements than this are converted in the preprocessing pool, not on the event loop
INLINE_PARSE_MAX_ELEMENTS = 1 << 16


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._held_bytes = 0
        self.in_flight = 0  # calls in a handler now (the server's drain waits for 0)
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        """Return once no call is in a handler."""
        await self._idle.wait()

    def _authorize(self, context: grpc.aio.ServicerContext, health: bool) -> None:
        token = self.state.token
        if token is None or (health and not self.state.settings.auth_health):
            return
        header = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        scheme, _, presented = header.partition(" ")
        # constant-time: the comparison takes as long for a near miss as for garbage
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise Unauthorized()

    async def _call(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]], health: bool
    ) -> T:
        t0 = time.monotonic()
        code = grpc.StatusCode.OK
        self.in_flight += 1
        self._idle.clear()
        try:
            self._authorize(context, health)
            return await work()
        except ServiceError as exc:
            code = status.code_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.warning("%s: %s", exc.code, exc.message)
            await context.abort(code, exc.message, status.trailers(exc))
            raise AssertionError("unreachable: abort raises") from None
        except asyncio.CancelledError:
            # the client cancelled or its deadline passed (or the drain's grace ran out): grpc cancels this task,
            # and with it the batcher future, so the request's still-queued rows are dropped instead of computed
            remaining = context.time_remaining()
            late = remaining is not None and remaining < DEADLINE_SLACK_S  # cancelled at (about) the deadline
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            self.state.metrics.rejections.labels("timeout" if late else "client_disconnected").inc()
            log.info("gRPC %s cancelled (%s) after %.3fs", method, code.name, time.monotonic() - t0)
            raise
        except Exception as exc:
            log.error("unhandled %s in %s", type(exc).__name__, method, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, "internal server error")  # no stack trace ever leaves the process
            raise AssertionError("unreachable: abort raises") from None
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
            m = self.state.metrics
            m.grpc_requests.labels(method, code.name).inc()
            m.grpc_request_seconds.labels(method, code.name).observe(time.monotonic() - t0)

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        async def work() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work, health=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        async def work() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.state.ready)

        return await self._call("ServerReady", context, work, health=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        async def work() -> pb.ModelReadyResponse:
            self.state.registry.get(request.name, request.version or None)  # NOT_FOUND for an unknown model
            return pb.ModelReadyResponse(ready=self.state.ready)

        return await self._call("ModelReady", context, work, health=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        async def work() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name="omr-bubble-service", version=__version__, extensions=[])

        return await self._call("ServerMetadata", context, work, health=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        async def work() -> pb.ModelMetadataResponse:
            registry = self.state.registry
            served = registry.get(request.name, request.version or None)
            classes = list(served.config.classes)
            meta = pb.ModelMetadataResponse(
                name=served.name,
                versions=[served.version] if request.version else list(registry.models[served.name]),
                platform=served.config.platform,
            )
            meta.inputs.add(name="IMAGE", datatype="BYTES", shape=[-1])
            meta.inputs.add(name="PIXELS", datatype="UINT8", shape=[-1, -1, -1])
            meta.outputs.add(name="probabilities", datatype="FP32", shape=[-1, len(classes)])
            meta.outputs.add(name="label", datatype="BYTES", shape=[-1])
            meta.outputs.add(name="marked", datatype="BOOL", shape=[-1])
            meta.parameters["classes"].string_param = ",".join(classes)
            meta.parameters["profiles"].string_param = ",".join(sorted(served.config.profiles))
            meta.parameters["provider"].string_param = served.provider
            return meta

        return await self._call("ModelMetadata", context, work, health=True)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        async def work() -> pb.ModelInferResponse:
            deadline = time.monotonic() + self.state.settings.request_timeout_s
            remaining = context.time_remaining()  # the client's gRPC deadline, when it set one
            if remaining is not None:
                # a little before grpc cancels the call at that deadline: the classifier's DeadlineExceeded (its
                # message, its queued rows dropped) then usually reaches the client rather than a bare cancel
                deadline = min(deadline, time.monotonic() + remaining - min(DEADLINE_SLACK_S, remaining / 10))
            if not self.state.warmed.is_set():
                raise Unavailable("the model is still warming up", retry_after_s=1)
            with self._holding(request.ByteSize()):
                return await self._infer(request, deadline)

        return await self._call("ModelInfer", context, work, health=False)

    @contextlib.contextmanager
    def _holding(self, size: int) -> Iterator[None]:
        """REST's buffered-bytes budget (`http/limits.py`, `OMR_MAX_BUFFERED_BYTES`) for the request messages
        this worker's gRPC calls hold until answered (grpc has read each whole before the handler runs)."""
        budget = self.state.settings.max_buffered_bytes
        if self._held_bytes + size > budget:
            self.state.metrics.rejections.labels("buffer_budget").inc()
            raise Unavailable(
                f"the server holds too many request bodies right now ({budget} bytes); retry shortly", retry_after_s=1
            )
        self._held_bytes += size  # one event loop per worker: no lock needed
        try:
            yield
        finally:
            self._held_bytes -= size

    async def _infer(self, request: pb.ModelInferRequest, deadline: float) -> pb.ModelInferResponse:
        state = self.state
        served = state.registry.get(request.model_name, request.model_version or None)
        parse = functools.partial(tensors.parse_request, request, check_count=state.classifier.check_count)
        typed = sum(len(i.contents.uint_contents) for i in request.inputs)  # len() of a repeated field: O(1)
        if typed > INLINE_PARSE_MAX_ELEMENTS:  # converting millions of varints would stall the event loop
            inputs = await asyncio.get_running_loop().run_in_executor(state.preprocess_pool, parse)
        else:
            inputs = parse()
        common = {"deadline": deadline, "model": served.name, "version": served.version,
                  "profile": inputs.profile, "tta_requested": inputs.tta}  # fmt: skip
        if inputs.kind == "pixels":
            assert isinstance(inputs.data, np.ndarray)
            result = await state.classifier.classify_raw(inputs.data, None, **common)
        else:
            assert isinstance(inputs.data, list)
            result = await state.classifier.classify_encoded(inputs.data, None, base64_encoded=False, **common)
        return tensors.response(inputs, result)
