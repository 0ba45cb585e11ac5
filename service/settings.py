"""The service's one settings class. Every knob is an `OMR_`-prefixed environment variable (or `.env`);
`python -m service` flags override them. Tests build `Settings(...)` directly and pass it to `create_app`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_REPOSITORY = Path(__file__).resolve().parent.parent / "models" / "repository"

Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMR_", env_file=".env", extra="ignore", frozen=True)

    # --- server ---
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level.")

    # --- gRPC: the Open Inference Protocol's GRPCInferenceService beside REST (service/grpc) ---
    grpc_port: int | None = Field(
        8001, ge=0, le=65535, description="gRPC port on `host` (8001 as Triton); 0 or unset = no gRPC server."
    )
    grpc_max_concurrent_rpcs: int = Field(
        1024, ge=1, le=65536, description="gRPC calls in a worker at once; beyond: RESOURCE_EXHAUSTED at once."
    )
    grpc_max_concurrent_streams: int = Field(100, ge=1, le=10_000, description="Calls at once per gRPC connection.")
    grpc_keepalive_s: float = Field(60.0, ge=1, le=7200, description="Ping an idle gRPC peer after this long.")
    grpc_max_connection_idle_s: float = Field(
        300.0, ge=1, le=86_400, description="Close a gRPC connection with no calls for this long."
    )
    grpc_max_connection_age_s: float | None = Field(
        None,
        ge=1,
        le=86_400,
        description="Ask gRPC clients to reconnect after this long (spreads long-lived connections over new "
        "pods/workers); None = never.",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker processes sharing the port, each with its own batcher and ONNX session (1 = one "
        "process, no supervisor). 0 = the CPUs the container is given: the cgroup quota (v2 cpu.max, v1 "
        "cpu.cfs_quota_us), else the affinity mask; never the host's CPU count (docs/performance.md).",
    )
    balance_connections: bool = Field(
        True,
        description="With several workers, a worker holding more than its share of the pod's keep-alive "
        "connections closes the surplus (`Connection: close` on a response; the client reconnects to "
        "whichever worker accepts first), so a few long-lived client connections cannot pin one core "
        "(service/serve/balance.py).",
    )
    pin_workers: bool | None = Field(
        None,
        description="Keep each worker on one CPU of the affinity mask. None: when `split_sheets` is on and the "
        "container may run on exactly as many CPUs as it has workers (CPUs of its own; service/serve/cpus.py).",
    )
    split_sheets: bool = Field(
        True,
        description="With several workers, a sheet of at least `split_min_crops` crops that arrives while this "
        "worker has nothing else to do and another worker is idle is classified half here and half there "
        "(decoding cannot be spread over threads: the GIL), then decided here as one sheet "
        "(service/core/parts.py, service/serve/peers.py).",
    )
    split_min_crops: int = Field(
        64, ge=2, le=4096, description="Smallest sheet `split_sheets` splits (each half costs a round trip)."
    )

    # --- model repository ---
    model_repository: Path = Field(BUNDLED_REPOSITORY, description="Triton-style <name>/<version>/ folder.")
    default_model: str = Field("omr-bubble", description="Model served when a request names none.")
    default_version: str | None = Field(None, description="Version served by default; None = highest.")
    model_variant: Literal["fp32", "int8", "fp16", "auto"] = Field(
        "fp32",
        description="Which ONNX file of the version to load (falls back to fp32 if absent). `auto`: the variant "
        "exported for the active provider - int8 on CPU, fp16 on TensorRT/CUDA - else fp32.",
    )

    # --- runtime ---
    providers: list[Provider] = Field(
        default=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in preference order; those not installed are skipped.",
    )
    require_provider: Provider | None = Field(
        None, description="If set, readiness fails unless this provider is actually active after loading."
    )
    intra_op_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per session.")
    preprocess_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads per worker that decode/preprocess crops (a big sheet is split across them). More than 1 "
        "gains little: base64 and the Python around each decode hold the GIL.",
    )
    trt_cache_dir: Path = Field(Path("/tmp/omr-trt-cache"), description="TensorRT engine + timing cache dir.")
    gc_young_threshold: int = Field(
        20_000,
        ge=100,
        le=10_000_000,
        description="Live young objects that start a cyclic garbage collection (Python's default: 700). A "
        "100-crop sheet holds ~1,000 at once, so at 700 every sheet paid a collection (~125 us) on its "
        "critical path; the request frees them by reference counting anyway.",
    )

    # --- batching and admission ---
    max_batch_size: int = Field(256, ge=1, le=4096, description="Rows (crops x TTA views) per model call.")
    max_delay_ms: float = Field(2.0, ge=0, le=1000, description="Longest wait to fill a batch after its 1st row.")
    max_batches_in_flight: int = Field(2, ge=1, le=64, description="Model calls running at once.")
    cpu_call_rows: int = Field(
        64,
        ge=1,
        le=4096,
        description="On the CPU provider, a batch runs as ONNX Runtime calls of at most this many rows (the "
        "same rows out, bit for bit): 64-row calls keep the activations in the core's cache, where one 256-row "
        "call cost 15-40 % more per row. At or above OMR_MAX_BATCH_SIZE: one call per batch. GPU providers "
        "always take a batch whole.",
    )
    pad_batches: bool | None = Field(
        None,
        description="Pad model calls to power-of-two batch buckets. None: only on GPU providers (fixed "
        "shapes for TensorRT/CUDA); on CPU any batch size runs as is and padding only wastes model time.",
    )
    queue_limit: int = Field(16384, ge=1, description="Rows waiting for a batch; beyond it requests get 429.")
    request_timeout_s: float = Field(10.0, gt=0, le=600, description="Per-request deadline; then 504.")
    admission_wait_fraction: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Admit a request only if its estimated queue wait is below this fraction of its remaining "
        "time; the rest is headroom for decoding, replying and noise in the observed service rate.",
    )
    admission_max_wait_ms: float = Field(
        1000.0,
        gt=0,
        le=600_000,
        description="Admit a request only if its estimated wait (decoding + queue + model) is below this latency "
        "target too: under overload the excess gets 429 at once while admitted requests stay fast.",
    )
    tta_default: bool | None = Field(None, description="TTA when a request does not say; None = model config.")

    # --- request limits (enforced before decoding) ---
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    max_crops_per_request: int = Field(4096, ge=1, description="Most crops in one request.")

    # --- front door (per worker; see service/http/frontdoor.py and docs/reliability.md "hostile clients") ---
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024, description="Largest request head; 431.")
    max_headers: int = Field(100, ge=8, le=1000, description="Most header fields in one request; 431.")
    head_timeout_s: float = Field(10.0, gt=0, le=300, description="Time to receive a request head; then 408.")
    body_timeout_s: float = Field(10.0, gt=0, le=600, description="Time to receive a body after its head; 408.")
    max_connections: int = Field(512, ge=1, le=65536, description="Open connections per worker; beyond: 503.")
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Request-body bytes held at once across all connections of a worker; beyond it 503 + "
        "Retry-After. Worst case per worker ~ this x 3 (body, parsed JSON, decoded bytes) + connections x 100 KiB.",
    )
    docs_ui: bool = Field(False, description="Serve /docs and /redoc (Swagger UI/ReDoc load assets from a CDN).")

    # --- security ---
    auth_token: SecretStr | None = Field(None, description="Bearer token for classify/infer; None = open.")
    auth_token_file: Path | None = Field(None, description="File holding the bearer token (k8s secret).")
    auth_health: bool = Field(False, description="Require the token on health endpoints too.")
    auth_metrics: bool = Field(False, description="Require the token on /metrics too.")

    # --- shutdown ---
    shutdown_delay_s: float = Field(
        2.0,
        ge=0,
        le=120,
        description="After SIGTERM: keep accepting requests this long while /readyz already says 503, so load "
        "balancers stop routing here before the listener closes (the k8s preStop-sleep idea).",
    )
    drain_timeout_s: float = Field(
        20.0, ge=0, le=600, description="Then: longest wait for in-flight and queued requests before exiting."
    )

    @field_validator("providers")
    @classmethod
    def _cpu_last_resort(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("providers must name at least one execution provider")
        if len(set(v)) != len(v):
            raise ValueError("providers must not repeat")
        return v

    @model_validator(mode="after")
    def _token_source(self) -> Settings:
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError("set auth_token or auth_token_file, not both")
        if self.auth_token is not None and len(self.auth_token.get_secret_value()) < 16:
            raise ValueError("auth_token must be at least 16 characters")
        return self

    @model_validator(mode="after")
    def _grpc_port_apart(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port {self.grpc_port} is the HTTP port too: give gRPC its own (or 0 for none)")
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> Settings:
        if self.max_buffered_bytes < self.max_body_bytes:  # else every body near the limit would get 503
            raise ValueError("max_buffered_bytes must be at least max_body_bytes")
        return self

    def bearer_token(self) -> str | None:
        """The configured token, read from the secret file if one is named."""
        if self.auth_token_file is not None:
            token = self.auth_token_file.read_text().strip()
            if len(token) < 16:  # a configured but empty/short secret must not silently mean "no auth"
                raise ValueError(f"{self.auth_token_file} must hold a token of at least 16 characters")
            return token
        return self.auth_token.get_secret_value() if self.auth_token else None


@lru_cache
def get_settings() -> Settings:
    return Settings()
