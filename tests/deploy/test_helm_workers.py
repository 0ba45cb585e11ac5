"""The chart's worker count agrees with its CPU limit (OMR_WORKERS), on CPU and on GPU values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "omr-classifier"
Manifests = list[dict[str, Any]]


@pytest.fixture(scope="module")
def render() -> Callable[..., Manifests]:
    try:
        import helm_python as helm

        helm.helm_sdk_version()
    except Exception as exc:  # as tests/deploy/test_helm_chart.py: cannot run here, said verbatim
        pytest.skip(f"helm-python-sdk unavailable: {type(exc).__name__}: {exc}")
    chart = helm.Chart.load(CHART)

    def _render(values: dict[str, Any] | None = None) -> Manifests:
        out = chart.render(values, name="omr", namespace="omr", is_install=True)
        return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
                for d in yaml.safe_load_all(text) if d]  # fmt: skip

    return _render


def gpu_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / "gpu-values.yaml").read_text()) or {}


def server(docs: Manifests) -> dict[str, Any]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _env(docs: Manifests) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in server(docs).get("env", [])}


def _cpu(docs: Manifests) -> tuple[str, str]:
    res = server(docs)["resources"]
    return str(res["requests"]["cpu"]), str(res["limits"]["cpu"])


def test_default_workers_one_per_cpu_of_the_limit(render: Callable[..., Manifests]) -> None:
    docs = render()
    assert _env(docs)["OMR_WORKERS"] == "2"
    assert _cpu(docs) == ("2", "2")  # requests = limits: every worker has its core


@pytest.mark.parametrize(("limit", "want"), [("1500m", "2"), ("500m", "1"), ("4", "4"), (3, "3")])
def test_workers_follow_fractional_and_numeric_limits(render: Callable[..., Manifests], limit: Any,
                                                      want: str) -> None:  # fmt: skip
    docs = render({"resources": {"requests": {"cpu": limit}, "limits": {"cpu": limit, "memory": "2Gi"}}})
    assert _env(docs)["OMR_WORKERS"] == want


def test_explicit_workers_and_extra_env_kept(render: Callable[..., Manifests]) -> None:
    docs = render({"workers": 1, "extraEnv": [{"name": "OMR_LOG_LEVEL", "value": "debug"}]})
    env = _env(docs)
    assert env["OMR_WORKERS"] == "1" and env["OMR_LOG_LEVEL"] == "debug"


def test_more_workers_than_cpus_refused(render: Callable[..., Manifests]) -> None:
    with pytest.raises(Exception, match="at most 2"):
        render({"workers": 3})


def test_auto_workers_need_a_cpu_limit(render: Callable[..., Manifests]) -> None:
    with pytest.raises(Exception, match="needs a CPU limit"):
        render({"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": None, "memory": "1Gi"}}})  # null removes it


def test_gpu_values_use_the_gpu_topology(render: Callable[..., Manifests]) -> None:
    docs = render(gpu_values())
    assert _env(docs)["OMR_WORKERS"] == "2"  # gpu.workers: two CUDA contexts, large batches each
