"""Benchmark figures -> the issue's ratios and targets, and the markdown table the README quotes.

Two fractions of the ceiling are reported, because the service and its load generator share the machine:
- per core (the target): service crops per CPU-second of the service process / in-process crops per
  CPU-second (decode + preprocess + infer). 100 % means the HTTP layer, JSON and batching cost nothing.
- wall vs one core: service crops/s / one core's in-process crops/s (the service may use more than one core).
"""

from __future__ import annotations

from typing import Any

from loadtest import rounds

TARGET_MODEL = 20_000.0  # crops/s/core, in-process, default model
TARGET_FRACTION = 0.50  # service sheet traffic / in-process decode+infer ceiling
TARGET_BATCHING = 3.0  # single-crop traffic, batching on / off
TARGET_IDLE_P99_MS = 10.0  # one 100-crop sheet at a time
# issue 13: every core, and the peers (TorchServe, the naive FastAPI baseline) side by side in the same run
TARGET_VS_REFERENCE_SHEETS = 1.5  # sheets crops/s / the best peer's
TARGET_VS_REFERENCE_SINGLE = 1.5  # single crops crops/s / TorchServe's
#: result keys of the peers: "reference" is TorchServe, "baseline" the naive FastAPI app
PEERS = ("reference", "baseline")
TARGET_CORES_FRACTION = 0.80  # sheets crops/s / (in-process decode+infer ceiling per core x the cores given)
#: a scenario with more failed requests than this is reported but not used for a target (figures of 429s)
MAX_FAILED_RATIO = 0.01


def _scenario(result: dict[str, Any], mode: str, name: str) -> dict[str, Any] | None:
    """A measured scenario whose requests (nearly) all succeeded; None if absent or mostly failures."""
    svc = result.get("service", {})
    for row in svc.get(mode, {}).get("scenarios", []):
        if row["scenario"] == name:
            return row if row["failed"] <= MAX_FAILED_RATIO * max(1, row["requests"]) else None
    return None


def invalid_scenarios(result: dict[str, Any]) -> list[str]:
    svc = result.get("service", {})
    return [
        f"{mode} {row['scenario']} ({row['failed']} of {row['requests']} requests failed)"
        for mode, body in svc.items()
        if isinstance(body, dict)
        for row in body.get("scenarios", [])
        if row["failed"] > MAX_FAILED_RATIO * max(1, row["requests"])
    ]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    variant = result["service_variant"]
    ceil = result["ceiling"].get(variant) or next(iter(result["ceiling"].values()))
    sheet_crops = str(result["settings"]["sheet_crops"])
    pipe = ceil["pipeline"][sheet_crops]["pipeline"]["crops_per_s_per_core"]
    s: dict[str, Any] = {
        "model_crops_per_s_per_core": ceil["best_crops_per_s_per_core"],
        "model_best_batch": ceil["best_batch"],
        "pipeline_crops_per_s_per_core": pipe,
        "variants": {k: v["best_crops_per_s_per_core"] for k, v in result["ceiling"].items()},
    }
    targets = [_target("model in-process, crops/s/core", TARGET_MODEL, s["model_crops_per_s_per_core"], ">=")]
    on_sheet = _scenario(result, "batching_on", "sheets")
    if on_sheet:
        s["sheet_fraction_per_core"] = on_sheet["crops_per_service_cpu_s"] / pipe
        s["sheet_fraction_wall_vs_1core"] = on_sheet["crops_per_s"] / pipe
        frac = s["sheet_fraction_per_core"]
        targets.append(_target("service sheets / ceiling (per core)", TARGET_FRACTION, frac, ">="))
    on_single, off_single = _scenario(result, "batching_on", "single"), _scenario(result, "batching_off", "single")
    if on_single and off_single and off_single["crops_per_s"] > 0:
        s["single_batching_speedup"] = on_single["crops_per_s"] / off_single["crops_per_s"]
        targets.append(_target("single crops, batching on/off", TARGET_BATCHING, s["single_batching_speedup"], ">="))
    on_s, off_s = on_sheet, _scenario(result, "batching_off", "sheets")
    if on_s and off_s and off_s["crops_per_s"] > 0:
        s["sheet_batching_speedup"] = on_s["crops_per_s"] / off_s["crops_per_s"]
    floor = result.get("service", {}).get("batching_on", {}).get("http_floor")
    if floor and on_single and on_single["crops_per_service_cpu_s"]:
        s["single_cpu_us_per_request"] = 1e6 / on_single["crops_per_service_cpu_s"]
        s["http_floor_cpu_us_per_request"] = floor["cpu_us_per_request"]
    idle = _scenario(result, "batching_on", "idle-sheet")
    if idle:
        s["idle_sheet_p99_ms"] = idle["p99_ms"]
        targets.append(_target("one 100-crop sheet at idle, p99 ms", TARGET_IDLE_P99_MS, idle["p99_ms"], "<="))
    _every_core(result, s, targets, pipe, ceil.get("pipeline_parallel"), on_sheet, on_single)
    s["targets"] = targets
    s["invalid_scenarios"] = invalid_scenarios(result)
    return s


def _reference_row(result: dict[str, Any], name: str, peer: str = "reference") -> dict[str, Any] | None:
    for row in result.get(peer, {}).get("scenarios", []):
        if row["scenario"] == name:
            return row if row["failed"] <= MAX_FAILED_RATIO * max(1, row["requests"]) else None
    return None


def _best_peer(result: dict[str, Any], name: str) -> tuple[str, dict[str, Any]] | None:
    """(server name, row) of the peer with the most crops/s on scenario `name`, None when no peer ran it."""
    rows = [(result[p]["server"], row) for p in PEERS if (row := _reference_row(result, name, p)) is not None]
    return max(rows, key=lambda r: r[1]["crops_per_s"]) if rows else None


def _every_core(
    result: dict[str, Any],
    s: dict[str, Any],
    targets: list[dict[str, Any]],
    pipe: float,
    parallel: dict[str, Any] | None,
    on_sheet: dict[str, Any] | None,
    on_single: dict[str, Any] | None,
) -> None:
    """Issue 13's ratios: the cores' ceiling, the reference server, and what the extra workers brought."""
    cores = int(result["machine"].get("container_cpus") or result["machine"].get("cores") or 1)
    s["cores"] = cores
    s["workers"] = result.get("service", {}).get("batching_on", {}).get("workers")
    if on_sheet:
        s["sheet_fraction_of_cores_x_one"] = on_sheet["crops_per_s"] / (pipe * cores)
        if parallel and parallel["crops_per_s"] > 0:  # measured with `cores` threads at once (ceiling.py)
            s["cores_ceiling_crops_per_s"] = parallel["crops_per_s"]
            s["sheet_fraction_of_cores_ceiling"] = on_sheet["crops_per_s"] / parallel["crops_per_s"]
            name = f"sheets / in-process ceiling of {cores} cores ({cores} threads, measured)"
        else:  # an older result: one thread's rate times the cores
            s["sheet_fraction_of_cores_ceiling"] = s["sheet_fraction_of_cores_x_one"]
            name = f"sheets / in-process ceiling of {cores} cores (wall)"
        targets.append(_target(name, TARGET_CORES_FRACTION, s["sheet_fraction_of_cores_ceiling"], ">="))
    ref_sheet, ref_single = _reference_row(result, "sheets"), _reference_row(result, "single")
    if on_sheet and ref_sheet and ref_sheet["crops_per_s"] > 0:
        s["sheets_vs_reference"] = on_sheet["crops_per_s"] / ref_sheet["crops_per_s"]
    best = _best_peer(result, "sheets")
    if on_sheet and best and best[1]["crops_per_s"] > 0:
        s["sheets_best_peer"] = best[0]
        s["sheets_vs_best_peer"] = on_sheet["crops_per_s"] / best[1]["crops_per_s"]
        targets.append(_target(f"sheets / best peer ({best[0]})", TARGET_VS_REFERENCE_SHEETS,
                               s["sheets_vs_best_peer"], ">="))  # fmt: skip
    base_single = _reference_row(result, "single", "baseline")
    if on_single and base_single and base_single["crops_per_s"] > 0:
        s["single_vs_baseline"] = on_single["crops_per_s"] / base_single["crops_per_s"]
    if on_single and ref_single and ref_single["crops_per_s"] > 0:
        s["single_vs_reference"] = on_single["crops_per_s"] / ref_single["crops_per_s"]
        targets.append(_target("single crops / TorchServe", TARGET_VS_REFERENCE_SINGLE, s["single_vs_reference"],
                               ">="))  # fmt: skip
    # per CPU-second of each server: robust when the machine is shared (each gets what the scheduler leaves it)
    for shape, pod, ref_row in (("sheets", on_sheet, ref_sheet), ("single", on_single, ref_single)):
        if pod and ref_row and ref_row["crops_per_service_cpu_s"] > 0:
            s[f"{shape}_vs_reference_per_cpu"] = pod["crops_per_service_cpu_s"] / ref_row["crops_per_service_cpu_s"]
    for shape in ("sheets", "single"):
        one = _scenario(result, "one_worker", shape)
        pod = on_sheet if shape == "sheets" else on_single
        if one and pod and one["crops_per_s"] > 0:
            s[f"{shape}_workers_speedup"] = pod["crops_per_s"] / one["crops_per_s"]


def _target(name: str, target: float, measured: float, op: str) -> dict[str, Any]:
    met = measured >= target if op == ">=" else measured <= target
    return {"name": name, "target": f"{op} {target:g}", "measured": measured, "met": met}


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["summary"]
    lines = [
        f"### Benchmark {result['date']} — {result['model']} (service variant {result['service_variant']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, load avg {m['load_avg_1m_at_start']:.2f} at start; "
        f"Python {m['python']}, onnxruntime {m['onnxruntime']}; crops: {result['crop_source']}; "
        f"nice {result['settings'].get('priority') or 0}. "
        f"Run time {result.get('elapsed_s', '?')} s.",
        "",
        "**In-process ceiling** (1 intra-op thread; crops/s per CPU-second of the thread)",
        "",
        "| variant | " + " | ".join(f"b={r['batch']}" for r in next(iter(result["ceiling"].values()))["model"]) + " |",
        "|---|" + "---:|" * len(next(iter(result["ceiling"].values()))["model"]),
    ]
    for variant, c in result["ceiling"].items():
        lines.append(f"| {variant} model | " + " | ".join(_fmt(r["crops_per_s_per_core"]) for r in c["model"]) + " |")
    lines += ["", "| variant | batch | decode+preprocess | decode+preprocess+model |", "|---|---:|---:|---:|"]
    for variant, c in result["ceiling"].items():
        for b, p in c["pipeline"].items():
            lines.append(
                f"| {variant} | {b} | {_fmt(p['preprocess']['crops_per_s_per_core'])} | "
                f"{_fmt(p['pipeline']['crops_per_s_per_core'])} |"
            )
    for variant, c in result["ceiling"].items():
        par = c.get("pipeline_parallel")
        if par:
            one = c["pipeline"][str(par["batch"])]["pipeline"]["crops_per_s_per_core"]
            lines += ["", f"Measured ceiling of the cores given ({variant}): {par['threads']} threads at once, each "
                      f"decode+preprocess+model on {par['batch']}-crop groups: {_fmt(par['crops_per_s'])} crops/s "
                      f"({par['crops_per_s'] / max(1e-9, one):.2f}x "
                      "one thread's rate)."]  # fmt: skip
    stages = next(iter(result["ceiling"].values())).get("stage_us_per_crop", {})
    if stages:
        lines += ["", "CPU µs per crop by step (" + next(iter(result["ceiling"])) + "): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + "."]  # fmt: skip
    svc = result.get("service", {})
    if "skipped" in svc:
        lines += ["", f"**Service**: skipped ({svc['skipped']})"]
    else:
        lines += [
            "",
            "**Service** (`python -m service`, wrk closed loop, 127.0.0.1; default settings (on: "
            f"{svc.get('batching_on', {}).get('workers', '?')} workers) except OMR_ADMISSION_MAX_WAIT_MS=10000; "
            "one_worker: OMR_WORKERS=1; batching off: OMR_MAX_BATCH_SIZE=1 OMR_MAX_DELAY_MS=0)",
            "",
            "| batching | traffic | crops/s | req/s | p50 ms | p99 ms | failed | service cores | crops/service-CPU-s "
            "| load avg |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, body in svc.items():
            for r in body["scenarios"]:
                lines.append(
                    f"| {mode.removeprefix('batching_')} | {r['scenario']}: {r['description']} | "
                    f"{_fmt(r['crops_per_s'])} | {_fmt(r['rps'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                    f"{r['failed']} | {r['service_cores_used']:.2f} | {_fmt(r['crops_per_service_cpu_s'])} | "
                    f"{r.get('load_avg_1m', float('nan')):.1f} |"
                )
        floor = svc.get("batching_on", {}).get("http_floor")
        if floor:
            lines += [
                "",
                f"HTTP floor (GET /healthz, {floor['connections']} clients): {_fmt(floor['rps'])} req/s, "
                f"{floor['cpu_us_per_request']:.0f} µs of service CPU per request, p99 {floor['p99_ms']:.1f} ms.",
            ]
        lines += [
            "",
            "Where the time goes (means over the run, from the service's own histograms at /metrics):",
            "",
            "| batching | traffic | request ms | preprocess ms | queue wait ms | model call ms | rows/model call |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for mode, body in svc.items():
            for r in body["scenarios"]:
                st = r.get("stages", {})
                cells = [st.get(k) for k in ("request_ms", "preprocess_ms", "queue_wait_ms", "batch_inference_ms")]
                rows = st.get("batch_rows")
                lines.append(
                    f"| {mode.removeprefix('batching_')} | {r['scenario']} | "
                    + " | ".join("–" if c is None else f"{c:.1f}" for c in cells)
                    + f" | {'–' if rows is None else f'{rows:.1f}'} |"
                )
    for key, title in zip(PEERS, ("Reference", "Baseline"), strict=True):
        ref = result.get(key, {})
        if ref.get("scenarios"):
            lines += ["", f"**{title}**: {ref['server']} (same bodies, same wrk)", "",
                      "| traffic | crops/s | p50 ms | p99 ms | failed | server cores | RSS MB | load avg |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for r in ref["scenarios"]:
                lines.append(
                    f"| {r['scenario']}: {r['description']} | {_fmt(r['crops_per_s'])} | {r['p50_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['failed']} | {r['service_cores_used']:.2f} | {r['rss_mb']:.0f} | "
                    f"{r['load_avg_1m']:.1f} |"
                )
        elif ref.get("skipped"):
            lines += ["", f"**{title}**: not run ({ref['skipped']})"]
    lines += ["", "**Targets** (issues 6 and 13)", "", "| target | goal | measured | met |", "|---|---:|---:|:-:|"]
    for t in s["targets"]:
        lines.append(f"| {t['name']} | {t['target']} | {_fmt(t['measured'])} | {'yes' if t['met'] else 'NO'} |")
    if s.get("invalid_scenarios"):
        bad = "; ".join(s["invalid_scenarios"])
        lines += ["", f"**Not used for targets** (> {MAX_FAILED_RATIO:.0%} of requests failed): {bad}"]
    extra = []
    if "sheet_fraction_wall_vs_1core" in s:
        extra.append(f"sheets wall crops/s vs one core's ceiling: {s['sheet_fraction_wall_vs_1core']:.0%}")
    if "sheet_fraction_of_cores_x_one" in s and "cores_ceiling_crops_per_s" in s:
        extra.append(f"sheets vs {s['cores']} x one thread's ceiling: {s['sheet_fraction_of_cores_x_one']:.2f}")
    if "sheets_vs_reference" in s:
        extra.append(f"sheets vs TorchServe: {s['sheets_vs_reference']:.2f}x")
    if "single_vs_baseline" in s:
        extra.append(f"single crops vs the naive baseline: {s['single_vs_baseline']:.2f}x")
    for shape in ("sheets", "single"):
        if f"{shape}_vs_reference_per_cpu" in s:
            extra.append(f"{shape} per CPU-second vs the reference: {s[f'{shape}_vs_reference_per_cpu']:.2f}x")
    for shape in ("sheets", "single"):
        if f"{shape}_workers_speedup" in s:
            extra.append(f"{shape}: {s['workers']} workers / 1 worker {s[f'{shape}_workers_speedup']:.2f}x")
    if "sheet_batching_speedup" in s:
        extra.append(f"sheets batching on/off: {s['sheet_batching_speedup']:.2f}x")
    if "single_cpu_us_per_request" in s:
        extra.append(
            f"a single-crop request costs {s['single_cpu_us_per_request']:.0f} µs of service CPU "
            f"(GET /healthz: {s['http_floor_cpu_us_per_request']:.0f} µs)"
        )
    if extra:
        lines += ["", "Also: " + "; ".join(extra) + "."]
    lines += rounds.table(result, PEERS, _fmt)
    return "\n".join(lines) + "\n"
