"""The in-process ceiling: ONNX Runtime alone, and with the service's decode + preprocessing, on one core.

Everything runs in the calling thread (1 intra-op thread, sequential execution: ORT then runs the graph on
the caller's thread), so `time.thread_time()` counts exactly the CPU the work used. "crops/s/core" is
crops per CPU-second of that thread: it does not drop when other processes share the machine, which wall
time would. Wall-clock crops/s are reported next to it as a cross-check.

Decode + preprocess is exactly the service's code path per crop: base64 -> `decode_image` ->
`prepare` (resize) -> `normalize`, then one `session.run` per batch.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.modelconfig import ModelConfig, load_config, verified_model_path
from service.core.preprocess import decode_image, normalize, prepare

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class Rate:
    label: str
    batch: int
    crops: int
    cpu_s: float
    wall_s: float

    @property
    def per_core(self) -> float:
        """Crops per CPU-second of the measuring thread."""
        return self.crops / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def wall(self) -> float:
        return self.crops / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "crops_per_s_per_core": self.per_core, "crops_per_s_wall": self.wall}


def session(path: Path) -> ort.InferenceSession:
    """A CPU session exactly as a 1-thread service worker gets it."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def input_dtype(sess: ort.InferenceSession) -> str:
    return "float16" if sess.get_inputs()[0].type == "tensor(float16)" else "float32"


def _measure(label: str, batch: int, step: Callable[[], int], min_cpu_s: float, max_calls: int) -> Rate:
    """Call `step` (returns crops done) until `min_cpu_s` of thread CPU or `max_calls`, after one warm-up."""
    step()
    crops, calls = 0, 0
    c0, w0 = time.thread_time(), time.perf_counter()
    while calls < max_calls:
        crops += step()
        calls += 1
        if time.thread_time() - c0 >= min_cpu_s:
            break
    return Rate(label, batch, crops, time.thread_time() - c0, time.perf_counter() - w0)


def model_rates(
    sess: ort.InferenceSession, config: ModelConfig, x_u8: np.ndarray, batch_sizes: Sequence[int], min_cpu_s: float
) -> list[Rate]:
    """ORT alone: pre-normalised float input [B,1,H,W] per batch size."""
    name, dtype = config.input.name, input_dtype(sess)
    out: list[Rate] = []
    for b in batch_sizes:
        reps = -(-b // len(x_u8))
        x = normalize(np.concatenate([x_u8] * reps)[:b], config.preprocess, dtype)

        def step(x: np.ndarray = x, b: int = b) -> int:
            sess.run(None, {name: x})
            return b

        out.append(_measure("model", b, step, min_cpu_s, max_calls=100_000))
    return out


def _groups(b64: Sequence[str], batch: int) -> list[list[str]]:
    """The crops cut into `batch`-crop groups (wrapping around), as the pipeline measurements call them."""
    return [[b64[(i * batch + k) % len(b64)] for k in range(batch)] for i in range(max(1, len(b64) // batch))]


def model_input(group: Sequence[str], config: ModelConfig, dtype: str) -> np.ndarray:
    """Base64 crops -> the model input, by the service's own decode and preprocessing (also what the peer
    servers of the benchmark run: `loadtest/naive_app.py`, `loadtest/torchserve/omr_handler.py`)."""
    crops = [decode_image(base64.b64decode(s, validate=True)) for s in group]
    return normalize(prepare(crops, config.input), config.preprocess, dtype)


def pipeline_rate(
    sess: ort.InferenceSession, config: ModelConfig, b64: Sequence[str], batch: int, min_cpu_s: float
) -> tuple[Rate, Rate]:
    """(decode + preprocess only, decode + preprocess + infer) on base64 PNG crops, `batch` per call."""
    name, dtype = config.input.name, input_dtype(sess)
    groups = _groups(b64, batch)
    state = {"i": 0}

    def prep() -> np.ndarray:
        group = groups[state["i"] % len(groups)]
        state["i"] += 1
        return model_input(group, config, dtype)

    def prep_only() -> int:
        prep()
        return batch

    def full() -> int:
        sess.run(None, {name: prep()})
        return batch

    return (
        _measure("decode+preprocess", batch, prep_only, min_cpu_s, max_calls=100_000),
        _measure("decode+preprocess+model", batch, full, min_cpu_s, max_calls=100_000),
    )


def parallel_pipeline_rate(
    sess: ort.InferenceSession, config: ModelConfig, b64: Sequence[str], batch: int, threads: int, seconds: float
) -> dict[str, float]:
    """The in-process ceiling of `threads` cores, measured: `threads` threads at once, each decoding and
    classifying its own `batch`-crop groups (decode + preprocess + ORT on one shared session, as a pod's
    workers do between them), for `seconds` of wall time. Crops/s of them all together.

    Not `threads` x one thread's rate: two busy cores of this kind of machine each run slower than one alone
    (shared caches, memory bandwidth, AVX-512 clocks; 1.67x for 2 threads of this pipeline here), so the
    multiplied figure is a ceiling nothing reaches."""
    name, dtype = config.input.name, input_dtype(sess)
    groups = _groups(b64, batch)
    done = [0] * threads
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def run(t: int) -> None:
        start.wait()
        i = t
        while not stop.is_set():
            sess.run(None, {name: model_input(groups[i % len(groups)], config, dtype)})
            done[t] += batch
            i += threads

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {"threads": threads, "batch": batch, "crops": sum(done), "per_thread": done, "wall_s": wall,
            "crops_per_s": sum(done) / wall}  # fmt: skip


def stage_costs(
    sess: ort.InferenceSession, config: ModelConfig, b64: Sequence[str], batch: int = 64, repeats: int = 3
) -> dict[str, float]:
    """CPU microseconds per crop of each step of the service path (best of `repeats`), to show where it goes."""
    name, dtype = config.input.name, input_dtype(sess)
    raw = [base64.b64decode(s, validate=True) for s in b64]
    gray = [decode_image(r) for r in raw]
    u8 = prepare(gray, config.input)
    x = normalize(u8, config.preprocess, dtype)
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    steps: dict[str, Callable[[], object]] = {
        "base64": lambda: [base64.b64decode(s, validate=True) for s in b64],
        "decode": lambda: [decode_image(r) for r in raw],
        "resize": lambda: prepare(gray, config.input),
        "normalize": lambda: normalize(u8, config.preprocess, dtype),
        f"model (batch {batch})": lambda: [sess.run(None, {name: c}) for c in chunks],
    }
    out = {}
    for label, fn in steps.items():
        best_s = float("inf")
        for _ in range(repeats):
            c0 = time.thread_time()
            fn()
            best_s = min(best_s, time.thread_time() - c0)
        out[label] = best_s / len(b64) * 1e6
    return out


def variants(version_dir: Path, include_gpu_only: bool = False) -> dict[str, Path]:
    """The CPU-servable ONNX variants of a model version that verify (fp32, int8), plus any other `.onnx`
    file in the folder the config does not list yet (named by file), so a fresh export gets measured too."""
    config = load_config(version_dir)
    found: dict[str, Path] = {}
    for name, spec in config.variants.items():
        if spec.precision == "fp16" and not include_gpu_only:
            continue  # fp16 is the GPU variant; ORT's CPU kernels up-cast it
        try:
            found[name] = verified_model_path(version_dir, config, name)
        except ValueError:
            continue
    listed = {version_dir / spec.file for spec in config.variants.values()}
    for path in sorted(version_dir.glob("*.onnx")):
        if path not in listed:
            found[path.name] = path
    return found


def best(rates: Sequence[Rate]) -> Rate:
    return max(rates, key=lambda r: r.per_core)
