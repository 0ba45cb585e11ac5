"""The chart's gRPC port: one value -> OMR_GRPC_PORT, a named container port and a Service port; 0 = none.
Rendered with Helm's own SDK (helm-python-sdk), as tests/deploy/test_helm_chart.py does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm  # dev extra: a missing SDK fails here, it does not skip
import pytest
import yaml

from service.settings import Settings

CHART = Path(__file__).resolve().parents[3] / "helm" / "omr-classifier"


def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values, name="omr", namespace="omr", is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    return {d["kind"]: d for d in docs}


def _ports(docs: dict[str, dict[str, Any]]) -> tuple[dict[str, int], dict[str, Any], dict[str, str]]:
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    service = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    return {p["name"]: p["containerPort"] for p in container["ports"]}, service, docs["ConfigMap"]["data"]


def test_grpc_port_default_is_served_and_exposed() -> None:
    container, service, env = _ports(render())
    assert container == {"http": 8000, "grpc": 8001}
    assert service["grpc"]["targetPort"] == "grpc" and service["grpc"]["port"] == 8001
    assert service["grpc"]["appProtocol"] == "grpc"
    assert env["OMR_GRPC_PORT"] == "8001"
    assert Settings(grpc_port=int(env["OMR_GRPC_PORT"])).grpc_port == 8001


def test_grpc_port_zero_turns_it_off() -> None:
    container, service, env = _ports(render({"grpcPort": 0}))
    assert "grpc" not in container and "grpc" not in service
    assert env["OMR_GRPC_PORT"] == "0"
    assert not Settings(grpc_port=int(env["OMR_GRPC_PORT"])).grpc_port  # the lifespan starts no gRPC server


def test_grpc_port_must_be_unprivileged() -> None:
    with pytest.raises(Exception, match="grpcPort"):
        render({"grpcPort": 81})


def test_grpc_port_must_differ_from_http_port() -> None:
    with pytest.raises(ValueError, match="grpc_port 9000 is the HTTP port too"):
        Settings(port=9000, grpc_port=9000)
    assert Settings(port=9000, grpc_port=0).grpc_port == 0
