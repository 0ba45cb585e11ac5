"""Profile the running service under one benchmark traffic shape with py-spy:
`python -m loadtest.profile --shape sheets --seconds 10 --out runs/profile`.

Starts `python -m service` on 127.0.0.1, drives it with wrk, and samples every thread of the service with
`py-spy record --nonblocking` (time inside ONNX Runtime / OpenCV / zlib counts for the Python call that
entered it; `--native` resolves C frames too, at the cost of pausing the service per sample).
Writes `<shape>.svg` (flame graph), `<shape>.txt` (collapsed stacks) and `<shape>-top.md`: the
functions with the most samples, self and inclusive, i.e. the hot spots.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from loadtest import scenarios, server, wrkrun
from loadtest.crops import CropPool

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> tuple[str, bool]:
    """`func (path/to/file.py:12)` -> (`func (to/file.py)`, is it this project's service code?)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), False
    path = m["file"]
    ours = "site-packages" not in path and (path.startswith("service/") or "/service/" in path)
    return f"{m['func']} ({'/'.join(Path(path).parts[-2:])})", ours


def top_functions(collapsed: str, n: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, top self, top inclusive) from py-spy's collapsed-stack (`--format raw`) output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_short(f) for f in stack.split(";")[1:]]  # first entry is the thread
        if not frames:
            continue
        total += c
        self_c[frames[-1][0]] += c
        for f in {name for name, ours in frames if ours}:
            incl[f] += c
    return total, self_c.most_common(n), incl.most_common(n)


def top_markdown(shape: str, collapsed: str) -> str:
    total, self_top, incl_top = top_functions(collapsed)
    lines = [f"### py-spy: {shape} ({total} samples of busy threads)", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * c / max(total, 1):.1f} | `{f}` |" for f, c in self_top]
    lines += ["", "| inclusive % | service function (time in it and below) |", "|---:|---|"]
    lines += [f"| {100 * c / max(total, 1):.1f} | `{f}` |" for f, c in incl_top]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["sheets", "single", "sheets-raw", "idle-sheet"], default="sheets")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("runs/profile"))
    p.add_argument("--native", action="store_true", help="resolve C frames (pauses the service per sample)")
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL: where Python time goes")
    p.add_argument("--env", nargs="*", default=[], metavar="OMR_X=V", help="settings for the service")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    wrkrun.wrk_path()
    args.out.mkdir(parents=True, exist_ok=True)
    pool = CropPool.build(512, seed=0)
    shape = {
        "sheets": lambda: scenarios.sheets_json(pool, 64, 8),
        "single": lambda: scenarios.single_json(pool, 64),
        "sheets-raw": lambda: scenarios.sheets_raw(pool, 64, 8),
        "idle-sheet": lambda: scenarios.sheets_json(pool, 100, 1, n_bodies=8, name="idle-sheet"),
    }[args.shape]()
    env = dict(kv.split("=", 1) for kv in args.env)
    # --nonblocking samples without pausing the service (blocking sampling cut its throughput 10x here);
    # --native pauses it but resolves C frames (ORT, OpenCV, zlib): use it to split time inside C calls
    spy_mode = (["--native"] if args.native else ["--nonblocking"]) + (["--gil"] if args.gil else [])
    with server.running(env, log_path=args.out / "service.log") as svc:
        scenarios.check_once(svc, shape)
        result: dict[str, object] = {}
        load = threading.Thread(
            target=lambda: result.update(scenarios.measure(svc, shape, args.seconds + 2, warmup_s=1)), daemon=True
        )
        load.start()
        base = args.out / args.shape
        for fmt, suffix in (("raw", ".txt"), ("flamegraph", ".svg")):
            subprocess.run(
                [spy, "record", "--pid", str(svc.process.pid), "--duration", str(args.seconds // 2 or 1),
                 "--rate", str(args.rate), *spy_mode, "--threads", "--subprocesses", "--format", fmt,
                 "-o", str(base) + suffix],
                check=True, capture_output=True, timeout=args.seconds + 60,
            )  # fmt: skip
        load.join(args.seconds + 60)
    md = top_markdown(args.shape, (base.with_suffix(".txt")).read_text())
    if result:
        md += f"\nUnder load: {result['crops_per_s']:,.0f} crops/s, p99 {result['p99_ms']:.1f} ms.\n"
    (args.out / f"{args.shape}-top.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
