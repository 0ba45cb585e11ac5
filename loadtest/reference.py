"""The peer servers the benchmark compares with, as in issue 13's table: TorchServe 0.12 (its Java front end,
1 Python worker, batch 256 / 5 ms, the bundled ONNX model with 1 intra-op thread) and the naive FastAPI baseline
(`loadtest.naive_app`: one process, threadpool, one ONNX Runtime call per request).

`reference.running(version_dir)` archives the model with `torch-model-archiver`, starts `torchserve
--foreground` on free 127.0.0.1 ports and waits until a real request is answered; its CPU time covers the Java
process and its Python worker. Needs `pip install torchserve torch-model-archiver` (the `bench` extra) and a
Java 17 runtime (Debian `openjdk-17-jre-headless`); `ReferenceUnavailable` says which is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest import wrkrun
from loadtest.server import _CLK_TCK, HOST, _process_tree, free_port

HANDLER = Path(__file__).resolve().parent / "torchserve" / "omr_handler.py"
REPO = Path(__file__).resolve().parents[1]
MODEL = "omr"


class ReferenceUnavailable(RuntimeError):
    pass


@dataclass
class Reference:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    path: str = f"/predictions/{MODEL}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    def cpu_seconds(self) -> float:
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / _CLK_TCK

    def rss_bytes(self) -> int:
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total


def _tools() -> tuple[str, str]:
    ts, mar = shutil.which("torchserve"), shutil.which("torch-model-archiver")
    bindir = Path(sys.executable).parent
    ts = ts or (str(bindir / "torchserve") if (bindir / "torchserve").exists() else None)
    mar = mar or (str(bindir / "torch-model-archiver") if (bindir / "torch-model-archiver").exists() else None)
    if ts is None or mar is None:
        raise ReferenceUnavailable("torchserve is not installed: pip install torchserve torch-model-archiver")
    if shutil.which("java") is None:
        raise ReferenceUnavailable("java is not installed: apt-get install -y openjdk-17-jre-headless")
    # absolute: torchserve runs in its own work folder, where a PATH entry like ".venv/bin" means nothing
    return str(Path(ts).resolve()), str(Path(mar).resolve())


def _post(url: str, body: bytes, timeout: float = 10.0) -> int:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@contextlib.contextmanager
def running(version_dir: Path, probe_body: bytes, log_path: Path, batch_size: int = 256,
            max_delay_ms: int = 5, ready_timeout_s: float = 240.0) -> Iterator[Reference]:  # fmt: skip
    ts, mar = _tools()
    work = Path(tempfile.mkdtemp(prefix="omr-torchserve-"))
    try:
        store = work / "store"
        store.mkdir()
        subprocess.run(
            [mar, "--model-name", MODEL, "--version", "1", "--serialized-file", str(version_dir / "model.onnx"),
             "--handler", str(HANDLER), "--export-path", str(store), "--force"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port, mgmt, metrics = free_port(), free_port(), free_port()
        (work / "config.properties").write_text(
            f"inference_address=http://{HOST}:{port}\nmanagement_address=http://{HOST}:{mgmt}\n"
            f"metrics_address=http://{HOST}:{metrics}\ndisable_token_authorization=true\n"
            # its once-a-minute system-metrics script would land in the other servers' measured minutes
            "disable_system_metrics=true\n"
            "enable_envvars_config=false\ninstall_py_dep_per_model=false\ndefault_workers_per_model=1\n"
            f"models={{\"{MODEL}\": {{\"1\": {{\"marName\": \"{MODEL}.mar\", \"minWorkers\": 1, \"maxWorkers\": 1, "
            f"\"batchSize\": {batch_size}, \"maxBatchDelay\": {max_delay_ms}, \"responseTimeout\": 30}}}}}}\n"
            f"load_models={MODEL}.mar\nmodel_store={store}\njob_queue_size=1000\n"
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "OMR_REFERENCE_VERSION_DIR": str(version_dir), "LOG_LOCATION": str(work / "logs"),
               "METRICS_LOCATION": str(work / "logs")}  # fmt: skip
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [ts, "--start", "--foreground", "--ncs", "--model-store", str(store),
                 "--ts-config", str(work / "config.properties"), "--disable-token-auth"],
                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        ref = Reference("TorchServe 0.12.0 (Java front end, 1 Python worker)", proc, port, log_path)
        with _serving(ref, probe_body, ready_timeout_s):
            yield ref
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def running_naive(version_dir: Path, probe_body: bytes, log_path: Path,
                  ready_timeout_s: float = 120.0) -> Iterator[Reference]:  # fmt: skip
    """The naive FastAPI baseline (`loadtest.naive_app`) under uvicorn on a free 127.0.0.1 port."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMR_REFERENCE_VERSION_DIR": str(version_dir)}  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "loadtest.naive_app:app", "--host", HOST, "--port", str(port),
             "--no-access-log", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    ref = Reference("naive FastAPI (1 process, threadpool, one ORT call per request)", proc, port, log_path,
                    path="/classify")  # fmt: skip
    with _serving(ref, probe_body, ready_timeout_s):
        yield ref


@contextlib.contextmanager
def _serving(ref: Reference, probe_body: bytes, ready_timeout_s: float) -> Iterator[None]:
    """Wait until `ref` answers a real request (its start-up is another process's: nothing to wait on but its
    port), and stop its whole process group afterwards."""
    proc = ref.process
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise ReferenceUnavailable(f"{ref.name} exited with {proc.returncode}: see {ref.log_path}")
            with contextlib.suppress(OSError):
                if _post(ref.url, probe_body) == 200:
                    break
            if time.monotonic() > deadline:
                raise ReferenceUnavailable(f"{ref.name} not answering in {ready_timeout_s:.0f}s: see {ref.log_path}")
            time.sleep(0.5)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def measure(ref: Reference, bodies: list[wrkrun.Body], connections: int, crops_per_request: int,
            duration_s: float, warmup_s: float) -> dict[str, object]:  # fmt: skip
    """The same wrk run as `scenarios.measure`, against the reference (no /metrics stages)."""
    if warmup_s > 0:
        wrkrun.run(ref.url, bodies, connections, warmup_s)
    cpu0, t0 = ref.cpu_seconds(), time.monotonic()
    res = wrkrun.run(ref.url, bodies, connections, duration_s)
    cpu, elapsed = ref.cpu_seconds() - cpu0, time.monotonic() - t0
    crops = (res.requests - res.errors["status"]) * crops_per_request
    return {
        "server": ref.name,
        "connections": connections,
        "crops_per_request": crops_per_request,
        "crops_per_s": crops / res.duration_s if res.duration_s else 0.0,
        "service_cores_used": cpu / elapsed if elapsed else 0.0,
        "crops_per_service_cpu_s": crops / cpu if cpu > 0 else 0.0,
        "rss_mb": ref.rss_bytes() / 2**20,
        "load_avg_1m": os.getloadavg()[0],
        **res.to_dict(),
    }
