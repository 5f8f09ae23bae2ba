"""Process memory settings for CPU runs.

On the CPU, PyTorch takes tensor memory from the C library's ``malloc``. glibc serves every block
larger than 32 MiB with its own ``mmap`` and gives it back to the system when the tensor is freed,
so the next tensor of that size faults in fresh, zeroed pages again. A ReferFormer forward at
360x640 allocates and frees gigabytes of such blocks (feed-forward activations, attention
temporaries, the deformable-attention corner tables), so every forward spends kernel time faulting
in pages it had a moment before (the effect on the whole forward is in ``benchmarks/cpu.py --baseline``).
:func:`reuse_freed_memory` makes glibc keep freed memory in the process for the next allocation.
It changes no result, only where memory comes from; the resident size stays at its peak instead
of shrinking between clips.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# Free memory at the top of the heap kept for reuse instead of being returned (the largest C int):
# a forward's temporaries stay allocated from one clip to the next.
TRIM_THRESHOLD_BYTES = 2**31 - 1


@functools.cache
def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring); once per process.

    Large blocks come from the heap instead of separate mappings (``M_MMAP_MAX = 0``) and up to
    2 GiB of free heap is kept instead of trimmed (``M_TRIM_THRESHOLD``).

    Returns:
        True when the settings were applied; False elsewhere than on Linux with glibc (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    logger.debug("malloc keeps freed memory for reuse: %s", applied)
    return applied
