"""Multi-scale deformable attention core in Triton: forward and backward, JIT-compiled at first use.

Same op as the pure-PyTorch cores of :mod:`models.ms_deform_attn` (see there for the letters N, Lq,
S, M, L, P, D)::

    out[n, q, m, :] = sum_{l, p} A[n, q, m, l, p] * bilinear(value_l[n, :, :, m, :], loc[n, q, m, l, p])

with ``F.grid_sample(align_corners=False, padding_mode="zeros")`` sampling: the pixel coordinate of
a normalised ``x`` is ``x * W_l - 0.5``, and each of the four bilinear corners that lies off the map
reads zero.

How the work is organised (as the original's compiled CUDA op, and published Triton versions,
do it, in tiles instead of one thread per output channel):

- One program per (sample n, head m, block of ``BLOCK_Q`` queries), holding a ``[BLOCK_Q, D]``
  tile: every query of the block reads the same head's ``D`` contiguous channels of each corner
  pixel (one cache line for D = 32 floats). Levels and points are loops of the kernel, the four
  corners are unrolled (unrolling all L*P*4 corner gathers made compiling take minutes); the
  running sum stays in registers, so nothing per sampling point touches memory.
- Forward: per level, point and corner, gather the corner rows of the tile and add them with weight
  ``attention * bilinear`` (zero for corners off the map: their loads are masked).
- Backward recomputes the same corners from the inputs (nothing but the inputs is saved), then per
  corner: ``<grad_out, value_corner>`` over the channels gives the gradient of that corner's
  weight, which the chain rule turns into the gradients of the attention weight and of the
  location (both owned by this program: written directly, no atomics); the value gradient is the
  transposed gather, ``attention * bilinear * grad_out`` scattered with atomic adds, since many
  queries sample the same pixel.

Arithmetic is float32 whatever the input dtypes: fp16/bf16 inputs are upcast as they are loaded
and results are rounded once when stored (if any input is float64, all are converted to float64
and so is the arithmetic). The output has the dtype of ``value``; each gradient has the dtype of
its input (the value gradient is accumulated in a float32/float64 buffer, then rounded; its
atomic adds make it vary in the last bits from run to run on a GPU, as the original's CUDA op's
and grid_sample's backward do). Inputs may be non-contiguous: the kernel takes strides.

Triton decides when :func:`triton.jit` runs whether a kernel is compiled for the GPU or run by its
interpreter (``TRITON_INTERPRET=1``, used by the tests on the CPU), so the kernel is decorated at
its first call (:func:`_kernel`), not at import: setting the variable any time before that call
works, whatever imported this module first.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.ms_deform_attn import TRITON_DTYPES, falls_back_from, record_triton_failure


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Queries per program (``BLOCK_Q``, a power of two) and warps per program of one kernel launch."""

    block_q: int
    num_warps: int


# Launches with at most this many queries use the "few" configurations: the decoder's (one query per
# object query and frame), where a block of 64 queries would leave most lanes masked. More queries
# (the encoder's, one per pixel of every level) use the "many" ones.
FEW_QUERIES = 16
# GPU generations with launch configurations of their own: compute capability 9.0 and newer (Hopper,
# Blackwell; also Triton's interpreter), which add four float32 values with one atomic instruction,
# and the older ones Triton supports (Volta to Ada), which take four.
GENERATIONS = ("sm90+", "sm70-89")
# Launch configuration by GPU generation, pass and number of queries. Not yet timed on a GPU: `python
# benchmarks/gpu.py --sections tune` times the candidates on its GPU and prints the best as this
# table's entries. None spills registers on sm_75, 80, 86 or 90 (`python tools/triton_registers.py
# --arch N`, and tests): the older generations' backward keeps the block of 64 queries with 8 warps
# instead of 4, since with 16 tile elements per thread and scalar atomics it spills (sm_80: 248
# bytes per thread in float32, sm_75: 328).
LAUNCH_CONFIGS = {
    ("sm90+", "forward", "many"): LaunchConfig(block_q=64, num_warps=4),
    ("sm90+", "backward", "many"): LaunchConfig(block_q=64, num_warps=4),
    ("sm90+", "forward", "few"): LaunchConfig(block_q=16, num_warps=4),
    ("sm90+", "backward", "few"): LaunchConfig(block_q=16, num_warps=4),
    ("sm70-89", "forward", "many"): LaunchConfig(block_q=64, num_warps=4),
    ("sm70-89", "backward", "many"): LaunchConfig(block_q=64, num_warps=8),
    ("sm70-89", "forward", "few"): LaunchConfig(block_q=16, num_warps=4),
    ("sm70-89", "backward", "few"): LaunchConfig(block_q=16, num_warps=4),
}
# What `benchmarks/gpu.py --sections tune` times: 4 to 32 elements per thread of a [BLOCK_Q, 32]
# tile (fewer leave threads without a whole 128-bit load; more spill registers in the backward).
CANDIDATE_CONFIGS = tuple(
    LaunchConfig(block_q, num_warps)
    for block_q in (16, 32, 64, 128)
    for num_warps in (1, 2, 4, 8)
    if 4 <= block_q // num_warps <= 32
)


def generation(capability: tuple[int, int] | None) -> str:
    """The entry of :data:`GENERATIONS` of a GPU's compute capability (None: Triton's interpreter)."""
    return "sm70-89" if capability is not None and capability < (9, 0) else "sm90+"


def launch_config(backward: bool, num_queries: int, capability: tuple[int, int] | None) -> LaunchConfig:
    """The entry of :data:`LAUNCH_CONFIGS` for a launch on a GPU of ``capability`` (None: the interpreter)."""
    pass_name = "backward" if backward else "forward"
    return LAUNCH_CONFIGS[(generation(capability), pass_name, "few" if num_queries <= FEW_QUERIES else "many")]


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``) instead of compiling."""
    return bool(triton.knobs.runtime.interpret)


def _msda_kernel(
    value_ptr,  # [N, S, M, D]
    shapes_ptr,  # [L, 2] int32 (H, W), contiguous
    starts_ptr,  # [L] int32, first row of each level in S
    loc_ptr,  # [N, Lq, M, L, P, 2]
    attn_ptr,  # [N, Lq, M, L, P]
    out_ptr,  # forward: output [N, Lq, M*D] (written); backward: grad_output (read)
    grad_value_ptr,  # backward: contiguous [N, S, M, D] accumulator, zero-filled (forward: unused)
    grad_loc_ptr,  # backward: contiguous [N, Lq, M, L, P, 2] (forward: unused)
    grad_attn_ptr,  # backward: contiguous [N, Lq, M, L, P] (forward: unused)
    num_values,  # S
    num_queries,  # Lq
    num_heads,  # M
    num_channels,  # D
    stride_vn, stride_vs, stride_vm, stride_vd,
    stride_ln, stride_lq, stride_lm, stride_ll, stride_lp, stride_lxy,
    stride_an, stride_aq, stride_am, stride_al, stride_ap,
    stride_on, stride_oq, stride_oc,
    NUM_LEVELS: tl.constexpr,
    NUM_POINTS: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):  # fmt: skip
    # Query blocks vary fastest: neighbouring programs sample neighbouring pixels (encoder queries
    # are pixels), which keeps their value rows in cache.
    pid = tl.program_id(0)
    num_query_blocks = tl.cdiv(num_queries, BLOCK_Q)
    query_block = pid % num_query_blocks
    head = (pid // num_query_blocks) % num_heads
    # 64-bit sample index: N * S * M * D may exceed 2**31 for large batches.
    sample = (pid // (num_query_blocks * num_heads)).to(tl.int64)

    q = query_block * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q]
    d = tl.arange(0, BLOCK_D)  # [BLOCK_D]; D need not be a power of two
    q_mask = q < num_queries
    d_mask = d < num_channels
    tile_mask = q_mask[:, None] & d_mask[None, :]

    value_head = value_ptr + sample * stride_vn + head * stride_vm + d[None, :] * stride_vd  # [1, BLOCK_D]
    loc_rows = loc_ptr + sample * stride_ln + q * stride_lq + head * stride_lm  # [BLOCK_Q]
    attn_rows = attn_ptr + sample * stride_an + q * stride_aq + head * stride_am  # [BLOCK_Q]
    out_tile = out_ptr + sample * stride_on + q[:, None] * stride_oq + (head * num_channels + d[None, :]) * stride_oc

    if BACKWARD:
        grad_out = tl.load(out_tile, mask=tile_mask, other=0.0).to(COMPUTE_DTYPE)  # [BLOCK_Q, BLOCK_D]
        grad_value_head = grad_value_ptr + (sample * num_values * num_heads + head) * num_channels + d[None, :]
        # Row of (n, q, m) in the contiguous [N*Lq*M, L*P] gradient of the attention weights.
        point_rows = ((sample * num_queries + q) * num_heads + head) * (NUM_LEVELS * NUM_POINTS)  # [BLOCK_Q]
    else:
        acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=COMPUTE_DTYPE)

    for level in range(NUM_LEVELS):
        height = tl.load(shapes_ptr + 2 * level)
        width = tl.load(shapes_ptr + 2 * level + 1)
        level_start = tl.load(starts_ptr + level)
        height_f = height.to(COMPUTE_DTYPE)
        width_f = width.to(COMPUTE_DTYPE)
        for point in range(NUM_POINTS):
            loc = loc_rows + level * stride_ll + point * stride_lp
            x = tl.load(loc, mask=q_mask, other=0.0).to(COMPUTE_DTYPE) * width_f - 0.5
            y = tl.load(loc + stride_lxy, mask=q_mask, other=0.0).to(COMPUTE_DTYPE) * height_f - 0.5
            attention = tl.load(attn_rows + level * stride_al + point * stride_ap, mask=q_mask, other=0.0)
            attention = attention.to(COMPUTE_DTYPE)
            # Points more than a pixel off the map have no corner on it; clamping them keeps the
            # float-to-int conversion below defined (their corners stay off the map).
            x = tl.minimum(tl.maximum(x, -2.0), width_f + 1.0)
            y = tl.minimum(tl.maximum(y, -2.0), height_f + 1.0)
            x_floor = tl.floor(x)
            y_floor = tl.floor(y)
            fx = x - x_floor  # position inside the cell, [0, 1)
            fy = y - y_floor
            x0 = x_floor.to(tl.int32)
            y0 = y_floor.to(tl.int32)
            if BACKWARD:
                grad_weight = tl.zeros([BLOCK_Q], dtype=COMPUTE_DTYPE)  # d loss / d attention
                grad_fx = tl.zeros([BLOCK_Q], dtype=COMPUTE_DTYPE)  # d loss / d fx, before the attention factor
                grad_fy = tl.zeros([BLOCK_Q], dtype=COMPUTE_DTYPE)
            for corner in tl.static_range(4):  # top-left, top-right, bottom-left, bottom-right
                # Bilinear factors of this corner along x and y, and their derivatives in fx, fy.
                if corner % 2 == 0:
                    xc = x0
                    wx = 1.0 - fx
                    dwx = -1.0
                else:
                    xc = x0 + 1
                    wx = fx
                    dwx = 1.0
                if corner // 2 == 0:
                    yc = y0
                    wy = 1.0 - fy
                    dwy = -1.0
                else:
                    yc = y0 + 1
                    wy = fy
                    dwy = 1.0
                on_map = q_mask & (xc >= 0) & (xc < width) & (yc >= 0) & (yc < height)
                row = level_start + yc * width + xc  # [BLOCK_Q], row in S (garbage where not on_map)
                corner_mask = on_map[:, None] & d_mask[None, :]
                corner_value = tl.load(value_head + row[:, None] * stride_vs, mask=corner_mask, other=0.0)
                corner_value = corner_value.to(COMPUTE_DTYPE)  # [BLOCK_Q, BLOCK_D], zero off the map
                corner_weight = attention * wx * wy  # [BLOCK_Q]
                if BACKWARD:
                    grad_corner = tl.sum(grad_out * corner_value, axis=1)  # <grad_out, value_corner>
                    grad_weight += wx * wy * grad_corner
                    grad_fx += dwx * wy * grad_corner
                    grad_fy += wx * dwy * grad_corner
                    tl.atomic_add(
                        grad_value_head + row[:, None] * (num_heads * num_channels),
                        corner_weight[:, None] * grad_out,
                        mask=corner_mask,
                        sem="relaxed",
                    )
                else:
                    acc += corner_weight[:, None] * corner_value
            if BACKWARD:
                index = point_rows + level * NUM_POINTS + point  # [BLOCK_Q]
                tl.store(grad_attn_ptr + index, grad_weight.to(grad_attn_ptr.dtype.element_ty), mask=q_mask)
                # x_pixel = x * W - 0.5, so d/dx = W * d/dx_pixel (and d/dfx = d/dx_pixel).
                grad_x = attention * grad_fx * width_f
                grad_y = attention * grad_fy * height_f
                tl.store(grad_loc_ptr + 2 * index, grad_x.to(grad_loc_ptr.dtype.element_ty), mask=q_mask)
                tl.store(grad_loc_ptr + 2 * index + 1, grad_y.to(grad_loc_ptr.dtype.element_ty), mask=q_mask)

    if not BACKWARD:
        tl.store(out_tile, acc.to(out_ptr.dtype.element_ty), mask=tile_mask)


@functools.cache
def _kernel(interpret: bool) -> triton.runtime.KernelInterface:
    """The kernel, decorated at first use. :func:`triton.jit` reads the mode itself and builds a
    compiled or an interpreted kernel accordingly; ``interpret``, the current mode, only keys the
    cache, so that a change of mode between calls gets the other kind of kernel."""
    return triton.jit(_msda_kernel)


def launch_arguments(
    value: Tensor,
    spatial_shapes: Tensor,
    level_starts: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    output_or_grad: Tensor,
    grads: tuple[Tensor, Tensor, Tensor] | None,
    config: LaunchConfig | None = None,
) -> tuple[tuple[int], tuple, dict]:
    """The grid, positional and keyword arguments of the kernel for a forward (``grads`` None) or
    backward launch (see :func:`_launch`), with ``config`` or else :func:`launch_config`'s for the
    GPU of ``value``."""
    n, s, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    compute_dtype = tl.float64 if value.dtype == torch.float64 else tl.float32
    if config is None:
        capability = torch.cuda.get_device_capability(value.device) if value.is_cuda else None
        config = launch_config(grads is not None, lq, capability)
    grid = (triton.cdiv(lq, config.block_q) * m * n,)
    grad_value, grad_loc, grad_attn = grads if grads is not None else (value, sampling_locations, attention_weights)
    args = (
        value, spatial_shapes, level_starts, sampling_locations, attention_weights, output_or_grad,
        grad_value, grad_loc, grad_attn,
        s, lq, m, d,
        *value.stride(), *sampling_locations.stride(), *attention_weights.stride(), *output_or_grad.stride(),
    )  # fmt: skip
    kwargs = dict(
        NUM_LEVELS=num_levels, NUM_POINTS=num_points, COMPUTE_DTYPE=compute_dtype,
        BLOCK_Q=config.block_q, BLOCK_D=triton.next_power_of_2(d), BACKWARD=grads is not None,
        num_warps=config.num_warps,
    )  # fmt: skip
    return grid, args, kwargs


def _launch(*inputs: Tensor | tuple[Tensor, Tensor, Tensor] | None) -> None:
    """Run the launch :func:`launch_arguments` builds from ``inputs`` (its arguments up to ``grads``):
    the forward (``grads`` None: writes ``output_or_grad``) or the backward (reads the output gradient
    ``output_or_grad``, accumulates/writes ``grads = (grad_value, grad_loc, grad_attn)``)."""
    grid, args, kwargs = launch_arguments(*inputs)
    if grid[0] == 0:  # no queries: nothing to write, and Triton rejects an empty grid
        return
    _kernel(interpreter_enabled())[grid](*args, **kwargs)


@functools.lru_cache(maxsize=64)
def _level_tables(shapes: tuple[tuple[int, int], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """``(H, W)`` per level ``[L, 2]`` and the first row of each level ``[L]``, int32 on ``device``.

    Cached: the model calls the op with the same few level sizes again and again, and each new
    tensor would be a copy from the host.
    """
    spatial_shapes = torch.tensor(shapes, dtype=torch.int32, device=device)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    return spatial_shapes, torch.tensor(starts, dtype=torch.int32, device=device)


class _TritonMSDeformAttn(torch.autograd.Function):
    """Autograd wrapper: the forward saves its inputs, the backward recomputes the sampling."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        value: Tensor,
        spatial_shapes: Tensor,
        level_starts: Tensor,
        sampling_locations: Tensor,
        attention_weights: Tensor,
        shapes: tuple[tuple[int, int], ...],
        fallback: Callable | None,
    ) -> Tensor:
        n, _, m, d = value.shape
        lq = sampling_locations.shape[1]
        output = value.new_empty(n, lq, m * d)
        _launch(value, spatial_shapes, level_starts, sampling_locations, attention_weights, output, None)
        ctx.save_for_backward(value, spatial_shapes, level_starts, sampling_locations, attention_weights)
        ctx.shapes, ctx.fallback = shapes, fallback
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        value, spatial_shapes, level_starts, sampling_locations, attention_weights = ctx.saved_tensors
        accumulate_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
        grad_value = torch.zeros(value.shape, dtype=accumulate_dtype, device=value.device)
        grad_loc = torch.empty(sampling_locations.shape, dtype=sampling_locations.dtype, device=value.device)
        grad_attn = torch.empty(attention_weights.shape, dtype=attention_weights.dtype, device=value.device)
        try:
            _launch(
                value, spatial_shapes, level_starts, sampling_locations, attention_weights, grad_output,
                (grad_value, grad_loc, grad_attn),
            )  # fmt: skip
        except Exception as error:
            if ctx.fallback is None or not falls_back_from(error):
                raise
            record_triton_failure(error)
            grad_value, grad_loc, grad_attn = _fallback_gradients(
                ctx.fallback, value, ctx.shapes, sampling_locations, attention_weights, grad_output
            )
        needs = ctx.needs_input_grad
        return (
            grad_value.to(value.dtype) if needs[0] else None,
            None,
            None,
            grad_loc if needs[3] else None,
            grad_attn if needs[4] else None,
            None,
            None,
        )


def _fallback_gradients(
    core: Callable,
    value: Tensor,
    shapes: tuple[tuple[int, int], ...],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The three gradients by differentiating ``core`` (the grid_sample core) at the same inputs."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (value, sampling_locations, attention_weights)]
        output = core(leaves[0], list(shapes), leaves[1], leaves[2])
        return torch.autograd.grad(output, leaves, grad_output.to(output.dtype))


def ms_deform_attn_core_triton(
    value: Tensor,
    value_spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    fallback: Callable | None = None,
) -> Tensor:
    """The core op on the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

    Callers normally go through :func:`models.ms_deform_attn.ms_deform_attn_core`, which checks
    that this implementation can run and falls back otherwise.

    Args:
        value: ``[N, S, M, D]`` values of all levels, flattened row-major and concatenated.
        value_spatial_shapes: ``[L, 2]`` integer ``(H_l, W_l)`` per level, as a list of pairs or a
            tensor (a CUDA tensor costs a host synchronisation to read).
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised ``(x, y)``.
        attention_weights: ``[N, Lq, M, L, P]``.
        fallback: a core with this function's first four arguments (the grid_sample core, under
            ``impl="auto"``) that computes the gradients if the backward kernel fails to build or
            launch (:func:`models.ms_deform_attn.falls_back_from`); None: the error propagates.

    Returns:
        ``[N, Lq, M*D]`` (head-major channels), in the dtype of ``value``; differentiable in
        ``value``, ``sampling_locations`` and ``attention_weights`` (once).
    """
    n, s, m, _ = value.shape
    if tuple(sampling_locations.shape[:3]) != (n, sampling_locations.shape[1], m) or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations: expected [{n}, Lq, {m}, L, P, 2] for value {list(value.shape)}, "
            f"got {list(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != tuple(sampling_locations.shape[:-1]):
        raise ValueError(
            f"attention_weights: expected {list(sampling_locations.shape[:-1])}, got {list(attention_weights.shape)}"
        )
    inputs = {"value": value, "sampling_locations": sampling_locations, "attention_weights": attention_weights}
    for name, tensor in inputs.items():
        if tensor.device != value.device:
            raise ValueError(f"{name}: expected on {value.device} (the device of value), got {tensor.device}")
        if tensor.dtype not in TRITON_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} is not supported (the kernel reads {list(TRITON_DTYPES)})")
    shapes = value_spatial_shapes.tolist() if isinstance(value_spatial_shapes, Tensor) else value_spatial_shapes
    shapes = tuple((int(h), int(w)) for h, w in shapes)
    if len(shapes) != sampling_locations.shape[3]:
        raise ValueError(f"value_spatial_shapes: expected {sampling_locations.shape[3]} levels, got {len(shapes)}")
    # The kernel reads rows by level offsets: a wrong S would read outside value, not raise.
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"value: expected length sum(H*W) = {sum(h * w for h, w in shapes)} from {shapes}, got {s}")
    spatial_shapes, level_starts = _level_tables(shapes, value.device)
    out_dtype = value.dtype
    if torch.float64 in (value.dtype, sampling_locations.dtype, attention_weights.dtype):
        # float64 (gradcheck, tests): all in float64, so that the kernel never converts float64 to
        # half precision itself (Triton's interpreter does that conversion wrong).
        value, sampling_locations, attention_weights = (
            t.to(torch.float64) for t in (value, sampling_locations, attention_weights)
        )
    output = _TritonMSDeformAttn.apply(
        value, spatial_shapes, level_starts, sampling_locations, attention_weights, shapes, fallback
    )
    return output.to(out_dtype)
