"""PyTorch -> ONNX with torch's dynamo exporter: eval mode, one dynamic batch axis, checked by onnx.checker."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


class ExportError(RuntimeError):
    """The export produced something that must not be published (failed check, failed parity, bad input)."""


def to_onnx(model: nn.Module, input_size: int, opset: int = 18) -> onnx.ModelProto:
    """An eval-mode model -> a checked ONNX model: input [batch,1,H,W] float32 -> logits [batch,C].

    The dynamo exporter folds BatchNorm into the convolutions and constant-folds the graph. Its progress
    chatter (stdout) and deprecation warnings from torch internals are swallowed here: they are noise to a
    CLI user, and our pytest configuration turns warnings into errors.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}: the service and TensorRT need opset >= {MIN_OPSET}")
    model = model.eval()
    example = torch.rand(2, 1, input_size, input_size)  # batch 2, so the batch axis cannot specialise to 1
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            optimize=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_value or not dims[0].dim_param:
        raise ExportError(f"exported batch axis is static ({dims[0].dim_value}); expected a dynamic one")
    return proto
