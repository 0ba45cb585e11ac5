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

from service.core.modelconfig import ModelConfig
from service.settings import Settings


class Session(Protocol):
    """What the batcher needs from a model session (an `ort.InferenceSession` satisfies it)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]: ...

    def get_providers(self) -> list[str]: ...


#: (model file, its config, settings) -> session. `create_app(..., session_factory=...)` takes one, so a test
#: can wrap the real session (e.g. to fail on a marked input) without patching anything global.
SessionFactory = Callable[[Path, ModelConfig, Settings], Session]


def provider_options(name: str, config: ModelConfig, settings: Settings) -> dict[str, str]:
    """Options per provider (see ORT's TensorRT / CUDA execution provider docs)."""
    if name == "TensorrtExecutionProvider":
        inp = config.input
        trt = config.tensorrt
        cache = settings.trt_cache_dir / f"{config.name}-{config.version}"
        cache.mkdir(parents=True, exist_ok=True)

        def shape(batch: int) -> str:
            return f"{inp.name}:{batch}x{inp.channels}x{inp.height}x{inp.width}"

        return {
            "trt_fp16_enable": str(trt.fp16),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            # explicit profile: every padded bucket (1..max) fits, so the engine is never rebuilt
            "trt_profile_min_shapes": shape(trt.min_batch),
            "trt_profile_opt_shapes": shape(min(trt.opt_batch, settings.max_batch_size)),
            "trt_profile_max_shapes": shape(max(trt.max_batch, settings.max_batch_size)),
        }
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
    return ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=[(p, provider_options(p, config, settings)) for p in providers],
    )


def active_provider(session: Session) -> str:
    providers = session.get_providers()
    return providers[0] if providers else "unknown"
