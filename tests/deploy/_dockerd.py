"""A Docker engine started by hand for one test session, and the host put back as it was afterwards.

No systemd, no registry: Debian's `dockerd` (package docker.io) with its data-root, exec-root, pid file and API
socket in a fresh temporary folder; Debian's `/usr/bin/docker` CLI talks to it (`DOCKER_HOST`), so
`DOCKER_BUILDKIT=1` uses the engine's built-in BuildKit (a newer CLI elsewhere on PATH would want the buildx
plugin). The base image comes from `debootstrap`, cached as a tarball between runs.

What dockerd changes on the host, and `HostState.restore` undoes: the docker0 bridge, its iptables rules and
chains in the filter and nat tables (and the tables themselves where it created them), the FORWARD policy,
`net.ipv4.ip_forward` and the bridge-netfilter sysctls. Processes are stopped by PID: dockerd with SIGTERM
(it stops its containerd), then any process still naming the engine's folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SYSCTLS = [
    Path("/proc/sys/net/ipv4/ip_forward"),
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables"),
    Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
    Path("/proc/sys/net/bridge/bridge-nf-call-arptables"),
]
#: what the local base image holds: the Dockerfile's `python -m venv` needs `python` (python-is-python3) + venv
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]


def run(cmd: Sequence[str], timeout: float = 120, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def why_not() -> str:
    """'' where this machine can run the engine (installing docker.io/debootstrap if missing), else the reason."""
    if os.uname().sysname != "Linux":
        return "dockerd needs Linux"
    if os.geteuid() != 0:
        return "dockerd, debootstrap and iptables need root"
    missing = [p for p in (DOCKERD, DOCKER, DEBOOTSTRAP) if not Path(p).exists()]
    if missing and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], timeout=300, check=False, env=env)
        run(["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"], timeout=600, check=False, env=env)
        missing = [p for p in (DOCKERD, DOCKER, DEBOOTSTRAP) if not Path(p).exists()]
    if missing:
        return f"{', '.join(missing)} missing and apt-get could not install docker.io/debootstrap"
    if Path("/sys/class/net/docker0").exists():
        return "a docker0 bridge exists already (another Docker engine runs here); not sharing it"
    return ""


def _iptables_rules(table: str) -> list[str]:
    proc = run(["iptables", "-t", table, "-S"], check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def _nft_tables() -> set[str]:
    if not shutil.which("nft"):
        return set()
    return {ln.strip() for ln in run(["nft", "list", "tables"], check=False).stdout.splitlines() if ln.strip()}


@dataclass
class HostState:
    """The parts of the host dockerd changes, captured before it starts."""

    sysctls: dict[Path, str]
    rules: dict[str, list[str]]
    nft_tables: set[str]

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            sysctls={p: p.read_text().strip() for p in SYSCTLS if p.exists()},
            rules={t: _iptables_rules(t) for t in ("filter", "nat")},
            nft_tables=_nft_tables(),
        )

    def restore(self) -> None:
        if Path("/sys/class/net/docker0").exists():
            run(["ip", "link", "delete", "docker0"], check=False)
        for table in ("filter", "nat"):
            rules = _iptables_rules(table)
            for rule in reversed([r for r in rules if r.startswith("-A ") and r not in self.rules[table]]):
                if "DOCKER" in rule or "docker0" in rule:
                    run(["iptables", "-t", table, "-D", *rule[3:].split()], check=False)
            for chain in [r.split()[1] for r in rules if r.startswith("-N DOCKER")]:
                run(["iptables", "-t", table, "-F", chain], check=False)
                run(["iptables", "-t", table, "-X", chain], check=False)
        before = next((r for r in self.rules["filter"] if r.startswith("-P FORWARD ")), "-P FORWARD ACCEPT")
        run(["iptables", "-P", "FORWARD", before.split()[-1]], check=False)
        for table in ("filter", "nat"):  # tables iptables-nft created for dockerd, now empty again: drop them
            name = f"table ip {table}"
            rest = [r for r in _iptables_rules(table) if not (r.startswith("-P ") and r.endswith(" ACCEPT"))]
            if name in _nft_tables() and name not in self.nft_tables and not rest:
                run(["nft", "delete", "table", "ip", table], check=False)
        for path, value in self.sysctls.items():
            with contextlib.suppress(OSError):
                path.write_text(value)

    def differences(self) -> list[str]:
        """What still differs from the captured state (empty when fully restored)."""
        now = HostState.capture()
        out = [f"{p} is {now.sysctls.get(p)!r}, was {v!r}" for p, v in self.sysctls.items() if now.sysctls.get(p) != v]
        out += [f"iptables -t {t} differs: {sorted(set(now.rules[t]) ^ set(self.rules[t]))}"
                for t in self.rules if now.rules[t] != self.rules[t]]  # fmt: skip
        if now.nft_tables != self.nft_tables:
            out.append(f"nft tables {sorted(now.nft_tables)}, were {sorted(self.nft_tables)}")
        if Path("/sys/class/net/docker0").exists():
            out.append("docker0 still exists")
        return out


@dataclass
class Engine:
    root: Path
    proc: subprocess.Popen[bytes]
    host: HostState
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([DOCKER, *args], timeout=timeout, check=check, env=self.env)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _pids_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
    return pids


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)  # another process exiting: nothing to block on but /proc
    return not Path(f"/proc/{pid}").exists()


@contextlib.contextmanager
def engine(ready_timeout_s: float = 60) -> Iterator[Engine]:
    """dockerd in a temporary folder (short path: containerd's socket paths are limited to 108 bytes)."""
    host = HostState.capture()
    root = Path(tempfile.mkdtemp(prefix="omr-dockerd-"))
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [DOCKERD, f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'pid'}",
             f"--host=unix://{sock}", "--log-level=warn"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(root / "cli")}
    eng = Engine(root, proc, host, log, env)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while eng.docker("info", timeout=10, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start (exit {proc.poll()}):\n{eng.log_tail()}")
            time.sleep(0.2)  # the daemon initialising: its socket is the only thing to watch
        yield eng
    finally:
        with contextlib.suppress(Exception):
            ids = eng.docker("ps", "-aq", timeout=30, check=False).stdout.split()
            if ids:
                eng.docker("rm", "-f", *ids, timeout=60, check=False)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in _pids_naming(str(root)):  # containerd, shims: anything still naming our folder
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for line in Path("/proc/mounts").read_text().splitlines():  # overlay/shm mounts left under data-root
            target = line.split()[1]
            if target.startswith(str(root)):
                run(["umount", "-l", target], check=False)
        host.restore()
        shutil.rmtree(root, ignore_errors=True)


def base_image(eng: Engine, tag: str, cache_dir: Path) -> None:
    """A Debian 12 image with CPython 3.11 + venv + pip and the host's CA bundle, made without a registry.

    `debootstrap --variant=minbase` once into a tarball under `cache_dir` (keyed by the package list), then
    `docker import`. The host's CA bundle goes in so the build's pip trusts what the host trusts (a TLS-inspecting
    proxy's CA, where there is one); PIP_CERT points pip at it.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"bookworm-minbase-{'-'.join(sorted(BASE_PACKAGES))}.tar"
    if not tarball.exists():
        with tempfile.TemporaryDirectory(prefix="omr-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
            run([DEBOOTSTRAP, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(rootfs),
                 mirror], timeout=900)  # fmt: skip
            for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for p in (rootfs / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            partial = tarball.with_suffix(".partial")
            run(["tar", "-C", str(rootfs), "-cf", str(partial), "--numeric-owner", "."], timeout=300)
            partial.rename(tarball)
    with tempfile.TemporaryDirectory(prefix="omr-ca-") as tmp:
        layer = Path(tmp) / "ca.tar"
        shutil.copy(tarball, layer)
        ca_dir = Path(tmp) / "etc" / "ssl" / "certs"
        ca_dir.mkdir(parents=True)
        shutil.copy(HOST_CA_BUNDLE, ca_dir / "ca-certificates.crt")
        run(["tar", "--delete", "-f", str(layer), "./etc/ssl/certs/ca-certificates.crt"])  # no duplicate paths
        run(["tar", "-C", tmp, "-rf", str(layer), "--numeric-owner", "--owner=0", "--group=0",
             "./etc/ssl/certs/ca-certificates.crt"])  # fmt: skip
        run([DOCKER, "import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", str(layer), tag],
            env=eng.env, timeout=300)  # fmt: skip
