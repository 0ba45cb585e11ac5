"""The Open Inference Protocol (KServe V2) over gRPC, served beside REST from the same process.

- `grpc_predict_v2.proto`: the wire contract; `grpc_predict_v2_pb2*.py`: stubs generated from it and committed
  (regenerate with `python -m service.grpc.regenerate`, which needs the dev extra's grpcio-tools).
- `tensors.py`: protocol tensors <-> the classifier's inputs and outputs (the same names and rules as REST V2).
- `servicer.py`: the six RPCs, thin over `service.core.classifier` (the REST app's classifier and batcher).
- `status.py`: `service.errors` -> gRPC status codes, messages unchanged.
- `server.py`: the grpc.aio server (limits, keepalive, auth, drain) started from the app's lifespan.
"""
