"""Regenerate the committed stubs from `grpc_predict_v2.proto` (dev time only: needs grpcio-tools).

    python -m service.grpc.regenerate          # rewrite service/grpc/grpc_predict_v2_pb2{,_grpc}.py{,i}
    python -m service.grpc.regenerate --check  # exit 1 if the committed stubs differ from a fresh build

The runtime needs only grpcio + protobuf. One change to protoc's output: the messages are built in a
*private* descriptor pool, not protobuf's process-wide default one. Our proto declares the protocol's names
(`inference.ModelInferRequest`, ...) and so does every other V2 proto - tritonclient's among them - and two
files defining one symbol in the same pool refuse to load ("duplicate symbol"): without this a process could
not hold the server and a tritonclient (tests, a sidecar, a pipeline that calls Triton too).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO = "service/grpc/grpc_predict_v2.proto"
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# private pool: these names clash with every other V2 proto's, e.g. tritonclient's (service/grpc/regenerate.py)\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


def generate(out: Path) -> None:
    """protoc -> `out`/service/grpc/*, with the private-pool rewrite."""
    from grpc_tools import protoc  # dev dependency: imported only here

    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", PROTO]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    pb2 = out / "service" / "grpc" / OUTPUTS[0]
    text = pb2.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise SystemExit(f"protoc's output changed shape: expected one {_DEFAULT_POOL!r} in {pb2}")
    pb2.write_text(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.grpc.regenerate", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed stubs; write nothing")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {name: (Path(tmp) / "service" / "grpc" / name).read_text() for name in OUTPUTS}
    stale = [name for name, text in fresh.items() if not (HERE / name).exists() or (HERE / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"stale: service/grpc/{name} (run python -m service.grpc.regenerate)", file=sys.stderr)
        return 1 if stale else 0
    for name, text in fresh.items():
        (HERE / name).write_text(text)
    print(f"wrote {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
