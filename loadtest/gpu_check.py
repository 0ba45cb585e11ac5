"""`make gpu-check` / `python -m loadtest.gpu_check --out runs/gpu-check`: what a GPU machine gives this
service, in one command of at most ~5 minutes, written to `gpu-check.md` and `gpu-check.json`.

1. providers: which of TensorRT / CUDA this onnxruntime build has, and which one each really becomes *active*
   (ORT falls back to CPU silently when a library or the GPU is missing; the error is recorded);
2. parity on real-dev crops (`--real-dev labels.csv`; synthetic crops if absent, said so): fp32 on CPU is the
   reference; fp32 and fp16 on CUDA and TensorRT: max |p - p_cpu| and argmax agreement;
3. TensorRT: engine build time into an empty cache, then a "restart" (a new session on the same cache) and its
   time, and whether engine files were reused;
4. in-process crops/s per batch bucket for every active provider (the service's `infer`: normalise + run +
   calibrate, one thread);
5. the service (`python -m service`, best provider, wrk): sheets and single crops, if wrk is installed.
On a machine without a GPU every GPU step says which provider was missing and the command still writes its
report (exit 0), so the script itself is tested on CPU (tests/loadtest/test_gpu_check.py); `--require-gpu`
makes a missing GPU provider exit 1.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from service.core.modelconfig import ModelConfig, list_versions, load_config
from service.core.preprocess import decode_image, resize
from service.core.registry import make_infer
from service.core.runtime import active_provider, create_session
from service.core.trt_cache import gpu_name, tensorrt_version
from service.settings import BUNDLED_REPOSITORY, Settings

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU = "CPUExecutionProvider"
DEFAULT_REAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev" / "labels.csv"
BUCKETS = (1, 8, 32, 64, 128, 256)


def load_crops(labels_csv: Path | None, config: ModelConfig, n_synth: int = 512) -> tuple[np.ndarray, str]:
    """uint8 [N, H, W] model-size crops: real-dev through the service's own decode + resize, else synthetic."""
    inp = config.input
    if labels_csv is not None and labels_csv.is_file():
        rows = []
        with labels_csv.open(newline="") as f:
            for rec in csv.DictReader(f):
                data = (labels_csv.parent / rec["crop_file"]).read_bytes()
                rows.append(resize(decode_image(data), inp.height, inp.width))
        return np.stack(rows), f"real-dev ({len(rows)} crops, {labels_csv})"
    from loadtest.crops import CropPool  # the benchmark's synthetic crops (renderer)

    pool = CropPool.build(n_synth, seed=0, source="synth")
    raw = np.stack([resize(img, inp.height, inp.width) for img in pool.raw])  # already model size: a no-op
    return raw, f"synthetic ({len(raw)} crops; real-dev not found at {labels_csv})"


def _settings(provider: str, trt_cache: Path) -> Settings:
    return Settings(providers=[provider, CPU] if provider != CPU else [CPU], trt_cache_dir=trt_cache)  # type: ignore[list-item]


def open_session(
    version_dir: Path, config: ModelConfig, variant: str, provider: str, trt_cache: Path
) -> dict[str, Any]:
    """A session of `variant` on `provider`: its active provider, creation time, or the error."""
    spec = config.variants.get(variant)
    if spec is None:
        return {"error": f"the model has no {variant} variant"}
    path = version_dir / spec.file
    t0 = time.monotonic()
    try:
        session = create_session(path, config, _settings(provider, trt_cache))
    except Exception as exc:  # a provider that cannot load is a finding, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"session": session, "active": active_provider(session), "create_s": time.monotonic() - t0}


def probe_providers(version_dir: Path, config: ModelConfig, trt_cache: Path) -> dict[str, Any]:
    built = ort.get_available_providers()
    out: dict[str, Any] = {"built_in": built, "gpu": gpu_name(), "tensorrt": tensorrt_version(), "providers": {}}
    for p in GPU_PROVIDERS:
        if p not in built:
            out["providers"][p] = {"active": False, "why": f"not in this onnxruntime build ({ort.__version__})"}
            continue
        s = open_session(version_dir, config, "fp32", p, trt_cache)
        if "error" in s:
            out["providers"][p] = {"active": False, "why": s["error"]}
        else:
            ok = s["active"] == p
            out["providers"][p] = {"active": ok, "why": "" if ok else f"session fell back to {s['active']}"}
    out["active_gpu"] = [p for p, v in out["providers"].items() if v["active"]]
    return out


def parity(
    version_dir: Path, config: ModelConfig, crops: np.ndarray, active: list[str], trt_cache: Path
) -> list[dict[str, Any]]:
    ref = open_session(version_dir, config, "fp32", CPU, trt_cache)
    ref_p = make_infer(config, ref["session"])(crops)
    rows = []
    for provider in active:
        for variant in ("fp32", "fp16"):
            s = open_session(version_dir, config, variant, provider, trt_cache)
            if "error" in s:
                rows.append({"provider": provider, "variant": variant, "error": s["error"]})
                continue
            p = make_infer(config, s["session"])(crops)
            rows.append({
                "provider": provider, "variant": variant, "active": s["active"],
                "max_abs_diff": float(np.max(np.abs(p - ref_p))),
                "argmax_agreement": float(np.mean(p.argmax(1) == ref_p.argmax(1))),
            })  # fmt: skip
    return rows


def trt_build_and_reuse(version_dir: Path, config: ModelConfig, active: list[str]) -> dict[str, Any]:
    if "TensorrtExecutionProvider" not in active:
        return {"skipped": "TensorrtExecutionProvider not active"}
    cache = Path(tempfile.mkdtemp(prefix="omr-trt-check-"))
    try:
        out: dict[str, Any] = {}
        for run in ("cold", "restart"):
            t0 = time.monotonic()
            s = open_session(version_dir, config, "fp32", "TensorrtExecutionProvider", cache)
            if "error" in s:
                return {**out, run: {"error": s["error"]}}
            infer = make_infer(config, s["session"])
            for b in BUCKETS:  # every bucket once, as warm-up does (the engine profile covers them all)
                infer(np.zeros((b, config.input.height, config.input.width), np.uint8))
            files = sorted(p.name for p in cache.rglob("*") if p.is_file())
            out[run] = {"session_plus_warm_s": time.monotonic() - t0, "cache_files": len(files)}
            del s, infer
        out["reused"] = out["restart"]["session_plus_warm_s"] < 0.5 * out["cold"]["session_plus_warm_s"]
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def bucket_rates(version_dir: Path, config: ModelConfig, crops: np.ndarray, providers: list[str], trt_cache: Path,
                 seconds: float) -> dict[str, dict[str, float]]:  # fmt: skip
    out: dict[str, dict[str, float]] = {}
    for provider in providers:
        s = open_session(version_dir, config, "fp32", provider, trt_cache)
        if "error" in s:
            continue
        infer = make_infer(config, s["session"])
        rates = {}
        for b in BUCKETS:
            batch = np.resize(crops, (b, *crops.shape[1:]))
            infer(batch)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                infer(batch)
                n += b
            rates[str(b)] = n / (time.perf_counter() - t0)
        out[s["active"]] = rates
    return out


def service_load(provider: str, seconds: float, out_dir: Path) -> dict[str, Any]:
    from loadtest import scenarios, server, wrkrun
    from loadtest.crops import CropPool

    try:
        wrkrun.wrk_path()
    except wrkrun.WrkMissingError as exc:
        return {"skipped": str(exc)}
    pool = CropPool.build(512, seed=0, source="synth")
    env = {"OMR_PROVIDERS": orjson.dumps([provider, CPU] if provider != CPU else [CPU]).decode(),
           "OMR_ADMISSION_MAX_WAIT_MS": "10000"}  # fmt: skip
    rows = []
    with server.running(env, log_path=out_dir / "service.log") as svc:
        for sc in (scenarios.sheets_json(pool, 64, 8), scenarios.single_json(pool, 64)):
            r = scenarios.measure(svc, sc, seconds, 1.0)
            rows.append({k: r[k] for k in ("scenario", "crops_per_s", "p50_ms", "p99_ms", "failed",
                                           "service_cores_used")})  # fmt: skip
    return {"provider": provider, "scenarios": rows}


def markdown(r: dict[str, Any]) -> str:
    pv = r["providers"]
    lines = [f"### GPU check {r['date']} — {r['model']}", "",
             f"GPU: {pv['gpu'] or 'none (nvidia-smi not found)'}; TensorRT {pv['tensorrt'] or 'not found'}; "
             f"onnxruntime {ort.__version__} with {', '.join(pv['built_in'])}; crops: {r['crops']}; "
             f"{r['elapsed_s']} s.", "", "| provider | active | why not |", "|---|:-:|---|"]  # fmt: skip
    for name, v in pv["providers"].items():
        lines.append(f"| {name} | {'yes' if v['active'] else 'NO'} | {v['why']} |")
    if r["parity"]:
        lines += ["", "Parity against fp32 on CPU:", "", "| provider | variant | max abs diff | argmax agree |",
                  "|---|---|---:|---:|"]  # fmt: skip
        for p in r["parity"]:
            if "error" in p:
                lines.append(f"| {p['provider']} | {p['variant']} | error: {p['error']} | |")
            else:
                lines.append(f"| {p['active']} | {p['variant']} | {p['max_abs_diff']:.2e} | "
                             f"{p['argmax_agreement']:.2%} |")  # fmt: skip
    else:
        lines += ["", "Parity: skipped (no GPU provider active)."]
    trt = r["tensorrt"]
    if "skipped" in trt:
        lines += ["", f"TensorRT engine build: skipped ({trt['skipped']})."]
    else:
        lines += ["", f"TensorRT engine build + warm: {trt}"]
    head = "| provider | " + " | ".join(f"b={b}" for b in BUCKETS) + " |"
    lines += ["", "In-process crops/s per batch bucket (1 thread):", "", head, "|---|" + "---:|" * len(BUCKETS)]
    for provider, rates in r["buckets"].items():
        lines.append(f"| {provider} | " + " | ".join(f"{rates[str(b)]:,.0f}" for b in BUCKETS) + " |")
    svc = r["service"]
    if "skipped" in svc:
        lines += ["", f"Service under load: skipped ({svc['skipped']})."]
    else:
        lines += ["", f"Service under load ({svc['provider']}):", "",
                  "| traffic | crops/s | p50 ms | p99 ms | failed |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for s in svc["scenarios"]:
            lines.append(f"| {s['scenario']} | {s['crops_per_s']:,.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['failed']} |")  # fmt: skip
    missing = [p for p, v in pv["providers"].items() if not v["active"]]
    if missing:
        lines += ["", f"**Missing GPU providers**: {', '.join(missing)} — GPU figures above are absent, not zero."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs") / "gpu-check")
    p.add_argument("--real-dev", type=Path, default=Path(os.environ.get("OMR_REAL_DEV", DEFAULT_REAL_DEV)))
    p.add_argument("--model", default="omr-bubble")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per in-process bucket measurement")
    p.add_argument("--load-seconds", type=float, default=10.0, help="seconds per service load shape (0 = skip)")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 unless TensorRT or CUDA is active")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    version_dir = BUNDLED_REPOSITORY / args.model / list_versions(BUNDLED_REPOSITORY, args.model)[-1]
    config = load_config(version_dir)
    trt_cache = Path(tempfile.mkdtemp(prefix="omr-trt-gpucheck-"))
    try:
        crops, source = load_crops(args.real_dev, config)
        providers = probe_providers(version_dir, config, trt_cache)
        active = providers["active_gpu"]
        print(f"[gpu-check] active GPU providers: {active or 'none'}", flush=True)
        result: dict[str, Any] = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": f"{config.name}/{config.version}",
            "crops": source,
            "providers": providers,
            "parity": parity(version_dir, config, crops, active, trt_cache),
            "tensorrt": trt_build_and_reuse(version_dir, config, active),
            "buckets": bucket_rates(version_dir, config, crops, [*active, CPU], trt_cache, args.seconds),
        }
        best = active[0] if active else CPU
        result["service"] = (service_load(best, args.load_seconds, args.out) if args.load_seconds > 0
                             else {"skipped": "--load-seconds 0"})  # fmt: skip
    finally:
        shutil.rmtree(trt_cache, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    (args.out / "gpu-check.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    md = markdown(result)
    (args.out / "gpu-check.md").write_text(md)
    print(md)
    print(f"[gpu-check] wrote {args.out}/gpu-check.md in {result['elapsed_s']} s", flush=True)
    if args.require_gpu and not active:
        print("[gpu-check] no GPU provider is active", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
