"""The benchmark behind the README's figures: `python -m loadtest.bench [--out DIR]`.

One run, one machine, in this order:
1. in-process ceiling: ONNX Runtime alone on every CPU variant of the bundled model (1 intra-op thread,
   batch 1..1024), and the service's decode + preprocess + inference, in crops/s per core;
2. the real service (`python -m service` on 127.0.0.1) under wrk: sheets (64 base64-PNG crops, 8 clients),
   single crops (64 clients), raw-tensor sheets and one 100-crop sheet at a time (idle latency), with
   batching on (default settings: one worker per CPU the container is given), one worker (OMR_WORKERS=1:
   what the extra workers bring) and batching off (OMR_MAX_BATCH_SIZE=1, OMR_MAX_DELAY_MS=0);
3. the peers (`loadtest.reference`: TorchServe, the bundled model behind its Java front end; and the naive
   FastAPI baseline, `loadtest.naive_app`) under the same sheets and single crops, unless `--no-reference` (or
   TorchServe is not installed: the reason is recorded);
4. the service's fraction of the ceiling of the cores it is given, the ratios to the peers (sheets: the best
   peer; single crops: TorchServe), and the issues' targets, pass or miss.
Writes `bench.json` and `bench.md` to the output folder and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
import orjson

from loadtest import ceiling, reference, report, scenarios, server, wrkrun
from loadtest.crops import CropPool
from service.core.modelconfig import list_versions, load_config
from service.serve.cpus import container_cpus
from service.settings import BUNDLED_REPOSITORY

# Both modes raise admission's latency cap (OMR_ADMISSION_MAX_WAIT_MS, default 200 ms) to the request
# timeout: with the default, closed-loop clients on a busy machine measure load shedding (fast 429s they
# immediately replace; 88 % of 8-client sheet requests in one run) instead of throughput. Admission is
# load-tested by the reliability suite; everything else is the default settings.
BENCH_ENV = {"OMR_ADMISSION_MAX_WAIT_MS": "10000"}
# Batching off: one row per model call, no fill wait.
BATCHING_OFF = {"OMR_MAX_BATCH_SIZE": "1", "OMR_MAX_DELAY_MS": "0"}
ONE_WORKER = {"OMR_WORKERS": "1"}


def machine() -> dict[str, object]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "container_cpus": container_cpus(),  # what OMR_WORKERS=0 starts, and the cores the ceiling is scaled to
        "load_avg_1m_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "platform": platform.platform(),
    }


def run_ceiling(version_dir: Path, pool: CropPool, args: argparse.Namespace) -> dict[str, object]:
    config = load_config(version_dir)
    out: dict[str, object] = {}
    for variant, path in ceiling.variants(version_dir).items():
        sess = ceiling.session(path)
        rates = ceiling.model_rates(sess, config, pool.raw, args.batch_sizes, args.min_cpu_s)
        top = ceiling.best(rates)
        pipes = {}
        for b in sorted({args.sheet_crops, top.batch}):
            prep, full = ceiling.pipeline_rate(sess, config, pool.b64, b, args.min_cpu_s)
            pipes[str(b)] = {"preprocess": prep.to_dict(), "pipeline": full.to_dict()}
        out[variant] = {
            "file": path.name,
            "stage_us_per_crop": ceiling.stage_costs(sess, config, pool.b64, args.sheet_crops),
            "model": [r.to_dict() for r in rates],
            "best_batch": top.batch,
            "best_crops_per_s_per_core": top.per_core,
            "pipeline": pipes,
            "pipeline_parallel": ceiling.parallel_pipeline_rate(
                sess, config, pool.b64, args.sheet_crops, container_cpus(), max(2.0, 2 * args.min_cpu_s)
            ),
        }
        print(f"[ceiling] {variant}: best {top.per_core:,.0f} crops/s/core at batch {top.batch}", flush=True)
    return out


def run_service(pool: CropPool, args: argparse.Namespace) -> dict[str, object]:
    sheet = scenarios.sheets_json(pool, args.sheet_crops, args.sheet_clients)
    single = scenarios.single_json(pool, args.single_clients)
    raw = scenarios.sheets_raw(pool, args.sheet_crops, args.sheet_clients)
    idle = scenarios.sheets_json(pool, args.idle_crops, 1, n_bodies=8, name="idle-sheet")
    modes = {
        "batching_on": ({}, [sheet, single, raw, idle]),
        "one_worker": (ONE_WORKER, [sheet, single]),
        "batching_off": (BATCHING_OFF, [sheet, single]),
    }
    base_env = {"OMR_MODEL_VARIANT": args.variant, **BENCH_ENV}
    out: dict[str, object] = {}
    for mode, (env, shapes) in modes.items():
        log = Path(args.out) / f"service-{mode}.log"
        with server.running({**base_env, **env}, log_path=log) as svc:
            rows = []
            for sc in shapes:
                row = scenarios.measure(svc, sc, args.duration, args.warmup)
                rows.append(row)
                print(
                    f"[service] {mode} {sc.name}: {row['crops_per_s']:,.0f} crops/s, "
                    f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, failed {row['failed']}",
                    flush=True,
                )
            out[mode] = {"env": env, "workers": int(env.get("OMR_WORKERS", 0)) or container_cpus(), "scenarios": rows}
            if not env:
                floor = scenarios.http_floor(svc, args.duration)
                out[mode]["http_floor"] = floor
                print(f"[service] GET /healthz: {floor['rps']:,.0f} req/s, "
                      f"{floor['cpu_us_per_request']:.0f} µs service CPU per request", flush=True)  # fmt: skip
    return out


def run_reference(pool: CropPool, version_dir: Path, args: argparse.Namespace, peer: str) -> dict[str, object]:
    """One peer (`torchserve` or `naive`, `loadtest.reference`) under the sheet and single-crop shapes (same
    bodies, same wrk), or why it could not run."""
    sheet = scenarios.sheets_json(pool, args.sheet_crops, args.sheet_clients)
    single = scenarios.single_json(pool, args.single_clients)
    start = reference.running if peer == "torchserve" else reference.running_naive
    try:
        with start(version_dir, single.bodies[0].data, Path(args.out) / f"{peer}.log") as ref:
            rows = []
            for sc in (sheet, single):
                row = {"scenario": sc.name, "description": sc.description,
                       **reference.measure(ref, list(sc.bodies), sc.connections, sc.crops_per_request,
                                           args.duration, args.warmup)}  # fmt: skip
                rows.append(row)
                print(f"[{peer}] {sc.name}: {row['crops_per_s']:,.0f} crops/s, p50 {row['p50_ms']:.1f} ms, "
                      f"p99 {row['p99_ms']:.1f} ms, failed {row['failed']}", flush=True)  # fmt: skip
            return {"server": ref.name, "scenarios": rows}
    except (reference.ReferenceUnavailable, OSError, RuntimeError) as exc:
        print(f"[{peer}] unavailable: {exc}", file=sys.stderr, flush=True)
        return {"skipped": f"{type(exc).__name__}: {exc}"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0])
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    p.add_argument("--out", type=Path, default=Path("runs") / f"bench-{stamp}", help="output folder")
    p.add_argument("--model", default="omr-bubble", help="model name in the bundled repository")
    p.add_argument("--version", default=None, help="model version (default: highest)")
    p.add_argument("--variant", default="fp32", help="variant the service serves (OMR_MODEL_VARIANT)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--min-cpu-s", type=float, default=1.0, help="CPU-seconds per in-process measurement")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=list(ceiling.BATCH_SIZES))
    p.add_argument("--sheet-crops", type=int, default=64)
    p.add_argument("--sheet-clients", type=int, default=8)
    p.add_argument("--single-clients", type=int, default=64)
    p.add_argument("--idle-crops", type=int, default=100)
    p.add_argument("--crop-source", choices=["synth", "real"], default="synth")
    p.add_argument("--pool", type=int, default=1024, help="distinct crops to draw requests from")
    p.add_argument("--skip-service", action="store_true", help="in-process ceiling only")
    p.add_argument("--no-reference", action="store_true",
                   help="do not start the peers (TorchServe, the naive FastAPI baseline)")  # fmt: skip
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="nice value for this run and everything it starts (e.g. -10, needs root): on a shared machine "
        "it approximates a dedicated one; recorded in the output",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.priority is not None:
        os.setpriority(os.PRIO_PROCESS, 0, args.priority)  # the service and wrk inherit it
    version = args.version or list_versions(BUNDLED_REPOSITORY, args.model)[-1]
    version_dir = BUNDLED_REPOSITORY / args.model / version
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    print(f"[bench] building {args.pool} {args.crop_source} crops ...", flush=True)
    pool = CropPool.build(args.pool, seed=0, source=args.crop_source)
    result: dict[str, object] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "model": f"{args.model}/{version}",
        "service_variant": args.variant,
        "crop_source": args.crop_source,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    result["ceiling"] = run_ceiling(version_dir, pool, args)
    rc = 0
    if args.skip_service:
        result["service"] = {"skipped": "--skip-service"}
    else:
        try:
            wrkrun.wrk_path()
            result["service"] = run_service(pool, args)
            for key, peer in (("reference", "torchserve"), ("baseline", "naive")):
                result[key] = (
                    {"skipped": "--no-reference"} if args.no_reference else run_reference(pool, version_dir, args, peer)
                )
        except wrkrun.WrkMissingError as exc:
            print(f"[bench] {exc}", file=sys.stderr)
            result["service"] = {"skipped": str(exc)}
            rc = 2
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["summary"] = report.summarise(result)
    (args.out / "bench.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    md = report.markdown(result)
    (args.out / "bench.md").write_text(md)
    print(md)
    print(f"[bench] wrote {args.out}/bench.md and bench.json in {result['elapsed_s']} s", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
