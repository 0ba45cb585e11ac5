"""Every Prometheus metric the service exports, declared here and nowhere else.

Each app owns its own `CollectorRegistry` (tests build several apps in one process). Names follow
Prometheus conventions: base units (`_seconds`), counters end in `_total`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
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
        self.crops = Counter("omr_crops_total", "Classified crops by label.", ["model", "label"], registry=r)
        self.rejections = Counter("omr_rejections_total", "Requests refused, by reason.", ["reason"], registry=r)
        self.batch_failures = Counter("omr_batch_failures_total", "Model calls that failed.", ["model"], registry=r)
        self.queue_depth = Gauge("omr_queue_depth_rows", "Rows waiting for a batch.", ["model"], registry=r)
        self.batches_in_flight = Gauge("omr_batches_in_flight", "Model calls running now.", ["model"], registry=r)
        self.model_info = Info("omr_model", "Loaded model versions and their active provider.", ["model", "version"],
                               registry=r)  # fmt: skip
        self.ready = Gauge("omr_ready", "1 when the service reports ready.", registry=r)
