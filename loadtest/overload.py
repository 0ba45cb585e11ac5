"""Overload at a multiple of measured capacity: `python -m loadtest.overload [--factor 3] [--seconds 20] [--out DIR]`.

Starts `python -m service` on 127.0.0.1 (or uses `--url`), then, with JSON sheets of `--crops` base64-PNG crops:
1. idle: one request at a time -> the idle p50/p99 (the SLO the overload figures are compared against);
2. capacity: `--clients` closed-loop clients for `--capacity-seconds` -> sustained requests/s (200s only);
3. overload: an OPEN-loop schedule at `--factor` x capacity for `--seconds` (arrivals do not wait for answers,
   latency counts from the scheduled send time, so a slow server cannot slow its own load down);
4. recovery: open loop at `--recovery-factor` x capacity: how soon every answer is 200 and p99 is back near idle.
Reports accepted/rejected rates, how fast 429s come back (and that they carry Retry-After), accepted p99 against
2x the idle p99, the service's RSS before/peak/after, and the recovery time. Writes overload.json + overload.md.

The load client is `loadtest.openloop` (asyncio HTTP/1.1 on pre-built request bytes): on a 2-core machine
shared with the service, a heavier client would measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest import server
from loadtest.crops import CropPool
from loadtest.openloop import Client, Shot, closed_loop, open_loop, pct


@dataclass
class Phase:
    name: str
    offered_per_s: float
    seconds: float
    sent: int
    ok: int
    rejected_429: int
    unavailable_503: int
    other: dict[str, int]
    ok_per_s: float
    ok_p50_ms: float
    ok_p99_ms: float
    rejected_p50_ms: float
    rejected_p99_ms: float
    retry_after_missing: int
    client_wait_p99_ms: float  # due -> sent: time a request waited for a free client connection
    windows: list[dict[str, float]] = field(default_factory=list)


def summarise(name: str, shots: list[Shot], seconds: float, offered: float, window_s: float = 1.0) -> Phase:
    ok = [s for s in shots if s.status == 200]
    rej = [s for s in shots if s.status == 429]
    other: dict[str, int] = {}
    for s in shots:
        if s.status not in (200, 429, 503):
            other[str(s.status)] = other.get(str(s.status), 0) + 1
    windows = []
    span_s = max(s.done for s in shots) - min(s.due for s in shots) if shots else 0.0  # until the last answer
    if shots:
        t0 = min(s.due for s in shots)
        span = max(s.due for s in shots) - t0
        for w in range(int(span / window_s) + 1):
            lo, hi = t0 + w * window_s, t0 + (w + 1) * window_s
            in_w = [s for s in shots if lo <= s.due < hi]
            good = [s.latency for s in in_w if s.status == 200]
            windows.append({"t_s": w * window_s, "sent": len(in_w), "ok": len(good),
                            "p99_ms": pct(good, 99) * 1e3 if good else float("nan")})  # fmt: skip
    return Phase(
        name=name,
        offered_per_s=offered,
        seconds=seconds,
        sent=len(shots),
        ok=len(ok),
        rejected_429=len(rej),
        unavailable_503=sum(s.status == 503 for s in shots),
        other=other,
        ok_per_s=len(ok) / span_s if span_s else 0.0,
        ok_p50_ms=pct([s.latency for s in ok], 50) * 1e3,
        ok_p99_ms=pct([s.latency for s in ok], 99) * 1e3,
        rejected_p50_ms=pct([s.latency for s in rej], 50) * 1e3,
        rejected_p99_ms=pct([s.latency for s in rej], 99) * 1e3,
        retry_after_missing=sum(1 for s in rej if not s.retry_after),
        client_wait_p99_ms=pct([s.sent - s.due for s in shots], 99) * 1e3,
        windows=windows,
    )


def recovery_s(phase: Phase, p99_limit_ms: float) -> float | None:
    """Seconds from the start of the phase until the first window where every request got 200 within the limit
    and every later window does too; None if it never settles."""
    ws = phase.windows
    for i, _ in enumerate(ws):
        if all(w["sent"] and w["ok"] == w["sent"] and w["p99_ms"] <= p99_limit_ms for w in ws[i:]):
            return ws[i]["t_s"]
    return None


class RssSampler:
    """Samples the service's RSS every 100 ms while running (the same loop as the load)."""

    def __init__(self, svc: server.Service | None) -> None:
        self.svc = svc
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            if self.svc is not None:
                with contextlib.suppress(OSError):
                    self.samples.append(self.svc.rss_bytes())
            await asyncio.sleep(0.1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def server_quantiles(url: str, q: float = 0.99) -> dict[str, float]:
    """Per-status quantile (ms) of the service's own `omr_request_duration_seconds` for /classify, from its
    histogram buckets (upper bound of the bucket holding the quantile): time inside the app, no socket queues."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        if line.startswith("omr_request_duration_seconds_bucket{") and 'endpoint="/classify"' in line:
            labels, value = line.rsplit(" ", 1)
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets.setdefault(status, []).append((float(le), float(value)))
    out = {}
    for status, bs in buckets.items():
        bs.sort()
        total = bs[-1][1]
        if total:
            out[status] = next(le for le, c in bs if c >= q * total) * 1e3
    return out


def bodies_for(pool: CropPool, crops: int, n: int = 16) -> list[bytes]:
    headers = {"Content-Type": "application/json"}
    return [
        Client.request("/classify", pool.json_body(k * crops, crops, prefix=f"o{k}-")[0], headers) for k in range(n)
    ]


async def experiment(url: str, svc: server.Service | None, args: argparse.Namespace) -> dict[str, Any]:
    pool = CropPool.build(max(64, args.crops), seed=1)
    bodies = bodies_for(pool, args.crops)
    client = Client(url, max_connections=args.max_connections)
    rss = RssSampler(svc)
    rss.start()
    try:
        await closed_loop(client, bodies, 1, 1.0)  # warm connections and caches
        idle = summarise("idle", await closed_loop(client, bodies, 1, args.idle_seconds), args.idle_seconds, 0)
        cap_shots = await closed_loop(client, bodies, args.clients, args.capacity_seconds)
        capacity = summarise("capacity", cap_shots, args.capacity_seconds, 0)
        rate = capacity.ok_per_s
        if rate <= 0:
            raise RuntimeError(f"capacity phase answered nothing: {capacity}")
        rss_before = svc.rss_bytes() if svc else 0
        rss.samples.clear()
        cpu0, svc_cpu0 = time.process_time(), svc.cpu_seconds() if svc else 0.0
        over_shots = await open_loop(client, bodies, args.factor * rate, args.seconds)
        cores = {"client": (time.process_time() - cpu0) / args.seconds,
                 "service": ((svc.cpu_seconds() - svc_cpu0) / args.seconds) if svc else float("nan")}  # fmt: skip
        over = summarise("overload", over_shots, args.seconds, args.factor * rate)
        server_p99 = server_quantiles(url) if svc else {}
        rss_peak = max(rss.samples, default=0)
        rec_shots = await open_loop(client, bodies, args.recovery_factor * rate, args.recovery_seconds)
        rec = summarise("recovery", rec_shots, args.recovery_seconds, args.recovery_factor * rate)
        rss_after = svc.rss_bytes() if svc else 0
    finally:
        await rss.stop()
        await client.close()
    limit = 2 * idle.ok_p99_ms
    return {
        "crops_per_request": args.crops,
        "cpu_count": os.cpu_count(),
        "idle": asdict(idle),
        "capacity": asdict(capacity),
        "overload": asdict(over),
        "recovery": asdict(rec),
        "capacity_req_per_s": rate,
        "factor": args.factor,
        "accepted_p99_vs_idle_p99": over.ok_p99_ms / idle.ok_p99_ms if idle.ok_p99_ms else float("nan"),
        "accepted_p99_within_2x_idle": over.ok_p99_ms <= limit,
        "rejected_fraction": over.rejected_429 / over.sent if over.sent else 0.0,
        # admission decides early: a 429 should come back well before a 200 (the test keeps counts only)
        "rejected_p50_vs_ok_p50": over.rejected_p50_ms / over.ok_p50_ms if over.ok_p50_ms else float("nan"),
        "recovery_s": recovery_s(rec, limit),
        "cores_used_during_overload": cores,
        "server_side_p99_ms_by_status": server_p99,
        "rss_mb": {"before": rss_before / 2**20, "peak_during_overload": rss_peak / 2**20, "after": rss_after / 2**20},
    }


def markdown(r: dict[str, Any]) -> str:
    o, idle, rec = r["overload"], r["idle"], r["recovery"]
    rss = r["rss_mb"]
    rows = [
        ("crops per request", f"{r['crops_per_request']}"),
        ("idle p50 / p99", f"{idle['ok_p50_ms']:.1f} / {idle['ok_p99_ms']:.1f} ms"),
        ("measured capacity", f"{r['capacity_req_per_s']:.1f} req/s ({r['capacity']['ok_p99_ms']:.0f} ms p99)"),
        ("offered during overload", f"{o['offered_per_s']:.1f} req/s ({r['factor']:g}x) for {o['seconds']:g} s"),
        ("accepted", f"{o['ok']} of {o['sent']} ({o['ok_per_s']:.1f} req/s)"),
        ("rejected 429", f"{o['rejected_429']} ({100 * r['rejected_fraction']:.0f} %), "
                         f"p50 {o['rejected_p50_ms']:.1f} ms, p99 {o['rejected_p99_ms']:.1f} ms, "
                         f"{o['retry_after_missing']} without Retry-After; "
                         f"p50 {r['rejected_p50_vs_ok_p50']:.2f}x the accepted p50"),
        ("p99 inside the service, by status (whole run)", ", ".join(
            f"{k}: <= {v:g} ms" for k, v in sorted(r["server_side_p99_ms_by_status"].items())) or "n/a"),
        ("p99 client-side wait for a connection", f"{o['client_wait_p99_ms']:.1f} ms"),
        ("other answers", f"503: {o['unavailable_503']}, {o['other'] or 'none'}"),
        ("accepted p50 / p99", f"{o['ok_p50_ms']:.1f} / {o['ok_p99_ms']:.1f} ms = "
                               f"{r['accepted_p99_vs_idle_p99']:.2f}x idle p99 "
                               f"({'within' if r['accepted_p99_within_2x_idle'] else 'OVER'} 2x)"),
        ("CPU cores used (service / load client)", f"{r['cores_used_during_overload']['service']:.2f} / "
                                                  f"{r['cores_used_during_overload']['client']:.2f}"),
        ("RSS before / peak / after", f"{rss['before']:.0f} / {rss['peak_during_overload']:.0f} / "
                                      f"{rss['after']:.0f} MiB"),
        ("recovery at 0.5x", f"{rec['ok']} of {rec['sent']} ok, p99 {rec['ok_p99_ms']:.1f} ms; settled after "
                             f"{'never' if r['recovery_s'] is None else str(r['recovery_s']) + ' s'}"),
    ]  # fmt: skip
    return "| overload | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.overload", description=__doc__.split("\n")[0])
    p.add_argument("--factor", type=float, default=3.0, help="offered load as a multiple of measured capacity")
    p.add_argument("--seconds", type=float, default=20.0, help="overload duration (bounded)")
    p.add_argument("--crops", type=int, default=100, help="crops per request (a sheet)")
    p.add_argument("--clients", type=int, default=32, help="closed-loop clients measuring capacity")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--capacity-seconds", type=float, default=10.0)
    p.add_argument("--recovery-factor", type=float, default=0.5)
    p.add_argument("--recovery-seconds", type=float, default=10.0)
    p.add_argument("--max-connections", type=int, default=1024)
    p.add_argument("--out", type=Path, default=None, help="folder for overload.json / overload.md")
    p.add_argument("--url", default=None, help="a running service on 127.0.0.1 instead of starting one")
    p.add_argument("--env", nargs="*", default=[], metavar="OMR_X=V", help="settings for the started service")
    args = p.parse_args(argv)
    if args.seconds > 600 or args.factor > 20 or args.seconds * args.factor * 1000 > 10**6:
        p.error("overload runs are bounded: at most 600 s and 20x")
    if args.url and not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        p.error("--url must point at this machine")
    return args


def run_and_report(args: argparse.Namespace, run: Any, render: Any, name: str) -> dict[str, Any]:
    """Run `run(url, svc, args)` against `--url` or a service started here; write NAME.json/.md; print the md."""
    env = dict(e.split("=", 1) for e in args.env)
    if args.url:
        result = asyncio.run(run(args.url, None, args))
    else:
        with server.running(env) as svc:
            result = asyncio.run(run(svc.url, svc, args))
    md = render(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        (args.out / f"{name}.md").write_text(md)
    sys.stdout.write(md)
    return result


def main(argv: list[str] | None = None) -> int:
    run_and_report(parse_args(argv), experiment, markdown, "overload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
