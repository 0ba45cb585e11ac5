"""How many CPUs this container is given: the cgroup CPU quota, not the host's CPU count.

A pod with `resources.limits.cpu: 2` on a 64-core node sees 64 CPUs in `os.cpu_count()`; starting 64 workers
there would mean 64 ONNX sessions and 64 x the memory, time-sliced onto 2 cores by the CFS quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _quota_v2(root: Path) -> float | None:
    """cgroup v2 `cpu.max`: "<quota> <period>" or "max <period>" (no limit)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _quota_v1(root: Path) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a quota of -1 means no limit."""
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def container_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: ceil(cgroup quota), capped by the affinity mask (cpuset); at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota = _quota_v2(root)
    if quota is None:
        quota = _quota_v1(root)
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(quota - 1e-9)))


def resolve_workers(configured: int, root: Path = CGROUP_ROOT) -> int:
    """`OMR_WORKERS`: 0 means one worker per CPU the container is given."""
    return configured if configured > 0 else container_cpus(root)


def worker_cpu(index: int, workers: int, pin: bool | None, split_sheets: bool = True) -> int | None:
    """The CPU worker `index` keeps to, or None (the kernel places it).

    `pin` None (auto): pin only when sheets are split over workers (`split_sheets`) and this process may run
    on exactly `workers` CPUs: a container given whole CPUs of its own (the kubelet's static CPU manager,
    `docker --cpuset-cpus`). There each worker owning one CPU keeps its decode and model threads off the
    other worker's CPU: an idle sheet split over two workers (`service.core.parts`) measured p50 11.8 -> 9.7
    ms, sheets +5 %, single crops +2 % (docs/performance.md). Without splitting, an idle sheet wants its two
    model calls on two CPUs (the batcher's split), so no pinning. Where the affinity mask is the node's 64
    CPUs and the quota is 2, pinning would tie the workers to two CPUs everyone else uses too: not pinned.
    """
    try:
        mask = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if pin is False or workers < 2 or (pin is None and (len(mask) != workers or not split_sheets)):
        return None
    return mask[index % len(mask)]
