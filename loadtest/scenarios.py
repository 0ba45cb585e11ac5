"""The service traffic shapes the benchmark measures with wrk, and one checked request per shape first.

A scenario is a set of prepared bodies, a concurrency and a crops-per-request count. Before loading the
service with a shape, one request of it is sent and its response checked (one result per crop, ids in
order), so a benchmark never reports the speed of error responses.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from loadtest import wrkrun
from loadtest.crops import CropPool, check_response
from loadtest.server import Service


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    crops_per_request: int
    connections: int
    bodies: tuple[wrkrun.Body, ...]
    expected_ids: tuple[str, ...] | None  # ids of bodies[0]'s crops, None when the service numbers them


def sheets_json(pool: CropPool, crops: int, connections: int, n_bodies: int = 16, name: str = "sheets") -> Scenario:
    bodies, first_ids = [], None
    for k in range(n_bodies):
        data, ids = pool.json_body(k * crops, crops, prefix=f"s{k}-")
        bodies.append(wrkrun.Body(data, "application/json"))
        first_ids = first_ids or tuple(ids)
    desc = f"{crops} base64-PNG crops/request, {connections} clients"
    return Scenario(name, desc, crops, connections, tuple(bodies), first_ids)


def single_json(pool: CropPool, connections: int, n_bodies: int = 256) -> Scenario:
    bodies, first_ids = [], None
    for k in range(n_bodies):
        data, ids = pool.json_body(k, 1, prefix=f"u{k}-")
        bodies.append(wrkrun.Body(data, "application/json"))
        first_ids = first_ids or tuple(ids)
    desc = f"1 base64-PNG crop/request, {connections} clients"
    return Scenario("single", desc, 1, connections, tuple(bodies), first_ids)


def sheets_raw(pool: CropPool, crops: int, connections: int, n_bodies: int = 16) -> Scenario:
    bodies = []
    for k in range(n_bodies):
        data, headers = pool.raw_body(k * crops, crops)
        bodies.append(wrkrun.Body(data, headers["Content-Type"], f"X-Crop-Shape: {headers['X-Crop-Shape']}"))
    desc = f"raw uint8 [{crops},32,32] tensor/request, {connections} clients"
    return Scenario("sheets-raw", desc, crops, connections, tuple(bodies), None)


def check_once(svc: Service, sc: Scenario, timeout_s: float = 30.0) -> None:
    """POST the scenario's first body and verify the response; raises with the reason if it is wrong."""
    body = sc.bodies[0]
    headers = {"Content-Type": body.content_type}
    if body.header:
        key, value = body.header.split(":", 1)
        headers[key.strip()] = value.strip()
    req = urllib.request.Request(f"{svc.url}/classify", data=body.data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            payload = r.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{sc.name}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
    ids = sc.expected_ids or tuple(str(i) for i in range(sc.crops_per_request))
    why = check_response(payload, ids, sc.crops_per_request)
    if why:
        raise RuntimeError(f"{sc.name}: bad response: {why}")


#: histograms whose mean per observation the benchmark reports (where a request's time goes)
STAGES = {
    "omr_request_duration_seconds": "request_ms",
    "omr_preprocess_duration_seconds": "preprocess_ms",
    "omr_queue_wait_seconds": "queue_wait_ms",
    "omr_inference_duration_seconds": "batch_inference_ms",
    "omr_batch_size_rows": "batch_rows",
}


def histogram_totals(svc: Service) -> dict[str, tuple[float, float]]:
    """(sum, count) per histogram named in STAGES, over all label values, from GET /metrics."""
    try:
        with urllib.request.urlopen(f"{svc.url}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for family in text_string_to_metric_families(text):
        if family.name not in STAGES:
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                out[family.name][0] += sample.value
            elif sample.name.endswith("_count"):
                out[family.name][1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean per observation of each stage between two scrapes (ms for durations, rows for batch size)."""
    means = {}
    for name, label in STAGES.items():
        if name in before and name in after and after[name][1] > before[name][1]:
            mean = (after[name][0] - before[name][0]) / (after[name][1] - before[name][1])
            means[label] = mean * 1e3 if label.endswith("_ms") else mean
    return means


def measure(svc: Service, sc: Scenario, duration_s: float, warmup_s: float) -> dict[str, object]:
    """Warm up, then one bounded wrk run; crops/s, latency, and crops per CPU-second of the service."""
    check_once(svc, sc)
    url = f"{svc.url}/classify"
    if warmup_s > 0:
        wrkrun.run(url, list(sc.bodies), sc.connections, warmup_s)
    hist0 = histogram_totals(svc)
    cpu0, t0 = svc.cpu_seconds(), time.monotonic()
    res = wrkrun.run(url, list(sc.bodies), sc.connections, duration_s)
    cpu = svc.cpu_seconds() - cpu0
    elapsed = time.monotonic() - t0
    stages = stage_means(hist0, histogram_totals(svc))
    ok_requests = res.requests - res.errors["status"]
    crops = ok_requests * sc.crops_per_request
    return {
        "scenario": sc.name,
        "description": sc.description,
        "connections": sc.connections,
        "crops_per_request": sc.crops_per_request,
        "crops_per_s": crops / res.duration_s if res.duration_s else 0.0,
        "service_cpu_s": cpu,
        "service_cores_used": cpu / elapsed if elapsed else 0.0,
        "crops_per_service_cpu_s": crops / cpu if cpu > 0 else 0.0,
        "rss_mb": svc.rss_bytes() / 2**20,
        "load_avg_1m": os.getloadavg()[0],  # the machine is shared: how busy it was during this run
        "stages": stages,
        **res.to_dict(),
    }


def http_floor(svc: Service, duration_s: float, connections: int = 64) -> dict[str, object]:
    """GET /healthz under load: the HTTP stack's own cost per request (no body, no model), for comparison."""
    url = f"{svc.url}/healthz"
    wrkrun.run(url, [], connections, 1)
    cpu0 = svc.cpu_seconds()
    res = wrkrun.run(url, [], connections, duration_s)
    cpu = svc.cpu_seconds() - cpu0
    ok = res.requests - res.errors["status"]
    return {
        "connections": connections,
        "cpu_us_per_request": cpu / ok * 1e6 if ok else 0.0,
        "load_avg_1m": os.getloadavg()[0],
        **res.to_dict(),
    }
