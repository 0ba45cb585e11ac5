"""requirements/runtime.lock - what the image and `make serve` install - against pyproject.toml.

Every runtime dependency (with its extras' dependencies) is pinned with `==` to a version inside pyproject's
range, every pin carries a sha256 hash, nothing from the training stack is in it; and `make serve` on a fresh
venv installs exactly that file (hash-checked) while `make test` still installs the full stack.
"""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "runtime.lock"
#: the platform the lock is resolved for (`make lock`): the image's
LOCK_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}  # fmt: skip
NEVER = {"torch", "onnx", "onnxscript", "matplotlib", "pytest"}


def parse_lock(text: str) -> dict[str, tuple[Version, int]]:
    """{canonical name: (pinned version, number of hashes)}; a requirement that is not `name==version` is a
    ValueError (a range or a URL would make the build take whatever it finds)."""
    pins: dict[str, tuple[Version, int]] = {}
    entry: list[str] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.split("#", 1)[0].strip()
        if entry and (not line.startswith(" ") or not stripped):
            head = entry[0].rstrip("\\").strip()
            m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", head)
            if not m:
                raise ValueError(f"not pinned with ==: {head!r}")
            pins[canonicalize_name(m[1])] = (Version(m[2]), sum("--hash=sha256:" in e for e in entry))
            entry = []
        if stripped and not line.startswith(" "):
            entry = [stripped]
        elif stripped and entry:
            entry.append(stripped)
    return pins


def runtime_requirements() -> list[Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [Requirement(d) for d in deps]


def extra_requirements(req: Requirement) -> list[Requirement]:
    """What `req`'s extras pull in (e.g. uvicorn[standard] -> uvloop, httptools, ...), from the installed
    distribution's metadata, for the lock's platform."""
    out = []
    for line in metadata.requires(req.name) or []:
        sub = Requirement(line)
        wanted = sub.marker and any(sub.marker.evaluate({**LOCK_ENV, "extra": e}) for e in req.extras)
        if wanted and sub.marker and not sub.marker.evaluate({**LOCK_ENV, "extra": ""}):
            sub.marker = None  # evaluated here: it applies
            out.append(sub)
    return out


def lock_problems(text: str, reqs: list[Requirement]) -> list[str]:
    pins = parse_lock(text)
    problems = [f"{n}: no sha256 hash" for n, (_, hashes) in pins.items() if hashes == 0]
    problems += [f"{n}: training/dev package in the runtime lock" for n in pins if n in NEVER]
    for req in reqs:
        for r in [req, *extra_requirements(req)]:
            if r.marker and not r.marker.evaluate({**LOCK_ENV, "extra": ""}):
                continue
            name = canonicalize_name(r.name)
            if name not in pins:
                problems.append(f"{r} (from pyproject) is not in the lock: run `make lock`")
            elif not r.specifier.contains(pins[name][0], prereleases=True):
                problems.append(f"{name}=={pins[name][0]} is outside pyproject's {r}: run `make lock`")
    return problems


def test_lock_pins_every_runtime_dependency_inside_pyproject_ranges() -> None:
    problems = lock_problems(LOCK.read_text(), runtime_requirements())
    assert not problems, problems


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda t: re.sub(r"^numpy==\S+", "numpy==1.20.0", t, flags=re.M), "outside pyproject"),
        (lambda t: re.sub(r"^fastapi==", "fastapi>=", t, flags=re.M), "not pinned"),
        (lambda t: re.sub(r"^orjson==.*?(?=^\S)", "", t, flags=re.M | re.S), "orjson"),
        (lambda t: re.sub(r"^uvloop==.*?(?=^\S)", "", t, flags=re.M | re.S), "uvloop"),  # via uvicorn[standard]
        (lambda t: t + "torch==2.13.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", "training/dev"),
        (
            lambda t: re.sub(r"^(pillow==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+\n", r"\1\n", t, flags=re.M),
            "no sha256",
        ),
    ],
    ids=["out-of-range", "unpinned", "missing", "missing-extra", "torch", "no-hash"],
)
def test_lock_check_catches_a_bad_lock(mutate: object, expect: str) -> None:
    """The check can fail: each broken copy of the real lock is reported."""
    text = mutate(LOCK.read_text())  # type: ignore[operator]
    assert text != LOCK.read_text()
    try:
        problems = lock_problems(text, runtime_requirements())
    except ValueError as exc:
        problems = [str(exc)]
    assert any(expect in p for p in problems), problems


def make_dry_run(target: str, venv: Path) -> str:
    """`make -n TARGET` as on a fresh machine (a venv that does not exist yet): the commands it would run."""
    proc = subprocess.run(["make", "-n", "-C", str(REPO), target, f"VENV={venv}"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_serve_installs_only_the_lock(tmp_path: Path) -> None:
    cmds = make_dry_run("serve", tmp_path / "venv")
    installs = [ln for ln in cmds.splitlines() if "pip install" in ln]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install -q --require-hashes --no-deps -r "
                        "requirements/runtime.lock"], installs  # fmt: skip
    for word in ("torch", "train", "dev]", "onnx ", "matplotlib", "-e "):
        assert word not in cmds, f"`make serve` would run something with {word!r}:\n{cmds}"
    assert "-m service" in cmds


def test_make_test_keeps_the_full_stack(tmp_path: Path) -> None:
    cmds = make_dry_run("test", tmp_path / "venv")
    assert "pip install -q torch==2.13.0" in cmds and "-e '.[train,dev]'" in cmds, cmds
