"""The CPU budget: affinity capped by the cgroup quota (v1 and v2), and the thread count lowered to it."""
import logging
import os

import pytest
import torch

from util import threads


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    root = tmp_path / "cgroup"
    write(tmp_path / "self", "0::/jobs/job1\n")
    write(root / "jobs" / "job1" / "cpu.max", "max 100000\n")
    write(root / "jobs" / "cpu.max", "250000 100000\n")
    write(root / "cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_limit(root, tmp_path / "self") == 2.5
    write(root / "jobs" / "job1" / "cpu.max", "50000 100000\n")
    assert threads.cgroup_cpu_limit(root, tmp_path / "self") == 0.5


def test_cgroup_v1_quota_and_no_quota(tmp_path):
    root = tmp_path / "cgroup"
    write(tmp_path / "self", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_limit(root, tmp_path / "self") is None
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    assert threads.cgroup_cpu_limit(root, tmp_path / "self") == 3.0
    assert threads.cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent_too") is None


@pytest.mark.parametrize("quota, expected", [(None, 6), (2.5, 3), (0.3, 1), (16.0, 6)])
def test_budget_is_the_affinity_capped_by_the_rounded_up_quota(monkeypatch, quota, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: quota)
    assert threads.cpu_budget() == expected


@pytest.fixture
def no_user_thread_count(monkeypatch):
    for name in threads.THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_more_threads_than_cpus_are_lowered_and_logged(monkeypatch, no_user_thread_count, caplog):
    monkeypatch.setattr(threads, "cpu_budget", lambda: 2)
    torch.set_num_threads(4)
    with caplog.at_level(logging.INFO, logger="util.threads"):
        assert threads.limit_threads_to_cpu_budget() == 2
    assert torch.get_num_threads() == 2
    assert "using 2 compute threads: 2 CPU(s) available to this process (PyTorch would start 4)" in caplog.text
    torch.set_num_threads(4)
    assert threads.limit_threads_to_cpu_budget(processes=2) == 1  # each of 2 processes gets its share


def test_fewer_threads_and_a_user_choice_are_kept(monkeypatch, no_user_thread_count):
    monkeypatch.setattr(threads, "cpu_budget", lambda: 2)
    torch.set_num_threads(1)
    assert threads.limit_threads_to_cpu_budget() == 1
    torch.set_num_threads(4)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.limit_threads_to_cpu_budget() == 4
