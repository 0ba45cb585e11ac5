"""The benchmark behind the README's figures: `python -m loadtest.bench [--out DIR]`.

One run, one machine:
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
Steps 2 and 3 run with every server up at once, in `--rounds` interleaved rounds (`loadtest.rounds`): each
figure is the median of its rounds, and the ceiling of the cores is measured again in each round, so a ratio
never compares two different minutes of a shared machine.
Writes `bench.json` and `bench.md` to the output folder and prints the markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime as ort
import orjson

from loadtest import ceiling, reference, report, rounds, scenarios, server, wrkrun
from loadtest.crops import CropPool
from service.core.modelconfig import ModelConfig, list_versions, load_config
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


def _cores_ceiling(
    sess: ort.InferenceSession, config: ModelConfig, pool: CropPool, args: argparse.Namespace
) -> dict[str, float]:
    """The in-process ceiling of the cores given: one decode+model thread per core at once (`ceiling.py`)."""
    return ceiling.parallel_pipeline_rate(
        sess,
        config,
        pool.b64,
        args.sheet_crops,
        container_cpus(),
        max(2.0, 2 * args.min_cpu_s),  # type: ignore[arg-type]
    )


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
            "pipeline_parallel": _cores_ceiling(sess, config, pool, args),
        }
        print(f"[ceiling] {variant}: best {top.per_core:,.0f} crops/s/core at batch {top.batch}", flush=True)
    return out


SERVICE_MODES: dict[str, dict[str, str]] = {"batching_on": {}, "one_worker": ONE_WORKER, "batching_off": BATCHING_OFF}
PEER_SERVERS = (("reference", "torchserve"), ("baseline", "naive"))


def _start_peers(stack: contextlib.ExitStack, pool_body: bytes, version_dir: Path, args: argparse.Namespace,
                 out: dict[str, object]) -> dict[str, reference.Reference]:  # fmt: skip
    """Start TorchServe and the naive baseline (`loadtest.reference`); a peer that cannot run is recorded."""
    peers = {}
    for key, peer in PEER_SERVERS:
        if args.no_reference:
            out[key] = {"skipped": "--no-reference"}
            continue
        start = reference.running if peer == "torchserve" else reference.running_naive
        try:
            peers[key] = stack.enter_context(start(version_dir, pool_body, Path(args.out) / f"{peer}.log"))
        except (reference.ReferenceUnavailable, OSError, RuntimeError) as exc:
            print(f"[{peer}] unavailable: {exc}", file=sys.stderr, flush=True)
            out[key] = {"skipped": f"{type(exc).__name__}: {exc}"}
    return peers


def run_servers(pool: CropPool, version_dir: Path, args: argparse.Namespace, result: dict[str, object]) -> None:
    """The service (three settings) and the peers, all started first, then measured in interleaved rounds
    (`loadtest.rounds`); the in-process ceiling of the cores is measured again in every round, just before
    the service's sheets. Fills result["service"], ["reference"], ["baseline"] and the served variant's
    ceiling["pipeline_parallel"]."""
    sheet = scenarios.sheets_json(pool, args.sheet_crops, args.sheet_clients)
    single = scenarios.single_json(pool, args.single_clients)
    raw = scenarios.sheets_raw(pool, args.sheet_crops, args.sheet_clients)
    idle = scenarios.sheets_json(pool, args.idle_crops, 1, n_bodies=8, name="idle-sheet")
    shapes = {"batching_on": [sheet, single, raw, idle], "one_worker": [sheet, single], "batching_off": [sheet, single]}
    base_env = {"OMR_MODEL_VARIANT": args.variant, **BENCH_ENV}
    config = load_config(version_dir)
    sess = ceiling.session(ceiling.variants(version_dir)[args.variant])
    with contextlib.ExitStack() as stack:
        svcs = {
            mode: stack.enter_context(
                server.running({**base_env, **env}, log_path=Path(args.out) / f"service-{mode}.log")
            )
            for mode, env in SERVICE_MODES.items()
        }
        peers = _start_peers(stack, single.bodies[0].data, version_dir, args, result)

        def svc_step(mode: str, sc: scenarios.Scenario) -> rounds.Step:
            return rounds.Step(mode, sc.name, lambda: scenarios.measure(svcs[mode], sc, args.duration, args.warmup))

        def peer_step(key: str, sc: scenarios.Scenario) -> rounds.Step:
            def run() -> dict[str, object]:
                row = reference.measure(peers[key], list(sc.bodies), sc.connections, sc.crops_per_request,
                                        args.duration, args.warmup)  # fmt: skip
                return {"scenario": sc.name, "description": sc.description, **row}

            return rounds.Step(key, sc.name, run)

        cores_ceiling = rounds.Step("ceiling", args.variant, lambda: _cores_ceiling(sess, config, pool, args))
        steps = [cores_ceiling, svc_step("batching_on", sheet)]
        steps += [peer_step(k, sheet) for k in ("baseline", "reference") if k in peers]
        steps.append(svc_step("batching_on", single))
        steps += [peer_step(k, single) for k in ("reference", "baseline") if k in peers]
        steps += [svc_step("batching_on", raw), svc_step("batching_on", idle)]
        steps += [svc_step(mode, sc) for mode in ("one_worker", "batching_off") for sc in shapes[mode]]
        got = rounds.run_rounds(steps, args.rounds)
        floor = scenarios.http_floor(svcs["batching_on"], args.duration)
        print(f"[service] GET /healthz: {floor['rps']:,.0f} req/s, "
              f"{floor['cpu_us_per_request']:.0f} µs service CPU per request", flush=True)  # fmt: skip
    service: dict[str, object] = {}
    for mode, env in SERVICE_MODES.items():
        service[mode] = {"env": env, "workers": int(env.get("OMR_WORKERS", 0)) or container_cpus(),
                         "scenarios": [got[(mode, sc.name)] for sc in shapes[mode]]}  # fmt: skip
    service["batching_on"]["http_floor"] = floor  # type: ignore[index]
    result["service"] = service
    for key, _ in PEER_SERVERS:
        if key in peers:
            result[key] = {"server": peers[key].name, "scenarios": [got[(key, sc.name)] for sc in (sheet, single)]}
    result["ceiling"][args.variant]["pipeline_parallel"] = got[("ceiling", args.variant)]  # type: ignore[index]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n")[0])
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    p.add_argument("--out", type=Path, default=Path("runs") / f"bench-{stamp}", help="output folder")
    p.add_argument("--model", default="omr-bubble", help="model name in the bundled repository")
    p.add_argument("--version", default=None, help="model version (default: highest)")
    p.add_argument("--variant", default="fp32", help="variant the service serves (OMR_MODEL_VARIANT)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (figures: the rounds' medians)")
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
            run_servers(pool, version_dir, args, result)
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
