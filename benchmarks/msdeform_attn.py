"""Benchmark the MSDeformAttn core op's implementations: triton, pytorch (embedding_bag), reference (grid_sample).

Shapes are by default ReferFormer's at its real input size: 5 frames of 360×640, levels at strides
8/16/32/64, 256 channels, 8 heads, 4 levels, 4 points (``--frames``, ``--size``, ``--d_model`` change
them: ``--frames 6 --size 128 128 --d_model 64`` is the quick start's batch). Two scenarios:

- encoder self-attention: every pixel of the 4 levels is a query, 2-D reference points;
- decoder cross-attention: 5 object queries per frame, 4-D reference boxes.

Sampling locations and attention weights come from an ``MSDeformAttn`` with its original
initialisation plus small random projection weights, so points spread around their references as
in a trained model (uniformly random points would make memory access artificially scattered).

Reported per implementation (``--impls``; by default all that can run on ``--device``: triton needs
CUDA), as the median of ``--repeat`` runs after one warm-up, the implementations taking turns:
- forward: under ``torch.no_grad()`` (inference);
- forward+backward: forward with autograd, then backward of a random output gradient;
- peak memory of forward+backward: the highest total size of tensors allocated during the step and
  alive at the same time (inputs excluded), from the profiler's allocation events on CPU and from
  ``torch.cuda.max_memory_allocated`` on CUDA;
- each as a ratio to the pure-PyTorch (embedding_bag) core: below 1 is faster / smaller.

Run: ``python benchmarks/msdeform_attn.py --threads 2`` (CPU) or ``--device cuda``;
``benchmarks/gpu.py`` runs this on the GPU together with the whole-model measurements.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, select_core_impl  # noqa: E402
from util.memory import reuse_freed_memory  # noqa: E402

STRIDES = (8, 16, 32, 64)
N_HEADS, N_POINTS = 8, 4
NUM_QUERIES = 5
# Std of the random projection weights: offsets vary by about ±0.2 px around the initial rays.
PROJECTION_STD = 0.01

CoreOp = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
IMPLS = ("triton", "pytorch", "reference")
# The implementation the ratios are relative to.
BASELINE = "pytorch"


@dataclass(frozen=True)
class Geometry:
    """The clip and model width the core runs at (default: ReferFormer's at 360×640)."""

    frames: int = 5
    image_size: tuple[int, int] = (360, 640)
    d_model: int = 256

    def level_shapes(self) -> list[tuple[int, int]]:
        """Feature sizes of the backbone levels: ceil(size / stride); (45,80), (23,40), (12,20), (6,10) at 360×640."""
        return [(math.ceil(self.image_size[0] / s), math.ceil(self.image_size[1] / s)) for s in STRIDES]


def make_inputs(
    scenario: str, device: torch.device, seed: int = 0, geometry: Geometry = Geometry()
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Core-op inputs: value ``[N, S, M, D]``, shapes ``[L, 2]``, locations, weights, output gradient."""
    generator = torch.Generator().manual_seed(seed)
    frames, d_model = geometry.frames, geometry.d_model
    shapes = geometry.level_shapes()
    spatial_shapes = torch.tensor(shapes)
    level_start_index = torch.tensor([0, *[h * w for h, w in shapes[:-1]]]).cumsum(0)
    s = sum(h * w for h, w in shapes)
    module = MSDeformAttn(d_model, len(shapes), N_HEADS, N_POINTS)
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0, PROJECTION_STD, generator=generator)
        module.attention_weights.weight.normal_(0, PROJECTION_STD, generator=generator)
    input_flatten = torch.randn(frames, s, d_model, generator=generator)
    if scenario == "encoder":
        centres = [
            torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")[::-1], -1)
            for h, w in shapes
        ]  # per level [H, W, 2] as (x, y)
        reference = torch.cat([c.view(-1, 2) for c in centres])  # [S, 2]
        reference = reference.view(1, s, 1, 2).expand(frames, s, len(shapes), 2)
        query = input_flatten + torch.randn(frames, s, d_model, generator=generator)
    else:
        centre = 0.2 + 0.6 * torch.rand(frames, NUM_QUERIES, 1, 2, generator=generator)
        size = 0.1 + 0.4 * torch.rand(frames, NUM_QUERIES, 1, 2, generator=generator)
        reference = torch.cat([centre, size], -1).expand(frames, NUM_QUERIES, len(shapes), 4)
        query = torch.randn(frames, NUM_QUERIES, d_model, generator=generator)
    with torch.no_grad():
        _, locations, weights = module(query, reference, input_flatten, spatial_shapes, level_start_index)
        value = module.value_proj(input_flatten).view(frames, s, N_HEADS, d_model // N_HEADS)
    grad_output = torch.randn(frames, query.shape[1], d_model, generator=generator)
    return tuple(t.to(device) for t in (value, spatial_shapes, locations, weights, grad_output))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(op: CoreOp, value: Tensor, shapes: Tensor, locations: Tensor, weights: Tensor, grad: Tensor) -> None:
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    op(leaves[0], shapes, leaves[1], leaves[2]).backward(grad)


def median_seconds(steps: dict[str, Callable[[], None]], device: torch.device, repeat: int) -> dict[str, float]:
    """Median wall time of each step; the steps take turns so that load from other processes
    affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeat):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak of simultaneously alive tensor bytes allocated by ``step`` (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    alive = peak = 0
    for _, nbytes in events:
        alive += nbytes
        peak = max(peak, alive)
    return peak


def runnable_impls(device: torch.device, dtype: torch.dtype = torch.float32) -> list[str]:
    """The implementations of :data:`IMPLS` that can run on ``device`` (the reason is printed for the others)."""
    impls = []
    for impl in IMPLS:
        try:
            select_core_impl(impl, device, (dtype, torch.float32, torch.float32))
        except RuntimeError as error:
            print(f"not timed: {error}")
            continue
        impls.append(impl)
    return impls


def measure_core(
    scenario: str, impls: list[str], device: torch.device, repeat: int, value_dtype: torch.dtype = torch.float32,
    geometry: Geometry = Geometry(),
) -> dict[str, dict[str, float]]:
    """Times and memory of each implementation at ``scenario``'s shapes (value and output gradient in
    ``value_dtype``; locations and weights float32, as under autocast).

    Returns ``{impl: {"forward_ms", "forward_backward_ms", "peak_mib" (of forward+backward)}}``.
    """
    value, shapes, locations, weights, grad = make_inputs(scenario, device, geometry=geometry)
    value, grad = value.to(value_dtype), grad.to(value_dtype)
    shape_list = shapes.tolist()  # as the module passes them: no host synchronisation per call
    ops = {impl: partial(ms_deform_attn_core, impl=impl) for impl in impls}

    def forward(op: CoreOp) -> None:
        with torch.no_grad():
            op(value, shape_list, locations, weights)

    forwards = {name: partial(forward, op) for name, op in ops.items()}
    train_steps = {
        name: partial(forward_backward, op, value, shape_list, locations, weights, grad) for name, op in ops.items()
    }
    forward_s = median_seconds(forwards, device, repeat)
    train_s = median_seconds(train_steps, device, repeat)
    return {
        name: {
            "forward_ms": 1e3 * forward_s[name],
            "forward_backward_ms": 1e3 * train_s[name],
            "peak_mib": peak_bytes(train_steps[name], device) / 2**20,
        }
        for name in ops
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, after one warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                        help="implementations to time (default: every one that can run on --device)")
    parser.add_argument("--frames", type=int, default=Geometry.frames, help="frames of the clip (the batch N)")
    parser.add_argument("--size", type=int, nargs=2, default=Geometry.image_size, metavar=("HEIGHT", "WIDTH"),
                        help="image size; the levels are at strides 8, 16, 32, 64")
    parser.add_argument("--d_model", type=int, default=Geometry.d_model,
                        help=f"channels ({N_HEADS} heads: d_model / {N_HEADS} channels per head)")
    args = parser.parse_args()
    geometry = Geometry(args.frames, tuple(args.size), args.d_model)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the entry points do on the CPU
    device = torch.device(args.device)
    impls = args.impls or runnable_impls(device)

    print(
        f"MSDeformAttn core, {geometry.frames} frames of {geometry.image_size[0]}x{geometry.image_size[1]}, "
        f"levels {geometry.level_shapes()}, {geometry.d_model} channels, {N_HEADS} heads, {N_POINTS} points; device {device}, "
        f"{torch.get_num_threads()} threads, median of {args.repeat}"
    )
    ratios = [impl for impl in impls if impl != BASELINE] if BASELINE in impls else []
    header = f"{'scenario':<10} {'measure':<24}" + "".join(f" {impl:>10}" for impl in impls)
    print(header + "".join(f" {impl + '/' + BASELINE:>18}" for impl in ratios))
    measures = {"forward_ms": "forward (ms)", "forward_backward_ms": "forward+backward (ms)",
                "peak_mib": "peak fwd+bwd (MiB)"}
    for scenario in ("encoder", "decoder"):
        result = measure_core(scenario, impls, device, args.repeat, geometry=geometry)
        for key, measure in measures.items():
            line = f"{scenario:<10} {measure:<24}" + "".join(f" {result[impl][key]:>10.2f}" for impl in impls)
            print(line + "".join(f" {result[impl][key] / result[BASELINE][key]:>17.2f}x" for impl in ratios))
        s = sum(h * w for h, w in geometry.level_shapes())
        print(f"{'':<10} (Lq = {NUM_QUERIES if scenario == 'decoder' else s} queries per frame, S = {s})")


if __name__ == "__main__":
    main()
