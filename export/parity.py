"""Parity of an ONNX file against the PyTorch model it came from (timm's `onnx_validate` idea).

Each batch size is ONE session call at exactly that size (1, 7, 64, 513 by default): odd sizes catch a
batch axis that was specialised or padded wrongly. Both random tensors and real crops are compared, by max
absolute logit difference AND by argmax agreement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

BATCH_SIZES: tuple[int, ...] = (1, 7, 64, 513)


@dataclass(frozen=True)
class Tolerance:
    """Pass when max |logit diff| <= atol (scaled by the logits' range when relative) and argmax agrees."""

    atol: float | None  # None: report the difference, do not enforce it (INT8)
    min_agreement: float
    relative: bool = False
    #: the random-input agreement is only reported, not enforced (INT8 is calibrated on crops, not noise)
    enforce_random_agreement: bool = True


FP32 = Tolerance(atol=1e-4, min_agreement=1.0)
#: fp16 keeps ~3 significant digits; its logits may differ by ~1e-3 of their range, so a few near-ties flip
FP16 = Tolerance(atol=1e-2, min_agreement=0.99, relative=True)


def session(model: bytes | str, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run_batches(sess: ort.InferenceSession, x: np.ndarray, batch_sizes: Sequence[int]) -> list[np.ndarray]:
    """Logits for the first n rows of x (cycled if x is shorter), one session call per n."""
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return [np.asarray(sess.run([out], {name: _rows(x, n)})[0], np.float32) for n in batch_sizes]


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    return x[np.arange(n) % len(x)]


@dataclass(frozen=True)
class ParityResult:
    passed: bool
    report: dict[str, float | int | str | list[int]]
    problems: list[str]


def check(
    sess: ort.InferenceSession,
    reference: Callable[[np.ndarray], np.ndarray],
    inputs: dict[str, np.ndarray],
    tol: Tolerance,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> ParityResult:
    """Compare `sess` with `reference` (float32 [N,1,H,W] -> logits [N,C]) on each named input set."""
    report: dict[str, float | int | str | list[int]] = {"batch_sizes": list(batch_sizes)}
    if tol.atol is not None:
        report["atol"] = tol.atol
    report["min_agreement"] = tol.min_agreement
    problems: list[str] = []
    for set_name, x in inputs.items():
        got = run_batches(sess, x, batch_sizes)
        want = [reference(_rows(x, n)) for n in batch_sizes]
        worst, agree, rows = 0.0, 0, 0
        for n, g, w in zip(batch_sizes, got, want, strict=True):
            if g.shape != w.shape:
                problems.append(f"{set_name} batch {n}: output shape {g.shape}, expected {w.shape}")
                continue
            scale = max(1.0, float(np.abs(w).max())) if tol.relative else 1.0
            worst = max(worst, float(np.abs(g - w).max()) / scale)
            agree += int((g.argmax(1) == w.argmax(1)).sum())
            rows += n
        agreement = agree / rows if rows else 0.0
        report[f"{set_name}_max_abs_diff"] = worst
        report[f"{set_name}_argmax_agreement"] = agreement
        report[f"{set_name}_rows"] = rows
        what = "max |diff| / max(1, max |logit|)" if tol.relative else "max |diff|"
        if tol.atol is not None and worst > tol.atol:
            problems.append(f"{set_name}: {what} {worst:.3g} > {tol.atol:g}")
        if agreement < tol.min_agreement and (set_name != "random" or tol.enforce_random_agreement):
            problems.append(f"{set_name}: argmax agreement {agreement:.4f} < {tol.min_agreement}")
    report["passed"] = "yes" if not problems else "no"
    return ParityResult(not problems, report, problems)
