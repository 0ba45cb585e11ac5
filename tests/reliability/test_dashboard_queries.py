"""The chart's Grafana dashboard and PrometheusRule, run for real: every PromQL expression parses (`promtool
check rules`) and returns series from a real Prometheus scraping the real service under load.

Set-up, all on 127.0.0.1: the chart rendered with the alert thresholds set to fire on this load (p99 SLO 1 us,
error and 429 ratios 0, queue depth 0); two `python -m service` processes scraped every second under one job
named like the chart's Service (`omr-omr-classifier`, namespace label `omr`, as a ServiceMonitor scrape labels
them) plus one dead target (for `up == 0`):
- "ok": 2 workers (multiprocess metrics, the pod collector), gRPC on; valid JSON and a few bad crops (422) and
  gRPC ServerLive/ServerReady/ModelMetadata calls;
- "overloaded": 1 worker (single-process metrics), a queue limit of 8 rows and a 5 ms deadline, driven by
  concurrent senders: 429s (queue full) and 504s (deadline).
The rendered rules are also loaded into Prometheus as a rule file: each must evaluate with health "ok" and
reach pending or firing. The load runs until every expression has answered (polled, bounded) - no sleeps.
Dashboard variables: `$namespace` -> omr, `$job` -> the Service name, `$__rate_interval` -> 30s.
And with the chart's default thresholds, `promtool test rules` on synthetic series: a healthy pod (0.5 % 5xx,
0.5 % 429s, p99 < 100 ms, 300 rows queued) and an idle one raise nothing; a pod that stops being ready raises
OMRPodsNotReady after its 10 minutes, not before.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest import server as service_process

from ._support import json_crops, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.needs_tool("prometheus", "promtool")]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "omr-classifier"
RELEASE = NAMESPACE = "omr"
JOB = "omr-omr-classifier"  # the chart's fullname for release "omr": the Service, hence the scrape job
TRIGGER = {
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "latencyP99Seconds": 1e-6, "errorRatio": 0, "overloadRatio": 0,
                       "queueDepthRows": 0},
}  # fmt: skip
#: panels whose series exist only after something breaks (no load can make them without a fault)
ONLY_ON_FAULT = {"omr_batch_failures_total": "a model call that raised"}
DEADLINE_S = 120


def render() -> tuple[dict[str, Any], dict[str, Any]]:
    """(dashboard JSON, PrometheusRule spec) from the chart with the TRIGGER values."""
    try:
        import helm_python as helm

        chart = helm.Chart.load(CHART)
    except Exception as exc:
        pytest.fail(f"helm-python-sdk cannot render the chart: {type(exc).__name__}: {exc}")
    out = chart.render(TRIGGER, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    (text,) = cm["data"].values()
    return json.loads(text), rule["spec"]


def dashboard_queries(dash: dict[str, Any]) -> dict[str, str]:
    """{panel title / legend: expr} with the dashboard variables substituted."""
    subst = {"$__rate_interval": "30s", "$namespace": NAMESPACE, "$job": JOB}
    out = {}
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for k, v in subst.items():
                expr = expr.replace(k, v)
            assert "$" not in expr, f"unknown dashboard variable in {expr}"
            out[f"{panel['title']} / {t['legendFormat'] or t['refId']}"] = expr
    return out


def promtool_check(tmp_path: Path, groups: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    f = tmp_path / f"rules-{len(list(tmp_path.glob('rules-*')))}.yml"
    f.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    dash, spec = render()
    records = [{"record": f"omr:dashboard:{i}", "expr": e} for i, e in enumerate(dashboard_queries(dash).values())]
    run = promtool_check(tmp_path, [{"name": "dashboard", "rules": records}])
    assert run.returncode == 0, run.stdout + run.stderr
    run = promtool_check(tmp_path, spec["groups"])  # the alerts as the Prometheus Operator hands them over
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(spec['groups'][0]['rules'])} rules found" in run.stdout, run.stdout


def test_promtool_refuses_a_broken_expression(tmp_path: Path) -> None:
    """The parse check can fail: an unbalanced expression and an unknown function are reported."""
    for expr in ["sum(rate(omr_requests_total[5m])", "histogram_quantil(0.99, omr_request_duration_seconds_bucket)"]:
        run = promtool_check(tmp_path, [{"name": "bad", "rules": [{"record": "omr:bad", "expr": expr}]}])
        assert run.returncode != 0, expr


@dataclass
class Pods:
    ok: service_process.Service
    overloaded: service_process.Service
    grpc_port: int
    dead_port: int


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    logs = tmp_path_factory.mktemp("svc")
    grpc_port = service_process.free_port()
    ok = service_process.start({"OMR_WORKERS": "2", "OMR_GRPC_PORT": str(grpc_port)}, logs / "ok.log")
    try:
        overloaded = service_process.start(
            {"OMR_WORKERS": "1", "OMR_GRPC_PORT": "0", "OMR_QUEUE_LIMIT": "8", "OMR_REQUEST_TIMEOUT_S": "0.005"},
            logs / "overloaded.log",
        )
        try:
            yield Pods(ok, overloaded, grpc_port, service_process.free_port())
        finally:
            service_process.stop(overloaded)
    finally:
        service_process.stop(ok)


@pytest.fixture
def prometheus(pods: Pods, tmp_path: Path) -> Iterator[str]:
    _, spec = render()
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    port = service_process.free_port()
    targets = [f"127.0.0.1:{p}" for p in (pods.ok.port, pods.overloaded.port, pods.dead_port)]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets,
                                                                 "labels": {"namespace": NAMESPACE}}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while api(base, "/-/ready", raw=True) != 200:
            assert proc.poll() is None, (
                f"prometheus exited {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()}"
            )
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.2)  # another process starting: its socket is the only thing to watch
        yield base
    finally:
        stop_process(proc)
        log.close()


def api(base: str, path: str, raw: bool = False, **params: str) -> Any:
    url = f"{base}{path}" + (("?" + urllib.parse.urlencode(params)) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status if raw else json.loads(r.read())
    except OSError:
        if raw:
            return 0
        raise


def post(port: int, body: bytes, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/classify", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def load(pods: Pods, stop: threading.Event, statuses: dict[str, set[int]]) -> list[threading.Thread]:
    """Background senders until `stop`: valid and bad JSON to "ok", gRPC calls to "ok", bursts to "overloaded"."""
    good = json.dumps(json_crops(16)).encode()
    bad = json.dumps({"crops": [{"id": "broken", "image": base64.b64encode(b"not an image").decode()}]}).encode()
    burst = json.dumps(json_crops(16, prefix="b")).encode()

    def ok_sender() -> None:
        n = 0
        while not stop.is_set():
            statuses["ok"].add(post(pods.ok.port, bad if n % 10 == 9 else good))
            n += 1

    def grpc_sender() -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{pods.grpc_port}")
        try:
            while not stop.is_set():
                client.is_server_live()
                client.is_server_ready()
                client.get_model_metadata("omr-bubble")
                stop.wait(0.05)
        finally:
            client.close()

    def burst_sender() -> None:
        while not stop.is_set():
            statuses["overloaded"].add(post(pods.overloaded.port, burst))

    threads = [threading.Thread(target=ok_sender) for _ in range(2)] + [threading.Thread(target=grpc_sender)]
    threads += [threading.Thread(target=burst_sender) for _ in range(6)]
    for t in threads:
        t.start()
    return threads


def test_every_expression_returns_series_under_load(pods: Pods, prometheus: str) -> None:
    dash, spec = render()
    queries = dashboard_queries(dash)
    queries |= {f"alert {r['alert']}": r["expr"] for r in spec["groups"][0]["rules"]}
    skipped = {k: e for k, e in queries.items() if any(name in e for name in ONLY_ON_FAULT)}
    pending = {k: e for k, e in queries.items() if k not in skipped}
    alerts: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    statuses: dict[str, set[int]] = {"ok": set(), "overloaded": set()}
    threads = load(pods, stop, statuses)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while pending or len(alerts) < len(spec["groups"][0]["rules"]):
            for key, expr in list(pending.items()):
                doc = api(prometheus, "/api/v1/query", query=expr)
                assert doc["status"] == "success", (key, doc)
                if doc["data"]["result"]:
                    del pending[key]
            rules = api(prometheus, "/api/v1/rules", type="alert")["data"]["groups"]
            alerts = {r["name"]: r for g in rules for r in g["rules"] if r["state"] in ("pending", "firing")}
            if time.monotonic() > deadline:
                break
            stop.wait(1.0)  # Prometheus scrapes/evaluates every 1 s: look again after the next round
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print(f"statuses seen: {statuses}; {len(queries) - len(skipped)} expressions answered; "
          f"not run (need a fault): {sorted(skipped)}")  # fmt: skip
    assert not pending, f"no series after {DEADLINE_S} s for: {json.dumps(pending, indent=1)}; statuses {statuses}"
    rules = {r["name"]: r for g in api(prometheus, "/api/v1/rules")["data"]["groups"] for r in g["rules"]}
    assert {n: r["health"] for n, r in rules.items() if r["health"] != "ok"} == {}
    assert set(alerts) == {r["alert"] for r in spec["groups"][0]["rules"]}, sorted(alerts)
    assert {429, 504} <= statuses["overloaded"] and 422 in statuses["ok"], statuses
    assert all(re.search(r"\bomr_|\bup\b", e) for e in queries.values())


def render_defaults() -> dict[str, Any]:
    """The PrometheusRule spec with the chart's default thresholds."""
    import helm_python as helm

    out = helm.Chart.load(CHART).render({"prometheusRule": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE,
                                        is_install=True)  # fmt: skip
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]  # type: ignore[no-any-return]


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {"namespace": NAMESPACE, "job": JOB, "instance": "10.0.0.1:8000", **labels}
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in all_labels.items()) + "}", "values": values}


def healthy_pod(instance: str = "10.0.0.1:8000", ready: str = "1x40", up: str = "1x40") -> list[dict[str, str]]:
    """40 minutes of a healthy pod at 100 req/s: 0.5 % 5xx, 0.5 % 429, p99 in the 75-100 ms buckets, 300 rows
    queued, probes ignored by the rules. Counters in samples per minute (rate = per minute / 60)."""
    s = functools.partial(_series, instance=instance)
    ok = {"endpoint": "/classify", "status": "200"}
    out = [
        s("omr_requests_total", "0+6000x40", **ok),
        s("omr_requests_total", "0+30x40", endpoint="/classify", status="504"),
        s("omr_requests_total", "0+30x40", endpoint="/classify", status="429"),
        s("omr_requests_total", "0+600x40", endpoint="/readyz", status="503"),  # probes: never counted
        s("omr_queue_depth_rows", "300x40", model="omr-bubble"),
        s("omr_ready", ready),
        s("up", up),
    ]
    for le, per_min in [("0.05", 5000), ("0.075", 5900), ("0.1", 6000), ("+Inf", 6000)]:
        out.append(s("omr_request_duration_seconds_bucket", f"0+{per_min}x40", le=le, **ok))
    return out


def promtool_test(tmp_path: Path, spec: dict[str, Any], tests: list[dict[str, Any]]) -> None:
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    doc = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(doc))
    run = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_default_thresholds_stay_quiet_on_a_healthy_pod(tmp_path: Path) -> None:
    """`promtool test rules` with the chart's defaults: a healthy pod (and one with no traffic at all) raises no
    alert; a pod that stops reporting ready raises OMRPodsNotReady only after its 10 minutes."""
    spec = render_defaults()
    alerts = [r["alert"] for r in spec["groups"][0]["rules"]]
    quiet = [{"eval_time": "35m", "alertname": a, "exp_alerts": []} for a in alerts]
    idle_pod = functools.partial(_series, instance="10.0.0.2:8000")
    idle = [idle_pod("omr_ready", "1x40"), idle_pod("up", "1x40"),
            idle_pod("omr_requests_total", "0x40", endpoint="/classify", status="200")]  # fmt: skip
    not_ready = {"exp_labels": {"severity": "warning", "namespace": NAMESPACE, "job": JOB},
                 "exp_annotations": {
                     "summary": f"1 pod(s) of {JOB} not ready or not scraped",
                     "description": "A pod reports omr_ready 0 (loading, a worker down, draining) or Prometheus cannot "
                                    "scrape it (up 0) for 10m."}}  # fmt: skip
    promtool_test(tmp_path, spec, [
        {"interval": "1m", "input_series": healthy_pod() + idle, "alert_rule_test": quiet},
        {"interval": "1m", "input_series": healthy_pod(ready="1x10 0x30"), "alert_rule_test": [
            {"eval_time": "15m", "alertname": "OMRPodsNotReady", "exp_alerts": []},  # pending: 5 of its 10 minutes
            {"eval_time": "25m", "alertname": "OMRPodsNotReady", "exp_alerts": [not_ready]},
            {"eval_time": "25m", "alertname": "OMRHighErrorRatio", "exp_alerts": []},
        ]},
    ])  # fmt: skip
