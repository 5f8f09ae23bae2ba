"""The --amp policy (util/amp.py): which dtype on which device, and the message where a CPU has no bfloat16."""
from __future__ import annotations

import logging

import pytest
import torch

from util import amp


@pytest.fixture
def no_cpu_bfloat16(monkeypatch, tmp_path):
    """A CPU whose probes and /proc/cpuinfo flags have no bfloat16."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(amp, "CPUINFO", cpuinfo)
    amp.cpu_bfloat16_unsupported_reason.cache_clear()
    yield cpuinfo
    amp.cpu_bfloat16_unsupported_reason.cache_clear()


def test_cpuinfo_flags_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert amp._cpuinfo_flags(x86) == {"fpu", "avx512f", "avx512_bf16"}
    assert "bf16" in amp._cpuinfo_flags(arm)
    assert amp._cpuinfo_flags(tmp_path / "missing") == set()


def test_cpu_without_bfloat16_keeps_float32_and_says_why(no_cpu_bfloat16, caplog):
    reason = amp.cpu_bfloat16_unsupported_reason()
    assert "no native bfloat16" in reason and str(no_cpu_bfloat16) in reason
    with caplog.at_level(logging.WARNING, logger="util.amp"):
        assert amp.amp_settings(True, "cpu") == (None, None)
    assert "--amp is ignored" in caplog.text and "no native bfloat16" in caplog.text


def test_cpu_bfloat16_from_cpuinfo_flags(no_cpu_bfloat16):
    no_cpu_bfloat16.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert amp.cpu_bfloat16_unsupported_reason() is None
    assert amp.amp_settings(True, torch.device("cpu")) == (torch.bfloat16, None)


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_amp_off_and_cuda_policy(monkeypatch):
    assert amp.amp_settings(False, "cpu") == (None, None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp.amp_settings(True, "cuda") == (torch.bfloat16, None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    dtype, scaler = amp.amp_settings(True, "cuda")
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)


def test_autocast_context():
    x = torch.randn(4, 8)
    with amp.autocast("cpu", torch.bfloat16):
        assert (x @ x.t()).dtype == torch.bfloat16
    with amp.autocast("cpu", None):
        assert (x @ x.t()).dtype == torch.float32
