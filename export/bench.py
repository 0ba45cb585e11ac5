"""Single-thread CPU latency of the CPU variants at the service's batch size, recorded in the config.

fp32 and INT8 are timed in alternating rounds (A B A B ...) so that load from other processes hits both
alike; the median and the fastest round are kept, and the speed-up is taken from the fastest rounds (the
ones least disturbed by other processes). One intra-op thread and batch 256 match how the service runs a
session (`Settings.intra_op_threads`, `Settings.max_batch_size`). This is a record of the export machine,
not a benchmark suite: the load tests live in `loadtest/`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

BATCH = 256
CPU_VARIANTS = ("fp32", "int8")


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def time_variants(
    protos: Mapping[str, onnx.ModelProto], batch: int = BATCH, rounds: int = 15, calls: int = 10
) -> dict[str, tuple[float, float]]:
    """Milliseconds per batch-`batch` call for each model: {name: (median round, fastest round)}."""
    rng = np.random.default_rng(0)
    runs = {}
    for name, proto in protos.items():
        sess = _session(proto)
        feed = {sess.get_inputs()[0].name: rng.random((batch, 1, 32, 32), dtype=np.float32)}
        out = [sess.get_outputs()[0].name]
        for _ in range(3):  # warm-up: first calls allocate and pick kernels
            sess.run(out, feed)
        runs[name] = (sess, out, feed)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (sess, out, feed) in runs.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                sess.run(out, feed)
            samples[name].append((time.perf_counter() - t0) / calls * 1e3)
    return {name: (float(np.median(v)), float(np.min(v))) for name, v in samples.items()}


def cpu_name() -> str:
    """The CPU model as the kernel reports it (timings mean little without it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(
    protos: Mapping[str, onnx.ModelProto], log: Callable[[str], None]
) -> dict[str, dict[str, float | int | str]]:
    """`benchmark` records for the CPU variants among `protos` (needs "fp32" as the baseline)."""
    ms = time_variants({n: protos[n] for n in CPU_VARIANTS if n in protos})
    machine = f"{cpu_name()} ({os.cpu_count()} cores), onnxruntime {ort.__version__}"
    out: dict[str, dict[str, float | int | str]] = {}
    for n, (median, best) in ms.items():
        out[n] = {
            "batch": BATCH,
            "threads": 1,
            "ms_per_batch": round(median, 4),
            "ms_per_batch_best": round(best, 4),
            "crops_per_s": round(BATCH / best * 1e3),
            # from the fastest rounds: the least disturbed by other processes on a shared machine
            "speedup_vs_fp32": round(ms["fp32"][1] / best, 3),
            "machine": machine,
        }
        log(
            f"{n}: {median:.3f} ms (best {best:.3f}) per batch of {BATCH} on 1 thread "
            f"({out[n]['crops_per_s']} crops/s, x{out[n]['speedup_vs_fp32']} vs fp32)"
        )
    return out
