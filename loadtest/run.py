"""Headless locust against a service this command starts: `python -m loadtest.run --users 30 --duration 60
--slo-p99-ms 200 --out runs/load`.

Starts `python -m service` on a free 127.0.0.1 port (or uses `--url http://127.0.0.1:PORT`), runs
`loadtest/locustfile.py` with its step-load shape for a bounded time, and writes to `--out`:
locust's CSV (`locust_stats.csv`, `locust_stats_history.csv`, `locust_failures.csv`) and HTML report
(`locust.html`), every request (`requests.csv`), per-step figures (`steps.md`, `summary.json`) and
`load.png` (throughput and p50/p99 against offered load). Exits 1 when the SLO is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import orjson

from loadtest import server, steps

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USER_CLASSES = ("SheetJsonUser", "SheetRawUser", "SingleCropUser")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=20, help="peak concurrent users (reached at the last step)")
    p.add_argument("--duration", type=int, default=60, help="total seconds of load (bounded)")
    p.add_argument("--steps", type=int, default=5, help="equal load steps up to --users")
    p.add_argument("--slo-p99-ms", type=float, required=True, help="p99 limit per request kind, whole run")
    p.add_argument("--slo-sheet-p99-ms", type=float, default=None, help="p99 limit for sheets (default: as above)")
    p.add_argument("--max-fail-ratio", type=float, default=0.0, help="largest tolerated failed-request ratio")
    p.add_argument("--sheet-pace", type=float, default=1.0, help="seconds between one engine's sheets")
    p.add_argument("--single-pace", type=float, default=0.05, help="seconds between one client's crops")
    p.add_argument("--users-of", nargs="+", choices=USER_CLASSES, default=list(USER_CLASSES), help="user kinds")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--url", default=None, help="use this running service (127.0.0.1 only) instead of starting one")
    p.add_argument("--env", nargs="*", default=[], metavar="OMR_X=V", help="settings for the started service")
    args = p.parse_args(argv)
    if args.duration > 3600 or args.users > 2000:
        p.error("load runs are bounded: at most 3600 s and 2000 users")
    if args.url and not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        p.error("--url must point at this machine (http://127.0.0.1:PORT)")
    return args


def run_locust(args: argparse.Namespace, url: str) -> int:
    out = args.out
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-H", url,
        "-u", str(args.users), "-t", f"{args.duration}s", "--steps", str(args.steps),
        "--sheet-pace", str(args.sheet_pace), "--single-pace", str(args.single_pace),
        "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust.html"),
        "--requests-csv", str(out / "requests.csv"), "--only-summary", "--loglevel", "WARNING",
        "--stop-timeout", "10", "--exit-code-on-error", "0", *args.users_of,
    ]  # fmt: skip
    with (out / "locust.log").open("wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.duration + 120, check=False)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    svc = None
    if args.url is None:
        env = dict(kv.split("=", 1) for kv in args.env)
        svc = server.start(env, log_path=args.out / "service.log")
    url = args.url or svc.url  # type: ignore[union-attr]
    print(f"[load] {args.users} users in {args.steps} steps for {args.duration}s against {url}", flush=True)
    try:
        rc = run_locust(args, url)
    finally:
        if svc is not None:
            server.stop(svc)
    requests_csv = args.out / "requests.csv"
    if rc != 0 or not requests_csv.exists():
        print(f"[load] locust failed (exit {rc}); see {args.out / 'locust.log'}", file=sys.stderr)
        return 2
    rows = steps.read_rows(requests_csv)
    table = steps.per_step(rows, args.steps, args.duration)
    verdict = steps.slo_verdict(rows, args.slo_p99_ms, args.slo_sheet_p99_ms, args.max_fail_ratio)
    title = f"step load on {os.cpu_count()} cores (load avg {os.getloadavg()[0]:.1f} at the end)"
    steps.plot(table, args.slo_p99_ms, args.out / "load.png", title, args.slo_sheet_p99_ms)
    md = steps.markdown(table, verdict)
    (args.out / "steps.md").write_text(md)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "steps": [s.to_dict() for s in table], **verdict}
    (args.out / "summary.json").write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    print(md)
    print(f"[load] wrote {args.out}/ (locust.html, locust_*.csv, requests.csv, load.png, steps.md)", flush=True)
    return 0 if verdict["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
