"""A hostile-client corpus against a real service: every probe must get a 4xx, 408 or 503 or a closed connection
(never a 200 for a bomb, never a 5xx other than 503), while a canary measures the event loop's largest stall and
the server's RSS is sampled.

    python -m loadtest.hostile --out runs/hostile            # starts python -m service with FRONT_DOOR_ENV
    python -m loadtest.hostile --port 8000 --pid 1234        # an already running service (its own settings)

Probes are grouped by family (the table in docs/reliability.md, "hostile clients"); the tests in
tests/reliability/test_hostile_*.py run the same probes one family at a time. The probes are in
`loadtest.hostile_probes`, their payloads in `loadtest.hostile_payloads`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from loadtest.hostile_probes import Probe, Target, probes
from loadtest.rawhttp import Canary, RssPeak, proc_fds, proc_status, wait_for

#: settings the corpus runs under when it starts the service itself (short timeouts keep a run short)
FRONT_DOOR_ENV = {
    "OMR_HEAD_TIMEOUT_S": "1",
    "OMR_BODY_TIMEOUT_S": "1.5",
    "OMR_MAX_CONNECTIONS": "128",
    "OMR_MAX_BODY_BYTES": str(32 * 1024 * 1024),
    "OMR_MAX_BUFFERED_BYTES": str(64 * 1024 * 1024),
    "OMR_WORKERS": "1",
}


def run(target: Target, selected: list[Probe] | None = None) -> dict[str, object]:
    rows = []
    fds_before, rss_before = proc_fds(target.pid), proc_status(target.pid, "VmRSS")
    with Canary(target.port) as canary, RssPeak(target.pid) as rss:
        for probe in selected or probes():
            seen = len(canary.latencies)
            answers = probe.run(target)
            stall = max(canary.latencies[seen:], default=0.0)  # the canary's slowest answer during this probe
            statuses = sorted({a.status for a in answers}, key=lambda s: -1 if s is None else s)
            ok = all(a.status in probe.expect for a in answers)
            rows.append(
                {
                    "probe": probe.name,
                    "family": probe.family,
                    "statuses": statuses,
                    "ok": ok,
                    "seconds_max": round(max(a.seconds for a in answers), 3),
                    "answers": len(answers),
                    "rss_mib": round(proc_status(target.pid, "VmRSS") / 2**20, 1),
                    "canary_max_s": round(stall, 3),
                }
            )
    wait_for(lambda: proc_fds(target.pid) <= fds_before + 2, 15)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "probes": rows,
        "all_ok": all(r["ok"] for r in rows) and not canary.failures,
        "canary": {
            "requests": len(canary.latencies),
            "failures": canary.failures[:20],
            "max_s": round(canary.max_s, 3),
        },
        "rss_mib": {
            "before": round(rss_before / 2**20, 1),
            "peak": round(rss.peak / 2**20, 1),
            "after": round(proc_status(target.pid, "VmRSS") / 2**20, 1),
        },
        "fds": {"before": fds_before, "after": proc_fds(target.pid)},
    }


def markdown(report: dict[str, object]) -> str:
    lines = [
        "| probe | family | statuses | ok | slowest answer s | canary max s | RSS after MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["probes"]:  # type: ignore[attr-defined]
        statuses = ", ".join("closed" if s is None else str(s) for s in r["statuses"])
        cells = [r["probe"], r["family"], statuses, r["ok"], r["seconds_max"], r["canary_max_s"], r["rss_mib"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    c, m, f = report["canary"], report["rss_mib"], report["fds"]  # type: ignore[index]
    lines.append(
        f"\ncanary: {c['requests']} requests, {len(c['failures'])} failed, slowest {c['max_s']} s; "  # type: ignore[index]
        f"RSS {m['before']} -> peak {m['peak']} -> {m['after']} MiB; fds {f['before']} -> {f['after']}"
    )  # type: ignore[index]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.hostile", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int)
    p.add_argument("--pid", type=int, help="the service's process (for RSS and fds)")
    p.add_argument("--out", type=Path, default=Path("runs/hostile"))
    args = p.parse_args(argv)
    env = {k: float(v) for k, v in FRONT_DOOR_ENV.items() if k.endswith("_S")}
    if args.port:
        target = Target(args.port, args.pid, 10.0, 10.0, 512)
        report = run(target)
    else:
        from loadtest import server

        svc = server.start(FRONT_DOOR_ENV)
        try:
            target = Target(
                svc.port,
                svc.process.pid,
                env["OMR_HEAD_TIMEOUT_S"],
                env["OMR_BODY_TIMEOUT_S"],
                int(FRONT_DOOR_ENV["OMR_MAX_CONNECTIONS"]),
            )
            report = run(target)
        finally:
            server.stop(svc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "hostile.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
