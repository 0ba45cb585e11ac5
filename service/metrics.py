"""Every Prometheus metric the service exports, declared here and nowhere else.

Each app owns its own `CollectorRegistry` (tests build several apps in one process). Names follow
Prometheus conventions: base units (`_seconds`), counters end in `_total`.

Several workers (`service.serve`): prometheus_client's multiprocess mode, switched on by the supervisor setting
`PROMETHEUS_MULTIPROC_DIR` before any worker imports prometheus_client. Every worker writes its values to
files there; `registry` is then an exposition registry whose `MultiProcessCollector` adds all workers up (dead
ones included for counters and histograms, so totals never go back), plus the pod's own gauges read from the
shared block (`PodCollector`). Gauges say how workers combine (`multiprocess_mode`); `Info` does not exist in
that mode, so `omr_model` is a Gauge with the same exposition (`omr_model_info{...} 1`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode, if it is on in this process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PodView(Protocol):
    """What the pod collector reads (`service.serve.pod.PodState`)."""

    @property
    def workers(self) -> int: ...

    @property
    def restarts(self) -> int: ...

    def ready_workers(self) -> int: ...


class PodCollector:
    """The pod's own figures, read from the shared block at scrape time (one value per pod, not per worker)."""

    def __init__(self, pod: PodView) -> None:
        self.pod = pod

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("omr_workers", "Worker processes the pod runs.", value=self.pod.workers)
        yield GaugeMetricFamily("omr_workers_ready", "Workers loaded, warmed and serving.",
                                value=self.pod.ready_workers())  # fmt: skip
        yield CounterMetricFamily("omr_worker_restarts", "Workers that died and were replaced.",
                                  value=self.pod.restarts)  # fmt: skip


class _InfoGauge:
    """`Info`'s `.labels(...).info({...})` on a Gauge (multiprocess mode has no Info): same exposition."""

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._labels: tuple[str, ...] = ()

    def labels(self, *values: str) -> _InfoGauge:
        bound = _InfoGauge(self._gauge)
        bound._labels = values
        return bound

    def info(self, fields: dict[str, str]) -> None:
        self._gauge.labels(*self._labels, *fields.values()).set(1)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.multiprocess = multiprocess_dir() is not None
        # multiprocess mode: values live in files; the metric objects register nowhere that is scraped
        r = CollectorRegistry(auto_describe=True) if self.multiprocess else self.registry
        if self.multiprocess:
            MultiProcessCollector(self.registry)
        self.request_seconds = Histogram(
            "omr_request_duration_seconds", "End-to-end request time.", ["endpoint", "status"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "omr_queue_wait_seconds", "Time a request's first rows waited for a batch.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.preprocess_seconds = Histogram(
            "omr_preprocess_duration_seconds", "Decode + resize (+ TTA) time per request.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "omr_inference_duration_seconds", "Model call time per batch.", ["model", "provider"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "omr_batch_size_rows", "Real rows (crops x TTA views) per model call.", ["model"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_fill_ratio = Histogram(
            "omr_batch_fill_ratio", "Real rows / padded bucket size per model call.", ["model"],
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "omr_requests_total", "Requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        # gRPC (service/grpc): own names, as the status is a gRPC code name (OK, INVALID_ARGUMENT...), not HTTP's
        self.grpc_requests = Counter(
            "omr_grpc_requests_total", "gRPC calls by method and status code.", ["method", "code"], registry=r
        )
        self.grpc_request_seconds = Histogram(
            "omr_grpc_request_duration_seconds", "End-to-end gRPC call time.", ["method", "code"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.connections_rebalanced = Counter(
            "omr_connections_rebalanced_total",
            "Keep-alive connections a worker closed because it held more than its share (service.serve.balance).",
            registry=r,
        )
        self.sheet_splits = Counter(
            "omr_sheet_splits_total",
            "Sheets split with an idle worker (service.core.parts), by who classified the far half: peer, or "
            "fallback (the peer did not answer; done here).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("peer", "fallback"):  # exported at 0 from the start: a rate needs no first split
            self.sheet_splits.labels(outcome)
        self.peer_parts = Counter(
            "omr_peer_parts_total", "Halves of other workers' sheets this worker classified.", registry=r
        )
        self.crops = Counter("omr_crops_total", "Classified crops by label.", ["model", "label"], registry=r)
        self.rejections = Counter("omr_rejections_total", "Requests refused, by reason.", ["reason"], registry=r)
        self.batch_failures = Counter("omr_batch_failures_total", "Model calls that failed.", ["model"], registry=r)
        self.queue_depth = Gauge("omr_queue_depth_rows", "Rows waiting for a batch.", ["model"], registry=r,
                                 multiprocess_mode="livesum")  # fmt: skip
        self.batches_in_flight = Gauge("omr_batches_in_flight", "Model calls running now.", ["model"], registry=r,
                                       multiprocess_mode="livesum")  # fmt: skip
        self.model_info: Any
        if self.multiprocess:
            self.model_info = _InfoGauge(Gauge("omr_model_info", "Loaded model versions and their active provider.",
                                               ["model", "version", "provider", "file"], registry=r,
                                               multiprocess_mode="max"))  # fmt: skip
        else:
            self.model_info = Info("omr_model", "Loaded model versions and their active provider.",
                                   ["model", "version"], registry=r)  # fmt: skip
        # per worker; the pod's readiness is /readyz (and omr_workers_ready): the min over live workers
        self.ready = Gauge("omr_ready", "1 when the service reports ready.", registry=r, multiprocess_mode="livemin")

    def request_children(self, endpoint: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency children of (endpoint, status), looked up once: `labels()` on every
        request was a measurable cost. Bounded: endpoints are route templates, statuses a few dozen."""
        hit = self._request_children.get((endpoint, status))
        if hit is None:
            label = str(status)
            hit = (self.requests.labels(endpoint, label), self.request_seconds.labels(endpoint, label))
            self._request_children[(endpoint, status)] = hit
        return hit

    def add_pod(self, pod: PodView) -> None:
        """Export the pod's gauges (workers, ready workers, restarts) with this worker's metrics."""
        self.registry.register(PodCollector(pod))
