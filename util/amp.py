"""Mixed precision (``--amp``) for training and inference, on CUDA GPUs and on CPUs.

One policy everywhere (``main.py`` and ``engine.py`` for training and evaluation, the video predictor
behind ``demo.py`` and the inference scripts, the benchmarks):

- CUDA: bfloat16 autocast where the GPU computes it natively (compute capability 8.0 and newer),
  otherwise float16 autocast with a gradient scaler for training.
- CPU: bfloat16 autocast where the CPU computes it natively (x86 with AVX-512 BF16 or AMX, Arm with
  the BF16 extension); elsewhere ``--amp`` is ignored with a warning saying why (emulated bfloat16 is
  slower than float32).

Under autocast the convolutions, linear layers, matrix products and attention run in the low
precision: the backbone, the input projections, the text encoder, the early fusion, the projections
and feed-forward layers of the deformable transformer, the cross-modal FPN and the controller. The
deformable-attention core reads the low-precision value map but samples and sums in float32
(``models/ms_deform_attn.py`` turns autocast off inside it); sampling locations and attention weights
are computed in float32. The training losses and the Hungarian matcher run in float32 (``engine.py``
converts the outputs before the criterion).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The feature flags of the first processor in ``cpuinfo`` (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_bfloat16_unsupported_reason() -> str | None:
    """Why this CPU has no native bfloat16 arithmetic, or None when it has (checked once per process).

    PyTorch's own detection (its CPU feature probe) is asked first, then the flags of :data:`CPUINFO`.
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None and probe() for probe in probes):
        return None
    if _cpuinfo_flags(CPUINFO) & BF16_CPU_FLAGS:
        return None
    return (f"this CPU has no native bfloat16 arithmetic (none of the flags {sorted(BF16_CPU_FLAGS)} in "
            f"{CPUINFO}; PyTorch's CPU probe finds neither AVX-512 BF16 nor AMX)")


def amp_settings(enabled: bool, device: torch.device | str) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """The autocast dtype and gradient scaler of ``--amp`` on ``device`` (see the module docstring).

    Returns:
        ``(None, None)`` when ``--amp`` is off or cannot be used (with a warning saying why);
        ``(torch.bfloat16, None)``; or ``(torch.float16, GradScaler)`` on GPUs without bfloat16.
    """
    if not enabled:
        return None, None
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, None
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu":
        reason = cpu_bfloat16_unsupported_reason()
        if reason is None:
            return torch.bfloat16, None
        logger.warning("--amp is ignored: %s; running in float32", reason)
        return None, None
    logger.warning("--amp is ignored on %s: mixed precision is used on CUDA GPUs and CPUs only", device)
    return None, None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``dtype``; does nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
