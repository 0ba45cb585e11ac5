"""The Helm chart, checked without a cluster: lint (strict), render, validate every manifest against the
Kubernetes 1.30 schemas (strict: unknown fields fail), and assert the properties that matter in production.

Tools: helm-python-sdk (Helm's Go SDK through a bundled shared library; no helm binary) and kubernetes-validate
(offline OpenAPI-derived JSON schemas). Each test skips with the exact reason if its tool cannot load here.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "omr-classifier"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.30.0"

try:
    import helm_python as helm

    helm.helm_sdk_version()  # loads libhelm_c: fails here, not mid-test, if the native library cannot load
    HELM_SKIP = ""
except Exception as exc:  # any load failure means "cannot run here", reported verbatim
    helm = None  # type: ignore[assignment]
    HELM_SKIP = f"helm-python-sdk unavailable: {type(exc).__name__}: {exc}"

try:
    import kubernetes_validate as kv

    KV_SKIP = ""
except Exception as exc:
    kv = None  # type: ignore[assignment]
    KV_SKIP = f"kubernetes-validate unavailable: {type(exc).__name__}: {exc}"

needs_helm = pytest.mark.skipif(bool(HELM_SKIP), reason=HELM_SKIP)
needs_kv = pytest.mark.skipif(bool(KV_SKIP), reason=KV_SKIP)

Manifests = list[dict[str, Any]]


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def gpu_values() -> dict[str, Any]:
    return load_values(CHART / "ci" / "gpu-values.yaml")


@pytest.fixture(scope="module")
def render() -> Callable[..., Manifests]:
    """`render(values=None)` -> the parsed manifests (NOTES.txt and templates that render empty left out)."""
    if HELM_SKIP:
        pytest.skip(HELM_SKIP)
    chart = helm.Chart.load(CHART)

    def _render(values: dict[str, Any] | None = None) -> Manifests:
        out = chart.render(values, name="omr", namespace="omr", is_install=True)
        docs: Manifests = []
        for path, text in sorted(out.items()):
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        return docs

    return _render


def only(docs: Manifests, kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['kind'] for d in docs]}"
    return found[0]


def kinds(docs: Manifests) -> set[str]:
    return {d["kind"] for d in docs}


def server(docs: Manifests) -> dict[str, Any]:
    """The service container of the Deployment."""
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# --- ServiceMonitor shape ---------------------------------------------------------------------------------------
# kubernetes-validate ships only built-in kinds, so the CRD is checked against this subset of the Prometheus
# Operator's monitoring.coreos.com/v1 ServiceMonitor schema (the fields the chart writes), strict on unknown keys.
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "authorization": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


# The same for monitoring.coreos.com/v1 PrometheusRule (the fields the chart writes), strict on unknown keys.
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_all(docs: Manifests) -> list[str]:
    """Validate each manifest; built-ins against the strict 1.30 schemas, the CRDs against their shapes."""
    import jsonschema

    checked = []
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
        elif doc["kind"] == "PrometheusRule":
            jsonschema.validate(doc, PROMETHEUS_RULE_SCHEMA)
        else:
            kv.validate(doc, KUBE_VERSION, strict=True)
        checked.append(doc["kind"])
    return checked


# --- lint -------------------------------------------------------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_lint_strict_clean(values_file: Path | None) -> None:
    values = load_values(values_file) if values_file else None
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert report["total_charts_linted"] == 1
    assert not problems and not report["errors"], report


@needs_helm
def test_lint_reports_broken_template(tmp_path: Path) -> None:
    """The lint check can fail: a copy of the chart with an unclosed action is reported as an error."""
    broken = tmp_path / "omr-classifier"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "service.yaml").write_text("kind: Service\nname: {{ .Values.service.port\n")
    report = helm.lint(broken, strict=True)
    assert any(m["severity"] == 3 for m in report["messages"]) or report["errors"], report


# --- validate every manifest ------------------------------------------------------------------------------------


@needs_kv
@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_render_validates_strict_k8s_130(render: Callable[..., Manifests], values_file: Path | None) -> None:
    docs = render(load_values(values_file) if values_file else None)
    checked = validate_all(docs)
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(checked)


@needs_kv
def test_render_defaults_kinds(render: Callable[..., Manifests]) -> None:
    assert kinds(render()) == {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "Pod"}


@needs_kv
def test_render_gpu_hpa_servicemonitor_pdb_kinds(render: Callable[..., Manifests]) -> None:
    docs = render(gpu_values())
    assert {"HorizontalPodAutoscaler", "ServiceMonitor", "PodDisruptionBudget", "PersistentVolumeClaim"} <= kinds(docs)


@needs_kv
def test_validate_rejects_unknown_field(render: Callable[..., Manifests]) -> None:
    """Strict validation can fail: a typo'd field in the Deployment is refused."""
    dep = copy.deepcopy(only(render(), "Deployment"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container["readinessProbe"]
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, KUBE_VERSION, strict=True)


@needs_kv
def test_servicemonitor_shape_rejects_unknown_field(render: Callable[..., Manifests]) -> None:
    import jsonschema

    sm = copy.deepcopy(only(render(gpu_values()), "ServiceMonitor"))
    sm["spec"]["endpoints"][0]["scrapeInterval"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sm, SERVICE_MONITOR_SCHEMA)


KV_CLI = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")


@needs_kv
@pytest.mark.skipif(not Path(KV_CLI).exists(), reason="kubernetes-validate CLI not on PATH nor next to the interpreter")
def test_cli_validates_rendered_files(render: Callable[..., Manifests], tmp_path: Path) -> None:
    """The same check through the CLI a platform team would run: `kubernetes-validate --strict -k 1.30.0`."""
    exe = KV_CLI
    files = []
    for i, doc in enumerate(d for d in render(gpu_values()) if d["kind"] not in ("ServiceMonitor", "PrometheusRule")):
        f = tmp_path / f"{i:02d}-{doc['kind'].lower()}.yaml"
        f.write_text(yaml.safe_dump(doc))
        files.append(str(f))
    run = subprocess.run([exe, "--strict", "-k", KUBE_VERSION, "--quiet", *files], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# --- values.schema.json -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    if HELM_SKIP:
        pytest.skip(HELM_SKIP)
    yield helm.Chart.load(CHART)


def test_schema_accepts_defaults_and_ci_values(chart: Any) -> None:
    chart.validate_schema(None)
    for f in CI_VALUES:
        chart.validate_schema(load_values(f))


@pytest.mark.parametrize(
    "bad",
    [
        {"gpu": {"enabled": "yes"}},
        {"autoscaling": {"maxReplicas": 0}},
        {"config": {"maxBatchSize": 0}},
        {"config": {"notASetting": 1}},
        {"securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False}},
        {"podSecurityContext": {"runAsNonRoot": False}},
        {"model": {"source": "s3"}},
        {"gpu": {"requireProvider": "OpenVINOExecutionProvider"}},
        {"serviceMonitor": {"interval": "often"}},
        {"replicas": 3},
        {"prometheusRule": {"errorRatio": 2}},
        {"prometheusRule": {"latencyP99Seconds": 0}},
        {"prometheusRule": {"latencyFor": "soon"}},
        {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
        {"grafanaDashboard": {"enabled": "yes"}},
    ],
    ids=lambda v: yaml.safe_dump(v, default_flow_style=True).strip(),
)
def test_schema_rejects_bad_value(chart: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        chart.validate_schema(bad)
    with pytest.raises(helm.HelmError):  # and an install/template would refuse it too
        chart.render(bad, name="omr", namespace="omr")


def test_schema_describes_top_level_values(chart: Any) -> None:
    schema = chart.schema
    assert schema is not None
    assert set(chart.values) <= set(schema["properties"]), "a value missing from values.schema.json"
    undocumented = [k for k, v in schema["properties"].items() if not v.get("description")]
    assert not undocumented, undocumented
    for name in ("gpu", "autoscaling", "serviceMonitor", "podDisruptionBudget", "grafanaDashboard", "prometheusRule"):
        assert "enabled" in schema["properties"][name]["properties"], name


# --- what matters in production ---------------------------------------------------------------------------------


def test_probes_point_at_live_and_ready(render: Callable[..., Manifests]) -> None:
    c = server(render())
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {c[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {"http"}


@pytest.mark.parametrize(("gpu", "minimum_s"), [(False, 120), (True, 600)], ids=["cpu", "gpu"])
def test_startup_probe_budget_covers_warmup(render: Callable[..., Manifests], gpu: bool, minimum_s: int) -> None:
    """Load + warm-up (CPU) and a first TensorRT engine build (GPU) fit in the startup budget."""
    probe = server(render(gpu_values() if gpu else None))["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= minimum_s


def _config_env(docs: Manifests) -> dict[str, str]:
    """The service's settings ConfigMap (not the Grafana dashboard's)."""
    return only([d for d in docs if not d["metadata"]["name"].endswith("-dashboard")], "ConfigMap")["data"]


@pytest.mark.parametrize("values", [None, {"config": {"drainTimeoutS": 90, "shutdownDelayS": 7.5}}])
def test_grace_period_exceeds_drain(render: Callable[..., Manifests], values: dict[str, Any] | None) -> None:
    docs = render(values)
    env = _config_env(docs)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env.get("OMR_DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default))
    delay = float(env.get("OMR_SHUTDOWN_DELAY_S", Settings.model_fields["shutdown_delay_s"].default))
    assert pod["terminationGracePeriodSeconds"] > drain + delay + pre_stop


def test_grace_period_too_small_refused(render: Callable[..., Manifests]) -> None:
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"terminationGracePeriodSeconds": 20})


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_pod_security_hardened(render: Callable[..., Manifests], gpu: bool) -> None:
    docs = render(gpu_values() if gpu else None)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    c = pod["containers"][0]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts  # the read-only root needs a writable scratch dir
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in pod["topologySpreadConstraints"])


def test_gpu_resources_only_when_enabled(render: Callable[..., Manifests]) -> None:
    cpu_pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(cpu_pod)
    assert "runtimeClassName" not in cpu_pod
    assert cpu_pod["containers"][0]["image"].endswith(":0.1.0")

    docs = render(gpu_values())
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1 and res["requests"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["containers"][0]["image"].endswith(":0.1.0-gpu")
    env = _config_env(docs)
    cache = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}["trt-cache"]
    assert env["OMR_TRT_CACHE_DIR"] == cache
    assert env["OMR_REQUIRE_PROVIDER"] == "TensorrtExecutionProvider"
    claim = {v["name"]: v for v in pod["volumes"]}["trt-cache"]["persistentVolumeClaim"]["claimName"]
    assert only(docs, "PersistentVolumeClaim")["metadata"]["name"] == claim


def test_gpu_trt_cache_emptydir_without_claim(render: Callable[..., Manifests]) -> None:
    pod = only(render({"gpu": {"enabled": True}}), "Deployment")["spec"]["template"]["spec"]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["trt-cache"]


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_configmap_env_are_real_settings(
    render: Callable[..., Manifests], values_file: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every OMR_ variable the chart sets names a Settings field and parses with the service's own validators."""
    env = _config_env(render(load_values(values_file) if values_file else None))
    fields = set(Settings.model_fields)
    unknown = [k for k in env if k.removeprefix("OMR_").lower() not in fields]
    assert not unknown, f"not service settings: {unknown}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.port == 8000 and settings.host == "0.0.0.0"
    assert str(settings.model_repository) == env["OMR_MODEL_REPOSITORY"]


def test_configmap_cpu_providers_and_bundled_repository(render: Callable[..., Manifests]) -> None:
    env = _config_env(render())
    assert env["OMR_PROVIDERS"] == '["CPUExecutionProvider"]'
    assert env["OMR_MODEL_REPOSITORY"] == "/app/models/repository"  # the Dockerfile's WORKDIR + COPY


def test_config_change_rolls_pods(render: Callable[..., Manifests]) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        return only(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(None) != checksum({"config": {"maxBatchSize": 128}})


def test_hpa_queue_depth_metric_matches_service(render: Callable[..., Manifests]) -> None:
    """The HPA's Pods metric is the gauge service/metrics.py exports (its name, not a guess)."""
    from service.metrics import Metrics

    hpa = only(render(gpu_values()), "HorizontalPodAutoscaler")
    assert "replicas" not in only(render(gpu_values()), "Deployment")["spec"]  # the HPA owns the count
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    name = metrics["Pods"]["pods"]["metric"]["name"]
    exported = {m.name for m in Metrics().registry.collect()}
    assert name in exported, f"{name} not among {sorted(exported)}"


def test_hpa_without_metric_refused(render: Callable[..., Manifests]) -> None:
    with pytest.raises(helm.HelmError, match="needs a metric"):
        render({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}})


def test_pdb_and_servicemonitor_select_the_pods(render: Callable[..., Manifests]) -> None:
    docs = render(gpu_values())
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        sel = only(docs, kind)["spec"]["selector"]["matchLabels"]
        assert sel.items() <= pod_labels.items()
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    svc = only(docs, "Service")
    sm = only(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize(
    ("values_file", "expect"),
    [("model-volume-values.yaml", "persistentVolumeClaim"), ("model-init-values.yaml", "emptyDir")],
)
def test_model_source_mounts_repository(render: Callable[..., Manifests], values_file: str, expect: str) -> None:
    docs = render(load_values(CHART / "ci" / values_file))
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    models = {v["name"]: v for v in pod["volumes"]}["models"]
    assert expect in models
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["models"]
    assert mount["readOnly"] is True
    assert _config_env(docs)["OMR_MODEL_REPOSITORY"] == mount["mountPath"]
    if expect == "emptyDir":
        assert pod["initContainers"][0]["volumeMounts"][0]["mountPath"] == mount["mountPath"]


def test_model_volume_without_source_refused(render: Callable[..., Manifests]) -> None:
    with pytest.raises(helm.HelmError, match=r"model\.volume"):
        render({"model": {"source": "volume"}})


def test_auth_secret_mounted_as_token_file(render: Callable[..., Manifests]) -> None:
    docs = render(gpu_values())
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    secret = {v["name"]: v for v in pod["volumes"]}["auth-token"]["secret"]
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["auth-token"]
    assert secret["secretName"] == "omr-token"
    assert _config_env(docs)["OMR_AUTH_TOKEN_FILE"] == f"{mount['mountPath']}/{secret['items'][0]['path']}"


def test_servicemonitor_scrapes_with_token_when_metrics_need_auth(render: Callable[..., Manifests]) -> None:
    values = gpu_values() | {"config": {"authMetrics": True}}
    docs = render(values)
    validate_all(docs)
    endpoint = only(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "omr-token", "key": "token"}}
    assert _config_env(docs)["OMR_AUTH_METRICS"] == "true"
    with pytest.raises(helm.HelmError, match=r"authMetrics needs auth\.existingSecret"):
        render({"serviceMonitor": {"enabled": True}, "config": {"authMetrics": True}})


def test_schema_config_keys_are_settings(chart: Any) -> None:
    """Every `config` key the schema admits is a service setting (camelCase -> snake_case), and the chart-owned
    ones (bind address, repository, providers, token) are not settable there."""
    import re

    keys = set(chart.schema["properties"]["config"]["properties"])
    snake = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower() for k in keys}
    assert snake <= set(Settings.model_fields), snake - set(Settings.model_fields)
    assert not snake & {"host", "port", "model_repository", "providers", "auth_token", "auth_token_file"}


# --- dashboards and alerts --------------------------------------------------------------------------------------


def observability_values() -> dict[str, Any]:
    return load_values(CHART / "ci" / "observability-values.yaml")


def exported_series_names() -> set[str]:
    """Every series name the service can expose (service/metrics.py, the pod collector included), as PromQL
    sees it: counters with `_total`, histograms' `_bucket/_sum/_count`, Info as `_info`; plus Prometheus' `up`."""
    from service.metrics import Metrics

    class _Pod:
        workers = 2
        restarts = 0

        def ready_workers(self) -> int:
            return 2

    m = Metrics()
    m.add_pod(_Pod())
    names = {"up"}
    for fam in m.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names |= {fam.name + s for s in suffixes.get(fam.type, [""])}
    return names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (the tokens before `{` or `[`, or bare `omr_*`/`up`)."""
    import re

    return set(re.findall(r"\b(omr_[a-z_]+|up)\b(?=\s*[{\[)])", expr))


def dashboard(docs: Manifests) -> dict[str, Any]:
    import json

    cm = only([d for d in docs if d["metadata"]["name"].endswith("-dashboard")], "ConfigMap")
    (text,) = cm["data"].values()
    return json.loads(text)  # type: ignore[no-any-return]


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_observability_off_by_default(render: Callable[..., Manifests]) -> None:
    docs = render()
    assert "PrometheusRule" not in kinds(docs)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-dashboard")]


def test_dashboard_configmap_carries_the_sidecar_label(render: Callable[..., Manifests]) -> None:
    docs = render(observability_values())
    cm = only([d for d in docs if d["metadata"]["name"].endswith("-dashboard")], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "OMR"}
    dash = dashboard(docs)
    assert dash["uid"] == "omr-classifier" and dash["panels"]
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("requests/s", "errors/s by status", "latency", "batch size", "batch fill", "queue depth", "429",
                  "where the time goes", "provider", "pods", "grpc"):  # fmt: skip
        assert topic in titles, f"no panel about {topic!r}: {titles}"
    custom = render({"grafanaDashboard": {"enabled": True, "labels": {"dash": "omr"}}})
    labels = only([d for d in custom if d["metadata"]["name"].endswith("-dashboard")], "ConfigMap")["metadata"]
    assert labels["labels"]["dash"] == "omr" and labels["labels"]["grafana_dashboard"] == "1"  # Helm merges maps


def test_dashboard_and_alerts_use_exported_metric_names(render: Callable[..., Manifests]) -> None:
    """Each series a panel or an alert selects is one service/metrics.py really exports (not a guess)."""
    docs = render(observability_values())
    exported = exported_series_names()
    rules = only(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    for expr in dashboard_exprs(dashboard(docs)) + [r["expr"] for r in rules]:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported (from {expr})"


def test_prometheusrule_alerts_select_this_service(render: Callable[..., Manifests]) -> None:
    """The alerts a platform team expects, each on the job the ServiceMonitor's scrape gives (the Service name)."""
    docs = render(observability_values())
    validate_all(docs)
    rule = only(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(rules) == {"OMRLatencyP99AboveSLO", "OMRHighErrorRatio", "OMRSustained429s", "OMRQueueBacklog",
                          "OMRPodsNotReady"}  # fmt: skip
    service = only(docs, "Service")["metadata"]["name"]
    for name, r in rules.items():
        assert f'job="{service}"' in r["expr"] and 'namespace="omr"' in r["expr"], name
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], name
    assert rules["OMRLatencyP99AboveSLO"]["expr"].rstrip().endswith("> 0.5")
    tuned = render(observability_values() | {"prometheusRule": {"enabled": True, "latencyP99Seconds": 0.25,
                                                                "latencyFor": "2m"}})  # fmt: skip
    latency = only(tuned, "PrometheusRule")["spec"]["groups"][0]["rules"][0]
    assert latency["expr"].rstrip().endswith("> 0.25") and latency["for"] == "2m"


def test_prometheusrule_shape_rejects_unknown_field(render: Callable[..., Manifests]) -> None:
    import jsonschema

    rule = copy.deepcopy(only(render(observability_values()), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["duration"] = "5m"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
