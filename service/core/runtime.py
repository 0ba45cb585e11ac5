"""ONNX Runtime sessions: provider selection, options, and which provider actually became active.

ORT silently falls back to CPU when a preferred provider fails to load (missing CUDA libraries, no GPU), so
after creating a session we read `get_providers()` and report the first one as the *active* provider.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from service.core import trt_cache
from service.core.modelconfig import ModelConfig, verify_session
from service.settings import Settings


class Session(Protocol):
    """What the batcher needs from a model session (an `ort.InferenceSession` satisfies it)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]: ...

    def get_providers(self) -> list[str]: ...


#: (model file, its config, settings) -> session. `create_app(..., session_factory=...)` takes one, so a test
#: can wrap the real session (e.g. to fail on a marked input) without patching anything global.
SessionFactory = Callable[[Path, ModelConfig, Settings], Session]


def _variant_sha(config: ModelConfig, path: Path) -> str:
    for spec in config.variants.values():
        if spec.file == path.name:
            return spec.sha256 or "unknown"  # load_config refuses configs without digests
    return config.variants[config.default_variant].sha256 or "unknown"


def provider_options(name: str, path: Path, config: ModelConfig, settings: Settings) -> dict[str, str]:
    """Options per provider (ORT's TensorRT / CUDA execution-provider documentation)."""
    if name == "TensorrtExecutionProvider":
        folder = trt_cache.cache_dir(
            settings.trt_cache_dir,
            config.name,
            _variant_sha(config, path),
            ort.__version__,
            trt_cache.tensorrt_version() or "unknown",
            trt_cache.gpu_name() or "unknown",
        )
        folder.mkdir(parents=True, exist_ok=True)
        spec = config.tensorrt
        # every padded bucket (1 .. max_batch_size) must fit the profile, so the engine is never rebuilt
        spec = spec.model_copy(
            update={
                "opt_batch": min(spec.opt_batch, settings.max_batch_size),
                "max_batch": max(spec.max_batch, settings.max_batch_size),
            }
        )
        return trt_cache.provider_options(config.input, spec, folder)
    if name == "CUDAExecutionProvider":
        return {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "True"}
    return {}


def available_providers(preferred: list[str]) -> list[str]:
    """The preferred providers this ORT build has, in preference order; CPU always last as a fallback."""
    have = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(path: Path, config: ModelConfig, settings: Settings) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: provider fall-back is reported by us, not ORT's warnings
    providers = available_providers(list(settings.providers))
    session = ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=[(p, provider_options(p, path, config, settings)) for p in providers],
    )
    # the sha256 proves the bytes are the ones exported; this proves they match the config's contract
    variant = next((name for name, spec in config.variants.items() if spec.file == path.name), None)
    verify_session(session, config, variant)
    return session


def active_provider(session: Session) -> str:
    providers = session.get_providers()
    return providers[0] if providers else "unknown"
