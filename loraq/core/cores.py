"""How many cores this process may use: the CPUs it may run on, fewer where its cgroup's CPU quota
allows less. A container started with `--cpus=1`, or a Kubernetes pod with a CPU limit of 1, on a
64-core host may run on all 64 CPUs (`os.sched_getaffinity`) for a second's worth of time a second."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """At least one."""
    # sched_getaffinity is Linux's; elsewhere (a laptop running `make serve`) every CPU counts.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, root)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def cgroup_cpu_quota(proc_cgroup: Path, root: Path) -> float | None:
    """CPUs' worth of time the process's cgroup may use, or None: no quota, or none that can be read."""
    try:
        return _quota(proc_cgroup.read_text().splitlines(), root)
    except (OSError, ValueError):  # not Linux, or not as expected: the CPUs alone decide
        return None


def _quota(memberships: list[str], root: Path) -> float | None:
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2: "max 100000", or "<quota> <period>" in microseconds
            # Where the process sees only its own cgroup (a container's namespace), it is the root.
            for directory in (root / relative, root):
                if (limit := _read(directory / "cpu.max")) is not None:
                    quota, period = limit.split()
                    return None if quota == "max" else int(quota) / int(period)
        elif "cpu" in controllers.split(","):  # cgroup v1: a quota of -1 is none
            for directory in (root / "cpu" / relative, root / "cpu"):
                quota_us = _read(directory / "cpu.cfs_quota_us")
                period_us = _read(directory / "cpu.cfs_period_us")
                if quota_us is not None and period_us is not None:
                    return None if int(quota_us) < 0 else int(quota_us) / int(period_us)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
