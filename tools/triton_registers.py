"""Registers, spills and occupancy of the Triton deformable-attention kernel as compiled for a GPU, without a GPU.

    python tools/triton_registers.py                # the launch configurations in use on sm_90 (H100, H200)
    python tools/triton_registers.py --arch 80      # ... on sm_80 (A100)
    python tools/triton_registers.py --candidates   # every configuration benchmarks/gpu.py --sections tune times

Compiles the kernel of ``models/ms_deform_attn_triton.py`` exactly as a launch at ReferFormer's
shapes would (its own launch arguments, Triton's own argument specialisation: strides of 1 folded
into the code, multiples of 16 marked as such; a stand-in driver answers Triton's questions about
the device), for each pass, value dtype (float32, and what ``--amp`` gives the kernel on that GPU)
and configuration, and reads the cubin's resources with the ``cuobjdump`` that ships with Triton:
registers per thread, the stack frame per thread (the kernel has no local arrays and calls nothing,
so a stack holds registers ptxas spilled: memory traffic the kernel was not written to make) and
shared memory per program. Occupancy is the number of warps an SM can hold given those, from the
architecture's limits (:data:`SM_LIMITS`). About a second per configuration.

Shapes: 5 frames of 360x640 (levels 45x80, 23x40, 12x20, 6x10), 8 heads of 32 channels, 4 points;
the encoder's 4820 queries per frame ("many") and the decoder's 5 ("few").
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEVELS = ((45, 80), (23, 40), (12, 20), (6, 10))
FRAMES, HEADS, CHANNELS, POINTS = 5, 8, 32, 4
QUERIES = {"many": sum(h * w for h, w in LEVELS), "few": 5}


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of a compute capability (CUDA C Programming Guide, compute capabilities table)."""

    registers: int
    warps: int
    blocks: int
    shared_bytes: int


SM_LIMITS = {
    75: SmLimits(registers=65536, warps=32, blocks=16, shared_bytes=64 * 1024),  # T4, RTX 20
    80: SmLimits(registers=65536, warps=64, blocks=32, shared_bytes=164 * 1024),  # A100
    86: SmLimits(registers=65536, warps=48, blocks=16, shared_bytes=100 * 1024),  # RTX 30, A10, A40
    89: SmLimits(registers=65536, warps=48, blocks=24, shared_bytes=100 * 1024),  # RTX 40, L4, L40
    90: SmLimits(registers=65536, warps=64, blocks=32, shared_bytes=228 * 1024),  # H100, H200
}
REGISTER_ALLOCATION_UNIT = 256  # registers are given to a warp in blocks of 256 (8 per thread)


@dataclass(frozen=True)
class Resources:
    registers: int  # per thread
    stack_bytes: int  # per thread: spilled registers
    shared_bytes: int  # per program

    def warps_per_sm(self, num_warps: int, arch: int) -> int:
        limits = SM_LIMITS[arch]
        per_warp = -(-self.registers * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
        programs = min(limits.registers // (per_warp * num_warps), limits.warps // num_warps, limits.blocks)
        if self.shared_bytes:
            programs = min(programs, limits.shared_bytes // self.shared_bytes)
        return programs * num_warps


class _StandInDriver:
    """What Triton asks its driver while compiling (not launching) a kernel: the target, a device and a stream."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextlib.contextmanager
def _compiling_for(arch: int) -> Iterator[None]:
    """Triton compiles for ``arch`` whatever GPU (none) this machine has, and not in its interpreter."""
    from triton.runtime import driver

    previous_driver, previous_interpret = driver._active, os.environ.pop("TRITON_INTERPRET", None)
    driver.set_active(_StandInDriver(arch))
    try:
        yield
    finally:
        driver._active = previous_driver
        if previous_interpret is not None:
            os.environ["TRITON_INTERPRET"] = previous_interpret


def compile_launch(config, backward: bool, value_dtype: torch.dtype, queries: str, arch: int = 90):
    """The kernel compiled (``triton.compiler.CompiledKernel``) as a launch with ``config`` would compile it."""
    import triton

    from models.ms_deform_attn_triton import _msda_kernel, launch_arguments

    s, lq = QUERIES["many"], QUERIES[queries]
    value = torch.zeros(FRAMES, s, HEADS, CHANNELS, dtype=value_dtype)
    locations = torch.zeros(FRAMES, lq, HEADS, len(LEVELS), POINTS, 2)
    weights = torch.zeros(FRAMES, lq, HEADS, len(LEVELS), POINTS)
    output_or_grad = torch.zeros(FRAMES, lq, HEADS * CHANNELS, dtype=value_dtype)
    shapes, starts = torch.zeros(len(LEVELS), 2, dtype=torch.int32), torch.zeros(len(LEVELS), dtype=torch.int32)
    grads = (torch.zeros(value.shape), torch.zeros(locations.shape), torch.zeros(weights.shape)) if backward else None
    grid, args, kwargs = launch_arguments(value, shapes, starts, locations, weights, output_or_grad, grads, config)
    with _compiling_for(arch):
        # A kernel object of its own: the module's is built for this machine's mode at its first call.
        return triton.jit(_msda_kernel).warmup(*args, grid=grid, **kwargs)


def resources(compiled) -> Resources:
    """Registers, stack and shared memory of a compiled kernel, as ``cuobjdump -res-usage`` reads its cubin."""
    import triton

    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        report = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED):(\d+)", report))
    if set(fields) != {"REG", "STACK", "SHARED"}:
        raise RuntimeError(f"cuobjdump -res-usage: no REG/STACK/SHARED fields in:\n{report}")
    return Resources(int(fields["REG"]), int(fields["STACK"]), int(fields["SHARED"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", action="store_true",
                        help="every configuration benchmarks/gpu.py --sections tune times, not only those in use")
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SM_LIMITS),
                        help="compute capability as one number (90: H100/H200, 80: A100, 75: T4)")
    args = parser.parse_args()

    from benchmarks.text_table import print_table
    from models.ms_deform_attn_triton import CANDIDATE_CONFIGS, LAUNCH_CONFIGS, generation

    gpu = generation(divmod(args.arch, 10))
    # float32, and what --amp gives the kernel there: bfloat16 from compute capability 8.0, else float16.
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if args.arch >= 80 else {"fp16": torch.float16})}
    rows = []
    for (config_gpu, pass_name, queries), in_use in LAUNCH_CONFIGS.items():
        if config_gpu != gpu:
            continue
        for dtype_name, dtype in dtypes.items():
            for config in CANDIDATE_CONFIGS if args.candidates else (in_use,):
                usage = resources(compile_launch(config, pass_name == "backward", dtype, queries, args.arch))
                rows.append((
                    pass_name, f"{queries} ({QUERIES[queries]})", dtype_name, str(config.block_q),
                    str(config.num_warps), "yes" if config == in_use else "", str(usage.registers),
                    str(usage.stack_bytes), str(usage.shared_bytes), str(usage.warps_per_sm(config.num_warps, args.arch)),
                ))  # fmt: skip
    print(f"Triton {__import__('triton').__version__}, sm_{args.arch} (launch configurations of {gpu})")
    print_table(("pass", "queries", "value", "BLOCK_Q", "warps", "in use", "registers", "stack bytes (spills)",
                 "shared bytes", "warps per SM"), rows)  # fmt: skip


if __name__ == "__main__":
    main()
