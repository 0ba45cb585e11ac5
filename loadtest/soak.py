"""Soak: `python -m loadtest.soak --minutes 10 [--load 0.5] [--out DIR]`.

Starts `python -m service` on 127.0.0.1 (or uses `--url`), measures capacity with closed-loop clients, then
offers an open-loop `--load` x capacity of JSON sheets for `--minutes`, in windows of `--window-s` seconds.
Per window: requests, non-200 answers, p50/p99 latency (from the scheduled send time) and the service's RSS.
Reports RSS growth (last window against the end of the first, i.e. after warm-up allocations; target < 5 %;
and over the second half alone: a leak keeps climbing there, an allocator high-water mark left by a burst does not)
and p99 drift (median p99 of the last third of the windows against the first third; medians, because one
noisy window on a shared machine should not decide it). Writes soak.json + soak.md; exits 1 if any request
failed or RSS grew by more than `--max-rss-growth`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtest import server
from loadtest.crops import CropPool
from loadtest.openloop import Client, closed_loop, open_loop, pct
from loadtest.overload import bodies_for, run_and_report, summarise


async def soak(url: str, svc: server.Service | None, args: argparse.Namespace) -> dict[str, Any]:
    pool = CropPool.build(max(64, args.crops), seed=2)
    bodies = bodies_for(pool, args.crops)
    client = Client(url, max_connections=1024)
    try:
        await closed_loop(client, bodies, 1, 1.0)
        capacity = summarise("capacity", await closed_loop(client, bodies, args.clients, args.capacity_seconds),
                             args.capacity_seconds, 0)  # fmt: skip
        rate = args.load * capacity.ok_per_s
        if rate <= 0:
            raise RuntimeError("capacity phase answered nothing")
        windows: list[dict[str, Any]] = []
        n_windows = max(2, round(args.minutes * 60 / args.window_s))
        t0 = time.monotonic()
        for w in range(n_windows):
            shots = await open_loop(client, bodies, rate, args.window_s)
            ok = [s.latency for s in shots if s.status == 200]
            windows.append({
                "t_s": round(time.monotonic() - t0, 1),
                "sent": len(shots),
                "failed": sum(s.status != 200 for s in shots),
                "statuses": {str(k): sum(s.status == k for s in shots) for k in sorted({s.status for s in shots})},
                "p50_ms": pct(ok, 50) * 1e3,
                "p99_ms": pct(ok, 99) * 1e3,
                "rss_mb": svc.rss_bytes() / 2**20 if svc else float("nan"),
            })  # fmt: skip
            if args.verbose:
                print(f"window {w + 1}/{n_windows}: {windows[-1]}", file=sys.stderr, flush=True)
    finally:
        await client.close()
    third = max(1, len(windows) // 3)
    p99_first = statistics.median(w["p99_ms"] for w in windows[:third])
    p99_last = statistics.median(w["p99_ms"] for w in windows[-third:])
    rss_base, rss_mid, rss_end = windows[0]["rss_mb"], windows[len(windows) // 2]["rss_mb"], windows[-1]["rss_mb"]
    return {
        "minutes": args.minutes,
        "crops_per_request": args.crops,
        "capacity_req_per_s": capacity.ok_per_s,
        "offered_req_per_s": rate,
        "load": args.load,
        "requests": sum(w["sent"] for w in windows),
        "failed": sum(w["failed"] for w in windows),
        "failed_by_status": {
            k: sum(w["statuses"].get(k, 0) for w in windows)
            for k in sorted({k for w in windows for k in w["statuses"]})
            if k != "200"
        },
        "rss_mb": {"after_first_window": rss_base, "end": rss_end, "max": max(w["rss_mb"] for w in windows)},
        "rss_growth": (rss_end - rss_base) / rss_base if rss_base else float("nan"),
        # a leak keeps climbing; allocator high-water marks after a burst are a step: this tells them apart
        "rss_growth_second_half": (rss_end - rss_mid) / rss_mid if rss_mid else float("nan"),
        "p99_ms": {"first_third_median": p99_first, "last_third_median": p99_last},
        "p99_drift": (p99_last - p99_first) / p99_first if p99_first else float("nan"),
        "windows": windows,
    }


def markdown(r: dict[str, Any]) -> str:
    rss, p99 = r["rss_mb"], r["p99_ms"]
    rows = [
        ("duration", f"{r['minutes']:g} min at {r['load']:g}x capacity = {r['offered_req_per_s']:.1f} req/s "
                     f"of {r['crops_per_request']} crops (capacity {r['capacity_req_per_s']:.1f} req/s)"),
        ("requests / failed", f"{r['requests']} / {r['failed']} {r['failed_by_status'] or ''}"),
        ("RSS after 1st window / end / max", f"{rss['after_first_window']:.1f} / {rss['end']:.1f} / "
                                             f"{rss['max']:.1f} MiB"),
        ("RSS growth", f"{100 * r['rss_growth']:+.2f} % (target < 5 %); over the second half "
                       f"{100 * r['rss_growth_second_half']:+.2f} %"),
        ("p99 first third / last third (medians)", f"{p99['first_third_median']:.1f} / "
                                                   f"{p99['last_third_median']:.1f} ms"),
        ("p99 drift", f"{100 * r['p99_drift']:+.1f} %"),
    ]  # fmt: skip
    return "| soak | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (bounded: at most 240)")
    p.add_argument("--load", type=float, default=0.5, help="offered load as a fraction of measured capacity")
    p.add_argument("--crops", type=int, default=100, help="crops per request")
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients measuring capacity")
    p.add_argument("--capacity-seconds", type=float, default=10.0)
    p.add_argument("--window-s", type=float, default=30.0, help="seconds per measurement window")
    p.add_argument("--max-rss-growth", type=float, default=0.05, help="exit 1 above this RSS growth")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--url", default=None, help="a running service on 127.0.0.1 instead of starting one")
    p.add_argument("--env", nargs="*", default=[], metavar="OMR_X=V", help="settings for the started service")
    p.add_argument("-v", "--verbose", action="store_true", help="print each window as it ends")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 240 or not 0 < args.load <= 1.5:
        p.error("soak runs are bounded: 0 < minutes <= 240, 0 < load <= 1.5")
    if args.url and not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        p.error("--url must point at this machine")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_and_report(args, soak, markdown, "soak")
    grew = result["rss_growth"] > args.max_rss_growth
    return 1 if result["failed"] or grew else 0


if __name__ == "__main__":
    sys.exit(main())
