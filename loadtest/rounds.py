"""Interleaved rounds for the benchmark: every server up at once, each round measures them all in turn, and a
figure is the median of its rounds (each round's figure is kept beside it).

Why: this machine's speed moves by a third within minutes (docs/performance.md: the same code's idle sheet at
p50 7.4 ms in one minute and 11.5 in another). Measured one server after the other, the service's minutes
and a peer's minutes fall in different phases of the host, and their ratio measures the host. Here every
pair a target compares (the service and a peer on one shape, the service's sheets and the in-process ceiling)
is measured back to back, in every round. Idle servers cost nothing measurable: they wait in epoll.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: the per-round figures kept beside a median row
ROUND_KEYS = ("crops_per_s", "p50_ms", "p99_ms", "load_avg_1m")
#: fields that add up over rounds (the failure rule compares failed with requests)
SUMMED = frozenset({"requests", "failed"})


@dataclass(frozen=True)
class Step:
    """One measurement of a round: `group` ("batching_on", "reference", "ceiling", ...) and what it measures."""

    group: str
    name: str
    run: Callable[[], dict[str, Any]]


def _median(values: Sequence[Any]) -> Any:
    """Floats by median; whole numbers (batch, threads) keep their type; anything else: the first."""
    if all(isinstance(v, int) for v in values):
        return statistics.median_low(values)
    return statistics.median(values) if all(isinstance(v, int | float) for v in values) else values[0]


def median_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' rows of one step -> one row: numbers by median (counts summed), the rest as the first
    round had them, `stages` key by key, and `rounds`: each round's headline figures."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [r[key] for r in rows if key in r]
        if key in SUMMED:
            out[key] = sum(values)
        elif isinstance(first, bool) or not isinstance(first, int | float | dict):
            out[key] = first
        elif isinstance(first, dict):
            out[key] = {k: _median([v[k] for v in values if k in v]) for k in first} if key == "stages" else first
        else:
            out[key] = _median(values)
    if len(rows) > 1:
        out["rounds"] = [{k: r[k] for k in ROUND_KEYS if k in r} for r in rows]
    return out


def run_rounds(steps: Sequence[Step], rounds: int, log: Callable[[str], None] = print) -> dict[tuple[str, str], dict]:
    """Every step once per round, in order; (group, name) -> the median row over the rounds."""
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(rounds):
        for step in steps:
            row = step.run()
            got.setdefault((step.group, step.name), []).append(row)
            if "crops_per_s" in row:
                lat = f", p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms" if "p99_ms" in row else ""
                log(f"[round {r + 1}/{rounds}] {step.group} {step.name}: {row['crops_per_s']:,.0f} crops/s{lat}")
    return {key: median_row(rows) for key, rows in got.items()}


def table(result: dict[str, Any], peers: Sequence[str], fmt: Callable[[float], str]) -> list[str]:
    """Each round's figures of the rows the targets use (`loadtest.rounds`: the tables show the medians)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    for mode, body in result.get("service", {}).items():
        if isinstance(body, dict):
            tag = mode.removeprefix("batching_")
            rows += [(f"service {tag} {r['scenario']}", r) for r in body.get("scenarios", [])]
    for key in peers:
        rows += [(f"{key} {r['scenario']}", r) for r in result.get(key, {}).get("scenarios", [])]
    variant = result["service_variant"]
    par = (result["ceiling"].get(variant) or {}).get("pipeline_parallel") or {}
    out = [f"| {name} | " + " | ".join(f"{fmt(x['crops_per_s'])} ({x['p99_ms']:.1f})" for x in r["rounds"]) + " |"
           for name, r in rows if r.get("rounds")]  # fmt: skip
    if not out:
        return []
    n = len(next(r for _, r in rows if r.get("rounds"))["rounds"])
    head = ["", f"**Rounds** (interleaved; every figure above is the median of {n}): crops/s (p99 ms) per round", "",
            "| measured | " + " | ".join(f"round {i + 1}" for i in range(n)) + " |", "|---|" + "---:|" * n]  # fmt: skip
    if par.get("rounds"):
        cells = " | ".join(fmt(x["crops_per_s"]) for x in par["rounds"])
        head.append(f"| in-process ceiling of the cores | {cells} |")
    return head + out
