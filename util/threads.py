"""How many threads a CPU run computes with.

PyTorch starts one compute thread per core it sees. A process limited to fewer CPUs by a cgroup
quota (``docker run --cpus 2``, a Kubernetes CPU limit, a batch scheduler's slot) still sees every
core of the host, so it starts more threads than it may run at once: they take turns on the CPUs it
has and wait for each other at the end of every parallel operation, which costs most on the many
small operations of a small model (``benchmarks/cpu.py --threads`` shows what more threads than
CPUs cost on this machine). :func:`cpu_budget` is the number of CPUs the process may use — its
affinity mask, capped by the quota — and :func:`limit_threads_to_cpu_budget` lowers PyTorch's
thread count to it, unless the user chose one (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

THREAD_COUNT_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables by which a user sets the thread count; when one is set it is left alone."""


def _quota_cpus(quota: str, period: str) -> float | None:
    """CPUs of a CFS quota (``quota`` µs of CPU time per ``period`` µs); None when unlimited or unreadable."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_limit(cgroup_root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup and its ancestors (the smallest), in CPUs; None without one.

    Reads cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>") along the process's path
    from ``proc_cgroup``, and cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none).
    """
    root = Path(cgroup_root)
    limits = []
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, path = line.partition(":")[2].partition(":")
        relative = Path(path.lstrip("/"))
        if hierarchy == "" and line.startswith("0::"):  # v2
            directories = [root / relative, *(root / parent for parent in relative.parents)]
            for directory in directories:
                try:
                    fields = (directory / "cpu.max").read_text().split()
                except OSError:
                    continue
                if len(fields) == 2:
                    limits.append(_quota_cpus(*fields))
        elif "cpu" in hierarchy.split(","):  # v1
            for directory in {root / hierarchy / relative, root / hierarchy, root / "cpu"}:
                try:
                    quota = (directory / "cpu.cfs_quota_us").read_text().strip()
                    period = (directory / "cpu.cfs_period_us").read_text().strip()
                except OSError:
                    continue
                limits.append(_quota_cpus(quota, period))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota rounded up (at least 1)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        available = min(available, math.ceil(limit))
    return max(1, available)


def limit_threads_to_cpu_budget(processes: int = 1) -> int:
    """Lower PyTorch's intra-op thread count to this process's share of :func:`cpu_budget` among ``processes``.

    Left alone when the user set a thread count (:data:`THREAD_COUNT_VARIABLES`) or when PyTorch
    already uses no more. Returns the thread count in use.
    """
    budget = cpu_budget()
    share = max(1, budget // processes)
    chosen_by_user = [name for name in THREAD_COUNT_VARIABLES if os.environ.get(name)]
    if not chosen_by_user and torch.get_num_threads() > share:
        logger.info("using %d compute threads: %d CPU(s) available to this process%s (PyTorch would start %d)",
                    share, budget, f", shared by {processes} processes" if processes > 1 else "",
                    torch.get_num_threads())
        torch.set_num_threads(share)
    return torch.get_num_threads()
