"""Pre-build the TensorRT engine cache for a model version, so the first request does not pay the build.

    python -m export.trt_build models/repository/omr-bubble/1 [--variant fp16] [--cache-root DIR]

Where there is no NVIDIA GPU or no TensorRT execution provider, it says so and exits 0 (nothing to do on a
CPU host). Otherwise it creates a session with the model's TensorRT profile (config.json `tensorrt`),
runs the min/opt/max batch shapes once, and leaves the engine + timing cache in the folder named by
`service.core.trt_cache.cache_key` (model sha256, ONNX Runtime, TensorRT, GPU). Exit 1 if the build fails.
Needs onnxruntime-gpu and numpy only (no torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.modelconfig import load_config, verified_model_path, verify_session
from service.core.trt_cache import cache_dir, gpu_name, provider_options, tensorrt_version
from service.settings import Settings

TRT = "TensorrtExecutionProvider"


def why_not_here() -> str | None:
    """None where an engine can be built here, else the reason it cannot."""
    if TRT not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} here has no {TRT} (install onnxruntime-gpu and TensorRT)"
    if gpu_name() is None:
        return "no NVIDIA GPU found (nvidia-smi is missing or lists none)"
    return None


def build(version_dir: Path, variant: str, cache_root: Path) -> Path:
    config = load_config(version_dir)
    path = verified_model_path(version_dir, config, variant)
    spec = config.variants[variant]
    gpu, trt = gpu_name() or "unknown-gpu", tensorrt_version() or "unknown"
    folder = cache_dir(cache_root, config.name, spec.sha256 or "", ort.__version__, trt, gpu)
    folder.mkdir(parents=True, exist_ok=True)
    options = provider_options(config.input, config.tensorrt, folder, fp16=config.tensorrt.fp16)
    session = ort.InferenceSession(str(path), providers=[(TRT, options), "CUDAExecutionProvider"])
    if session.get_providers()[0] != TRT:
        raise RuntimeError(f"{TRT} did not load (active: {session.get_providers()})")
    verify_session(session, config, variant)
    inp = config.input
    for n in (config.tensorrt.min_batch, config.tensorrt.opt_batch, config.tensorrt.max_batch):
        x = np.zeros((n, inp.channels, inp.height, inp.width), np.float32)
        session.run([config.output_name], {inp.name: x})
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.trt_build", description=__doc__.splitlines()[0])
    ap.add_argument("version_dir", type=Path, help="a model version folder, e.g. models/repository/omr-bubble/1")
    ap.add_argument(
        "--variant",
        default="fp32",
        help="which ONNX file (fp32 or fp16; TensorRT builds fp16 kernels "
        "from fp32 too when the config's tensorrt.fp16 is true)",
    )
    ap.add_argument(
        "--cache-root",
        type=Path,
        default=Settings.model_fields["trt_cache_dir"].default,
        help="the service's OMR_TRT_CACHE_DIR",
    )
    args = ap.parse_args(argv)
    reason = why_not_here()
    if reason is not None:
        print(
            f"trt_build: nothing to build on this machine: {reason}. The service runs on CPU here; run this "
            "command on the GPU host (or in the GPU image) to pre-build the TensorRT engine cache."
        )
        return 0
    try:
        folder = build(args.version_dir, args.variant, args.cache_root)
    except Exception as exc:  # ONNX Runtime raises its own types; any failure must be a clear exit 1
        print(f"trt_build: failed: {exc}", file=sys.stderr)
        return 1
    files = sorted(p.name for p in folder.iterdir())
    print(f"trt_build: engine cache ready in {folder}: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
