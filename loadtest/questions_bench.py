"""What the question layer costs on a 100-crop sheet (issue 14: < 5 % of the sheet's latency).

    python -m loadtest.questions_bench --out runs/questions-bench

Two measurements in one run, against the real service (`python -m service` in a subprocess on 127.0.0.1):
1. in-process: `plan_questions` + `decide_questions` + `render_questions` for the sheet's 100 decisions
   (20 questions x 5 options), timed over many repetitions — the layer's own CPU cost;
2. end to end: the same 100 synthetic PNG crops posted one request at a time, alternately without and with
   `question` fields (pairs in random order, so drift in the machine's load hits both alike); the extra
   latency includes the request schema's question fields and the larger response.
3. the service process's CPU time per request (Linux /proc), in alternating blocks of `BLOCK` requests: less
   sensitive than wall time when other jobs share the machine.
The figure of merit is (1) over the plain sheet's p50 latency; (2) and (3) check it end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import orjson

from loadtest import server
from loadtest.crops import CropPool
from service.core.postprocess import Decision
from service.core.questions import decide_questions, plan_questions
from service.http.classify import render_questions

OPTIONS = 5
BLOCK = 20


def bodies(pool: CropPool, n: int) -> tuple[bytes, bytes]:
    """The plain sheet body and the same sheet with each crop naming its question (n / OPTIONS questions)."""
    plain = orjson.loads(pool.json_body(0, n)[0])
    grouped = {**plain, "crops": [{**c, "question": f"q{k // OPTIONS}"} for k, c in enumerate(plain["crops"])]}
    return orjson.dumps(plain), orjson.dumps(grouped)


def layer_seconds(results: list[dict], repeat: int) -> list[float]:
    """Seconds per sheet of the question layer alone, on the service's own decisions for the sheet."""
    decisions = [
        Decision(r["label"], r["confidence"], r["marked"], r["marked_probability"], r["probabilities"]) for r in results
    ]
    ids = [r["id"] for r in results]
    questions = [f"q{k // OPTIONS}" for k in range(len(results))]
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        plan = plan_questions(questions, None, {})
        render_questions(decide_questions(plan, decisions, ids))
        out.append(time.perf_counter() - t0)
    return out


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def run(n_crops: int, pairs: int, repeat: int, threads: int) -> dict[str, object]:
    pool = CropPool.build(n_crops, seed=3)
    plain, grouped = bodies(pool, n_crops)
    # one worker process: the idle-sheet latency of one process, and its CPU time is the whole service's
    env = {"OMR_PREPROCESS_THREADS": str(threads), "OMR_WORKERS": "1"}
    lat: dict[str, list[float]] = {"plain": [], "questions": []}
    with server.running(env) as svc, httpx.Client(base_url=svc.url, timeout=30) as client:
        headers = {"content-type": "application/json"}

        def post(body: bytes) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = client.post("/classify", content=body, headers=headers)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            return dt, r.json()

        for _ in range(20):  # warm-up: connections, caches, the batcher's first buckets
            post(plain)
            post(grouped)
        _, doc = post(grouped)
        assert len(doc["questions"]) == n_crops // OPTIONS + (1 if n_crops % OPTIONS else 0), doc.keys()
        rng = random.Random(0)
        cpu: dict[str, list[float]] = {"plain": [], "questions": []}
        for k in range(pairs):
            order = [("plain", plain), ("questions", grouped)]
            rng.shuffle(order)
            for name, body in order:
                lat[name].append(post(body)[0])
            if k % BLOCK == 0:  # every BLOCK pairs: one CPU-timed block of each kind
                for name, body in order:
                    c0 = svc.cpu_seconds()
                    for _ in range(BLOCK):
                        post(body)
                    cpu[name].append((svc.cpu_seconds() - c0) / BLOCK)
        layer = layer_seconds(doc["results"], repeat)
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    cpu_plain = statistics.fmean(cpu["plain"])
    layer_p50 = statistics.median(layer)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), no GPU",
        "load_average": os.getloadavg(),
        "crops_per_sheet": n_crops,
        "questions": n_crops // OPTIONS,
        "pairs": pairs,
        "latency_ms": {
            k: {"p50": 1e3 * p50[k], "p90": 1e3 * _pct(v, 0.9), "mean": 1e3 * statistics.fmean(v)}
            for k, v in lat.items()
        },
        "layer_us": {"p50": 1e6 * layer_p50, "p90": 1e6 * _pct(layer, 0.9), "repeat": repeat},
        "layer_share_of_sheet_p50": layer_p50 / p50["plain"],
        "end_to_end_extra_share_p50": (p50["questions"] - p50["plain"]) / p50["plain"],
        "service_cpu_ms_per_request": {k: 1e3 * statistics.fmean(v) for k, v in cpu.items()},
        # /proc counts CPU in clock ticks (10 ms): a tiny run can see none
        "service_cpu_extra_share": statistics.fmean(cpu["questions"]) / cpu_plain - 1 if cpu_plain else None,
        "goal": "< 0.05 of a 100-crop sheet's latency",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=100, help="crops per sheet")
    ap.add_argument("--pairs", type=int, default=200, help="plain/with-questions request pairs")
    ap.add_argument("--repeat", type=int, default=2000, help="in-process repetitions of the question layer")
    ap.add_argument("--threads", type=int, default=1, help="OMR_PREPROCESS_THREADS of the service")
    ap.add_argument("--out", type=Path, default=None, help="write questions_bench.json here")
    args = ap.parse_args(argv)
    if min(args.crops, args.pairs, args.repeat) < 1:
        ap.error("--crops, --pairs and --repeat must be >= 1")
    report = run(args.crops, args.pairs, args.repeat, args.threads)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "questions_bench.json").write_text(json.dumps(report, indent=1))
    lat = report["latency_ms"]
    extra = report["service_cpu_extra_share"]
    print(
        f"{report['date']}  {report['machine']}  load {tuple(round(x, 2) for x in report['load_average'])}\n"
        f"{args.crops}-crop sheet p50 {lat['plain']['p50']:.2f} ms; with {report['questions']} questions "
        f"p50 {lat['questions']['p50']:.2f} ms ({100 * report['end_to_end_extra_share_p50']:+.1f} %)\n"
        f"question layer in-process p50 {report['layer_us']['p50']:.0f} us = "
        f"{100 * report['layer_share_of_sheet_p50']:.2f} % of the sheet's p50 (goal < 5 %)\n"
        f"service CPU per request {report['service_cpu_ms_per_request']['plain']:.2f} ms plain, "
        f"{report['service_cpu_ms_per_request']['questions']:.2f} ms with questions "
        f"({'-' if extra is None else f'{100 * extra:+.1f}'} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
