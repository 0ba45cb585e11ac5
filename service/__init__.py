"""OMR bubble classification service: ONNX Runtime behind FastAPI. Imports no torch."""

__version__ = "0.1.0"
