"""No tracked source file names an absolute path of a development machine: a clone anywhere must work.

Paths to data outside the repository are relative to the checkout (`../shared/...`) or come from a setting /
option (`--real-dev`, `OMR_REAL_DEV`, `REAL_LABELS=`); never `/work/...`, `/root/...` or `/home/...`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users)/[\w.-]")
#: the bundled model's metrics record where they were measured (an artifact written by `make model`, not source)
ARTIFACTS = ("models/repository/",)


def tracked_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if proc.returncode == 0 and proc.stdout:
        names = [n for n in proc.stdout.decode().split("\0") if n]
    else:  # not a git checkout (an sdist, an image): every file but the environment and caches
        skip = {".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and not skip & set(p.parts)]
    this = str(Path(__file__).resolve().relative_to(REPO))  # its own examples below
    return [REPO / n for n in names if not n.startswith(ARTIFACTS) and n != this]


def test_no_source_file_names_a_machine_path() -> None:
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary (ONNX, PNG)
        for k, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(REPO)}:{k}: {line.strip()[:120]}")
    assert not hits, "absolute paths of a development machine:\n" + "\n".join(hits)


def test_the_pattern_catches_what_it_should() -> None:
    assert MACHINE_PATH.search('REAL = Path("/work/shared/data/real-dev")')
    assert MACHINE_PATH.search("see /home/alice/omr")
    assert not MACHINE_PATH.search("../shared/data/real-dev/labels.csv")
    assert not MACHINE_PATH.search("https://example.com/work/x and /tmp/omr-service.log")
