"""TensorRT readiness: the optimisation profile and the engine/timing-cache location for a model.

A TensorRT engine is valid only for the exact model, TensorRT build and GPU it was built on, so the cache
folder name is derived from all of them (plus ONNX Runtime, whose TensorRT EP writes the cache):
    <trt_cache_dir>/<model-name>-<sha256[:16]>-ort<ver>-trt<ver>-<gpu>-<digest of all four>/
A new model file, a driver/TensorRT upgrade or a different GPU therefore gets a fresh folder instead of a
stale engine (ONNX Runtime would otherwise reuse or reject it at load time, costing a rebuild per pod).

Profile (batch axis only; the crop is always [1, H, W]):
    min = 1, opt = the service's max batch (rows per model call), max = next power of two >= max batch x
    TTA views, because the batcher pads a call up to a power-of-two bucket and a TTA request expands every
    crop into V rows.

Torch-free and onnxruntime-free: `export` and the service both import it.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from service.core.modelconfig import InputSpec, TensorRTSpec


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tensorrt_spec(max_batch: int, tta_views: int, fp16: bool = True) -> TensorRTSpec:
    """The batch profile for a service whose calls hold at most `max_batch` rows (see module docstring)."""
    if max_batch < 1 or tta_views < 1:
        raise ValueError(f"max_batch and tta_views must be >= 1, got {max_batch}, {tta_views}")
    return TensorRTSpec(min_batch=1, opt_batch=max_batch, max_batch=next_pow2(max_batch * tta_views), fp16=fp16)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "unknown"


def cache_key(model_name: str, model_sha256: str, ort_version: str, trt_version: str, gpu_name: str) -> str:
    """Folder name for the engine + timing caches of one (model file, ORT, TensorRT, GPU) combination."""
    if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
        raise ValueError(f"model_sha256 must be 64 lowercase hex digits, got {model_sha256!r}")
    parts = (model_name, model_sha256, ort_version, trt_version, gpu_name)
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    readable = (
        f"{_slug(model_name)}-{model_sha256[:16]}-ort{_slug(ort_version)}-trt{_slug(trt_version)}-{_slug(gpu_name)}"
    )
    return f"{readable}-{digest}"


def cache_dir(
    root: Path, model_name: str, model_sha256: str, ort_version: str, trt_version: str, gpu_name: str
) -> Path:
    return root / cache_key(model_name, model_sha256, ort_version, trt_version, gpu_name)


def profile_shapes(inp: InputSpec, spec: TensorRTSpec) -> dict[str, str]:
    """`trt_profile_{min,opt,max}_shapes` provider options, e.g. {"trt_profile_min_shapes": "input:1x1x32x32"}."""
    tail = f"{inp.channels}x{inp.height}x{inp.width}"
    return {
        f"trt_profile_{k}_shapes": f"{inp.name}:{n}x{tail}"
        for k, n in (("min", spec.min_batch), ("opt", spec.opt_batch), ("max", spec.max_batch))
    }


def provider_options(inp: InputSpec, spec: TensorRTSpec, folder: Path, fp16: bool | None = None) -> dict[str, str]:
    """TensorrtExecutionProvider options: engine + timing cache in `folder`, the batch profile, precision."""
    use_fp16 = spec.fp16 if fp16 is None else fp16
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(folder),
        "trt_fp16_enable": "True" if use_fp16 else "False",
        **profile_shapes(inp, spec),
    }


def tensorrt_version() -> str | None:
    """The TensorRT library version (python package if present, else libnvinfer's own answer), or None."""
    try:
        import tensorrt  # type: ignore[import-not-found]

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for lib in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            v = int(ctypes.CDLL(lib).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        # TensorRT >= 10 encodes major*10000 + minor*100 + patch; 8.x encodes major*1000 + minor*100 + patch
        major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None


def gpu_name(device_id: int = 0) -> str | None:
    """Name of the GPU (nvidia-smi), or None where there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None
