"""Export a trained checkpoint to a Triton-style model repository entry the service can trust.

    python -m export runs/default/best.pt --out models/repository            # fp32 + int8 + fp16
    python -m export.trt_build models/repository/omr-bubble/1                # GPU only: pre-build TRT engines

Library entry point: `export.pipeline.export_checkpoint`. Modules, one idea each:
    torch_onnx   PyTorch -> ONNX (dynamic batch axis) + onnx.checker
    parity       ONNX Runtime vs PyTorch on random and real crops at several batch sizes
    variants     fp16 conversion and INT8 static QDQ quantisation
    data         real-dev crops, calibration crops, random inputs (all via the service's preprocessing)
    bench        single-thread latency of a variant on this CPU
    repository   config.json + ONNX metadata, written atomically into <name>/<version>/
    trt_build    pre-build the TensorRT engine cache where a GPU exists

This package imports nothing heavy at import time, so `python -m export.trt_build` runs without torch.
"""
