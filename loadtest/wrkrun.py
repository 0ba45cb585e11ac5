"""Drive `wrk` (Debian package `wrk`) with prepared bodies and return exact figures.

wrk is a closed-loop generator written in C: `connections` clients each keep exactly one request in
flight, so throughput is what the service sustains at that concurrency and latency is per request.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "bodies.lua"
INSTALL_HINT = "wrk is not installed: run `apt-get install -y wrk` (Debian/Ubuntu) and re-run"


class WrkMissingError(RuntimeError):
    pass


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissingError(INSTALL_HINT)
    return path


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    header: str = ""  # one extra "Name: value" header, e.g. X-Crop-Shape


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "rps": self.rps, "failed": self.failed}


_JSON_LINE = re.compile(r"^WRK_JSON (\{.*\})\s*$", re.MULTILINE)


def parse_output(stdout: str) -> WrkResult:
    """The figures our Lua `done()` printed (exact percentiles, not wrk's rounded text table)."""
    m = _JSON_LINE.search(stdout)
    if m is None:
        raise RuntimeError(f"wrk printed no WRK_JSON line; output:\n{stdout[-2000:]}")
    d = orjson.loads(m.group(1))
    lat = d["latency_us"]
    return WrkResult(
        requests=int(d["requests"]),
        duration_s=d["duration_us"] / 1e6,
        errors={k: int(v) for k, v in d["errors"].items()},
        p50_ms=lat["p50"] / 1e3,
        p90_ms=lat["p90"] / 1e3,
        p99_ms=lat["p99"] / 1e3,
        p999_ms=lat["p999"] / 1e3,
        mean_ms=lat["mean"] / 1e3,
        max_ms=lat["max"] / 1e3,
    )


def write_manifest(bodies: list[Body], folder: Path) -> Path:
    lines = []
    for i, b in enumerate(bodies):
        path = folder / f"body{i:04d}.bin"
        path.write_bytes(b.data)
        lines.append(f"{path}\t{b.content_type}\t{b.header}".rstrip("\t"))
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run(
    url: str, bodies: list[Body], connections: int, duration_s: float, threads: int = 1, timeout_s: float = 10.0
) -> WrkResult:
    """POST `bodies` round-robin to `url` (127.0.0.1 only) from `connections` clients for `duration_s`;
    with no bodies, GET `url`."""
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise ValueError(f"load runs only target this machine, not {url}")
    exe = wrk_path()
    with tempfile.TemporaryDirectory(prefix="omr-wrk-") as tmp:
        manifest = [str(write_manifest(bodies, Path(tmp)))] if bodies else []  # no bodies: plain GETs
        cmd = [
            exe,
            f"-t{max(1, min(threads, connections))}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            *manifest,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-1000:]}")
    return parse_output(proc.stdout)
