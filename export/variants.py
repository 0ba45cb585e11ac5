"""Reduced-precision variants of the checked fp32 graph: fp16 (for GPUs) and INT8 static QDQ (for CPUs).

INT8 is *static* quantisation in QDQ format (QuantizeLinear/DequantizeLinear pairs around each op, which
ONNX Runtime's CPU EP fuses into integer kernels and TensorRT can also consume). Dynamic quantisation is
never used: it quantises activations at run time and is several times *slower* than fp32 for small CNNs.
Activations uint8 / weights int8 (U8S8), the format ONNX Runtime recommends on x86; per-channel or
per-tensor weights and MinMax or Percentile calibration, whichever agrees best with fp32 on held-out
*synthetic* crops (real-dev is kept for the final gate only).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

INT8_FORMAT = "QDQ"


def to_fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in float16, inputs/outputs kept float32 so the service feeds the same tensor."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = convert_float_to_float16(fp32, keep_io_types=True)
    _topological_sort(proto.graph)  # the converter appends its input Casts at the end of the node list
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so each node follows the producers of its inputs (Kahn's algorithm, stable)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or dangling inputs near node {pending[0].name!r}")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


class _ArrayReader:
    """onnxruntime.quantization.CalibrationDataReader over an in-memory float32 [N,1,H,W] array."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 64) -> None:
        self._batches = iter([{input_name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self):  # CalibrationDataReader's protocol also allows iteration
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


CALIBRATION_METHODS = ("MinMax", "Percentile")


def quantize_int8(
    fp32: onnx.ModelProto, calibration: np.ndarray, per_channel: bool, method: str = "MinMax"
) -> onnx.ModelProto:
    """Static QDQ INT8, activation ranges from `calibration` (float32 [N,1,H,W]) by `method`.

    MinMax takes each tensor's full observed range; Percentile clips it at the 99.999th percentile, trading
    rare outliers for finer steps. The pipeline tries both and keeps the one closer to fp32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = fp32.graph.input[0].name
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with (
        tempfile.TemporaryDirectory(prefix="omr-int8-") as tmp,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),  # the histogram calibrators print progress
    ):
        warnings.simplefilter("ignore")
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        onnx.save(fp32, src)
        # shape inference + graph optimisation first, as the ONNX Runtime quantisation guide recommends
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(dst),
            _ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
        proto = onnx.load(dst)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def int8_settings(
    per_channel: bool, method: str, calibration_source: str, agreement: dict[str, float]
) -> dict[str, object]:
    """The `build` record of an INT8 variant (what a reader needs to redo or judge the quantisation)."""
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "format": INT8_FORMAT,
        "activations": "uint8 (asymmetric)",
        "weights": "int8 (symmetric)",
        "per_channel": per_channel,
        "calibration_method": method,
        "calibration_data": calibration_source,
        "choice": "highest argmax agreement with fp32 on 512 held-out synthetic crops (never real-dev)",
        "heldout_argmax_agreement": agreement,
    }
