"""The committed stubs are what the proto generates, and they load beside tritonclient's in one process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def test_committed_stubs_match_the_proto() -> None:
    """`python -m service.grpc.regenerate --check`: protoc (grpcio-tools) on the proto gives the committed files."""
    r = subprocess.run(
        [sys.executable, "-m", "service.grpc.regenerate", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_stubs_coexist_with_tritonclient_in_one_process() -> None:
    """Both define `inference.ModelInferRequest`; ours live in a private descriptor pool, so either import order
    works and the wire format is the same."""
    code = (
        "import tritonclient.grpc.service_pb2 as t\n"
        "from service.grpc import grpc_predict_v2_pb2 as pb\n"
        "m = pb.ModelInferRequest(model_name='m', id='x')\n"
        "m.parameters['tta'].bool_param = True\n"
        "m.inputs.add(name='PIXELS', datatype='UINT8', shape=[1, 2, 2])\n"
        "back = t.ModelInferRequest.FromString(m.SerializeToString())\n"
        "assert back.model_name == 'm' and back.parameters['tta'].bool_param\n"
        "assert list(back.inputs[0].shape) == [1, 2, 2]\n"
    )
    for first in ("", "from service.grpc import grpc_predict_v2_pb2\n"):
        r = subprocess.run(
            [sys.executable, "-W", "error", "-c", first + code], cwd=REPO, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr


@pytest.mark.integration
def test_docs_grpc_example_runs(make_grpc_service: Any) -> None:
    """The python block of docs/api.md's gRPC section, run against a real service on its gRPC port."""
    text = (REPO / "docs" / "api.md").read_text()
    section = text[text.index("## Open Inference Protocol over gRPC") :]
    (block,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 5)], re.S)
    with make_grpc_service() as g:
        code = block.replace("127.0.0.1:8001", g.target).replace('"docs/examples/', f'"{REPO}/docs/examples/')
        out: list[Any] = []
        exec(compile(code, "docs/api.md", "exec"), {"print": lambda *a: out.append(a), "__name__": "docs"})
    labels, probs = out[0]
    assert labels.tolist() == [b"empty"] and probs.shape == (1, 8) and np.isclose(probs.sum(), 1, atol=1e-4)
