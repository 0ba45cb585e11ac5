"""Per-step figures from locust's per-request log, the SLO verdict, and the throughput/latency plot."""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SHEET_KINDS = ("sheet_json", "sheet_raw")


@dataclass(frozen=True)
class Row:
    start: float
    name: str
    ms: float
    crops: int
    ok: bool
    users: int


@dataclass(frozen=True)
class Step:
    users: int
    seconds: float
    requests: int
    failures: int
    rps: float
    crops_per_s: float
    p50_ms: dict[str, float]
    p99_ms: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def step_users(t: float, peak: int, total_s: float, n_steps: int) -> int | None:
    """Users at time `t` of a step load: `n_steps` equal steps up to `peak` over `total_s`; None = stop."""
    if t >= total_s:
        return None
    n_steps = max(1, n_steps)
    step = min(n_steps - 1, int(t / (total_s / n_steps)))
    return max(1, math.ceil(peak * (step + 1) / n_steps))


def read_rows(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        return [
            Row(float(r["start_time"]), r["name"], float(r["response_ms"]), int(r["crops"]), r["ok"] == "True",
                int(r["users"]))
            for r in csv.DictReader(f)
        ]  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def per_step(rows: list[Row], n_steps: int, total_s: float, settle_s: float = 1.0) -> list[Step]:
    """Group requests by the load step they started in (time since the first request), skipping the first
    `settle_s` of each step while users are still being spawned or stopped."""
    if not rows:
        return []
    t0 = min(r.start for r in rows)
    step_s = total_s / max(1, n_steps)
    groups: dict[int, list[Row]] = defaultdict(list)
    for r in rows:
        k = min(n_steps - 1, int((r.start - t0) / step_s))
        if r.start - t0 - k * step_s >= min(settle_s, step_s / 2):
            groups[k].append(r)
    steps = []
    for k in sorted(groups):
        g = groups[k]
        seconds = max(max(r.start for r in g) - min(r.start for r in g), 1e-3)
        ok = [r for r in g if r.ok]
        by_name: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            by_name[r.name].append(r.ms)
        by_name["all"] = [r.ms for r in ok]
        steps.append(
            Step(
                users=Counter(r.users for r in g).most_common(1)[0][0],
                seconds=seconds,
                requests=len(g),
                failures=len(g) - len(ok),
                rps=len(ok) / seconds,
                crops_per_s=sum(r.crops for r in ok) / seconds,
                p50_ms={k: _pct(v, 50) for k, v in by_name.items()},
                p99_ms={k: _pct(v, 99) for k, v in by_name.items()},
            )
        )
    return steps


def slo_verdict(
    rows: list[Row], slo_p99_ms: float, slo_sheet_p99_ms: float | None, max_fail_ratio: float
) -> dict[str, object]:
    """Whole-run p99 per request kind against its SLO, plus the failure ratio. `met` is the exit code's truth."""
    checks = []
    names = sorted({r.name for r in rows})
    for name in names:
        lat = [r.ms for r in rows if r.name == name and r.ok]
        limit = slo_sheet_p99_ms if (name in SHEET_KINDS and slo_sheet_p99_ms is not None) else slo_p99_ms
        p99 = _pct(lat, 99)
        checks.append({"kind": name, "p99_ms": p99, "slo_p99_ms": limit, "met": bool(lat) and p99 <= limit})
    failures = sum(not r.ok for r in rows)
    ratio = failures / len(rows) if rows else 1.0
    checks.append({"kind": "failure_ratio", "value": ratio, "max": max_fail_ratio, "met": ratio <= max_fail_ratio})
    met = bool(rows) and all(c["met"] for c in checks)
    return {"met": met, "requests": len(rows), "failures": failures, "checks": checks}


def plot(steps: list[Step], slo_p99_ms: float, path: Path, title: str, slo_sheet_p99_ms: float | None = None) -> None:
    """Throughput (crops/s, req/s) and p50/p99 per request kind against offered load (users)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    users = [s.users for s in steps]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax1.plot(users, [s.crops_per_s for s in steps], "o-", label="crops/s")
    ax1.set_ylabel("crops/s")
    ax1b = ax1.twinx()
    ax1b.plot(users, [s.rps for s in steps], "s--", color="tab:gray", label="requests/s")
    ax1b.set_ylabel("requests/s")
    ax1.set_title(title)
    ax1.legend(loc="upper left")
    ax1b.legend(loc="lower right")
    kinds = sorted({k for s in steps for k in s.p99_ms if k != "all"})
    for k in kinds:
        line = ax2.plot(users, [s.p99_ms.get(k, np.nan) for s in steps], "o-", label=f"{k} p99")[0]
        ax2.plot(users, [s.p50_ms.get(k, np.nan) for s in steps], "x:", color=line.get_color(), label=f"{k} p50")
    ax2.axhline(slo_p99_ms, color="red", linewidth=1, label=f"SLO p99 {slo_p99_ms:g} ms")
    if slo_sheet_p99_ms is not None:
        label = f"sheet SLO {slo_sheet_p99_ms:g} ms"
        ax2.axhline(slo_sheet_p99_ms, color="red", linestyle="--", linewidth=1, label=label)
    ax2.set_yscale("log")
    ax2.set_ylabel("latency ms (log)")
    ax2.set_xlabel("offered load: concurrent paced users")
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ms(x: float | None) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.1f}"


def markdown(steps: list[Step], verdict: dict[str, object]) -> str:
    kinds = sorted({k for s in steps for k in s.p99_ms if k != "all"})
    head = "| users | req/s | crops/s | failed | " + " | ".join(f"{k} p50/p99 ms" for k in kinds) + " |"
    lines = [head, "|---:|---:|---:|---:|" + "---:|" * len(kinds)]
    for s in steps:
        lat = " | ".join(f"{_ms(s.p50_ms.get(k))} / {_ms(s.p99_ms.get(k))}" for k in kinds)
        lines.append(f"| {s.users} | {s.rps:,.1f} | {s.crops_per_s:,.0f} | {s.failures} | {lat} |")
    lines += ["", f"SLO {'met' if verdict['met'] else 'MISSED'}:"]
    for c in verdict["checks"]:  # type: ignore[attr-defined]
        if c["kind"] == "failure_ratio":
            lines.append(f"- failure ratio {c['value']:.4f} (max {c['max']:g}): {'ok' if c['met'] else 'MISSED'}")
        else:
            lines.append(f"- {c['kind']}: p99 {c['p99_ms']:.1f} ms (SLO {c['slo_p99_ms']:g}): "
                         f"{'ok' if c['met'] else 'MISSED'}")  # fmt: skip
    return "\n".join(lines) + "\n"
