"""How many CPU cores this process may keep busy: its affinity, capped by its cgroup's CPU limit.

A container limited to one CPU on a machine of 16 sees 16 cores in its affinity; threads that
spin for each other (the step's two lanes), decoding workers and BLAS threads sized by it would
all share one core's time.
"""

from __future__ import annotations

import os

__all__ = ["affinity_cores", "usable_cores", "quota_cpus"]


def affinity_cores() -> int:
    """CPU cores this process may run on (its affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def usable_cores() -> int:
    """CPU cores this process may keep busy: those it may run on, and no more whole cores than its
    cgroup's CPU time allows (a container's ``--cpus``, rounded down: 1.9 allows one; at least one)."""
    cores = affinity_cores()
    quota = quota_cpus()
    return cores if quota is None else max(1, min(cores, int(quota)))


def quota_cpus(cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time per period that this process's cgroup and those above it allow (cgroup
    v2's ``cpu.max``, v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), the least of them;
    None where none is limited or nothing can be read."""
    try:
        with open(cgroups) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: one hierarchy (on a hybrid system it has no cpu.max here)
            places = [(root, "cpu.max", None)]
        elif "cpu" in controllers.split(","):
            places = [(os.path.join(root, mount), "cpu.cfs_quota_us", "cpu.cfs_period_us")
                      for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        if ".." in parts:  # (a cgroup outside this namespace's view: its files are not here)
            continue
        for base, quota_name, period_name in places:
            for depth in range(len(parts), -1, -1):  # (this cgroup, then each above it)
                limit = _cgroup_limit(os.path.join(base, *parts[:depth]), quota_name, period_name)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _cgroup_limit(where: str, quota_name: str, period_name: str | None) -> float | None:
    """One cgroup's CPU limit in CPUs, or None (no limit, no such file, or a value not understood)."""
    try:
        with open(os.path.join(where, quota_name)) as fh:
            words = fh.read().split()
        if period_name is not None:
            with open(os.path.join(where, period_name)) as fh:
                words += fh.read().split()
        quota, period = int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None  # ("max" in cpu.max: not limited)
    return quota / period if quota > 0 and period > 0 else None
