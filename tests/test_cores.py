"""LORAQ_API_WORKERS=auto counts the cores a process may use: its CPUs, fewer where its cgroup's CPU quota
allows less (a container's --cpus, a Kubernetes CPU limit), read from files laid out as Linux lays them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loraq.core.cores import usable_cores

CPUS = len(os.sched_getaffinity(0))


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text(membership)
    root = tmp_path / "sys-fs-cgroup"
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content + "\n")
    return proc_cgroup, root


@pytest.mark.parametrize(
    ("membership", "files", "quota_cores"),
    [
        # cgroup v2 in a container's own namespace: the container's cgroup is the root.
        ("0::/\n", {"cpu.max": "100000 100000"}, 1),
        ("0::/\n", {"cpu.max": "50000 100000"}, 1),  # half a core still runs one process
        ("0::/\n", {"cpu.max": "150000 100000"}, 2),
        ("0::/\n", {"cpu.max": "max 100000"}, None),
        # cgroup v2 on a host: a systemd service's CPUQuota=, under its own path.
        ("0::/system.slice/loraq.service\n", {"system.slice/loraq.service/cpu.max": "100000 100000"}, 1),
        # cgroup v1: the cpu controller's directory, named in the process's own path or as the root.
        (
            "4:cpu,cpuacct:/docker/abc\n1:memory:/\n",
            {"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"},
            1,
        ),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        # Nothing to read, or nothing as expected: the CPUs alone.
        ("0::/\n", {}, None),
        ("not a cgroup line\n", {"cpu.max": "100000 100000"}, None),
        ("0::/\n", {"cpu.max": "lots"}, None),
    ],
)
def test_a_cpu_quota_caps_the_cores(
    tmp_path: Path, membership: str, files: dict[str, str], quota_cores: int | None
) -> None:
    proc_cgroup, root = cgroups(tmp_path, membership, files)
    expected = CPUS if quota_cores is None else min(CPUS, quota_cores)
    assert usable_cores(proc_cgroup, root) == expected


def test_no_cgroup_file_leaves_the_cpus(tmp_path: Path) -> None:
    assert usable_cores(tmp_path / "missing", tmp_path) == CPUS


def test_this_machine_has_a_core() -> None:
    assert 1 <= usable_cores() <= CPUS
