"""OMR bubble classification service: ONNX Runtime behind FastAPI. Imports no torch."""
