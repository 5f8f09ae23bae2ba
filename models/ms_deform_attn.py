"""Multi-scale deformable attention (Deformable DETR), as ReferFormer's encoder and decoder use it.

Each query looks at a few points around its reference point on every feature level instead of at
every pixel. Per head m, level l and point p the query predicts an offset and an attention weight;
the head's output is the attention-weighted sum of the value map bilinearly sampled at
``reference + offset``::

    out[n, q, m] = sum_{l, p} A[n, q, m, l, p] * bilinear(value_l[n, :, :, m], loc[n, q, m, l, p])

Letters used in the shapes below (the paper's, added to the glossary of the project):

- N: batch of frames (``B*T``: the frames of all clips are stacked in the batch axis)
- Lq: queries (all pixels of all levels in the encoder, Q object queries in the decoder)
- S: flattened length of the multi-level value, ``sum_l H_l * W_l`` (levels concatenated, row-major)
- M heads, L levels, P points per head and level, C = d_model channels, D = C / M channels per head

Sampling locations are normalised ``(x, y)`` in ``[0, 1]`` over the (padded) map of each level.
Bilinear sampling follows ``F.grid_sample(..., align_corners=False, padding_mode="zeros")``: the
pixel coordinate of ``x`` is ``x * W_l - 0.5`` and corners outside the map contribute zero.

Every caller goes through :func:`ms_deform_attn_core`, which runs one of three implementations of
the core op, chosen by name (``impl``; the module's ``core_impl``; ``--msda_impl`` on the command line):

- ``"reference"``, :func:`ms_deform_attn_core_pytorch` (the original Deformable DETR's name for it):
  one ``grid_sample`` per level, then a weighted sum over levels and points. It materialises the
  sampled values of every point, ``[N*M, D, Lq, L*P]``, before reducing them.
- ``"triton"``, :func:`models.ms_deform_attn_triton.ms_deform_attn_core_triton`: a Triton kernel,
  forward and backward, organised as the original's compiled CUDA op (JIT-compiled at first use,
  nothing to build); CUDA only (or Triton's CPU interpreter, for tests).
- ``"pytorch"``, :func:`ms_deform_attn_core_sparse`, the default on the CPU (except for training
  with few channels per head): the whole op as one
  sparse weighted sum of value rows. The value gets a one-pixel border of zeros around every level
  (one copy) and is viewed as a table ``[N*Spad*M, D]`` (no transpose); for every query and head the
  ``4*L*P`` bilinear corners are row indices into it (a corner off the map reads the zero border,
  grid_sample's zero padding, so no corner needs masking), the bilinear and attention weights are
  folded into one weight per corner, and ``F.embedding_bag(mode="sum", per_sample_weights=...)``
  reduces them. Its backward (``_SparseBilinearAttention``) is written out: the value gradient is
  again a gather (points sorted by corner row) or, when there are fewer corners than value rows, an
  ``index_add_``; location and attention gradients are closed form from the per-corner weight
  gradients. Nothing of size D per sampling point is materialised, forward or backward. Summation
  order differs from the reference, so results agree to float rounding. At ReferFormer's encoder
  shapes on 2 CPU cores it is about 2.7x faster than the reference forward, 1.3x forward and
  backward, and needs under half its memory (``benchmarks/msdeform_attn.py``).

``"auto"`` (the default) picks per device (and on the CPU by the channels per head, for training),
see :func:`select_core_impl`. All three compute in
float32 (float64 when an input is float64) whatever the input dtypes, with autocast disabled, and
return the dtype of ``value``. The original CUDA extension is not needed; nothing is compiled by hand.
"""
from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

# Number of bilinear corners per sampling point.
NUM_CORNERS = 4
# Corner rows gathered at a time by the corner-weight gradient (x D floats: 8 MiB at D = 32 in float32).
GATHER_CHUNK_ROWS = 1 << 16
# Names of the core implementations (``impl`` of ms_deform_attn_core, --msda_impl).
CORE_IMPLS = ("auto", "triton", "pytorch", "reference")
# On the CPU, "auto" runs a backward with at most this many channels per head by "reference" (select_core_impl).
CPU_REFERENCE_MAX_CHANNELS = 8
# Input dtypes the Triton kernel reads (fp16/bf16 are upcast to float32 inside it).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Oldest CUDA compute capabilities Triton compiles for, and that convert bfloat16 natively.
TRITON_MIN_CAPABILITY = (7, 0)
TRITON_BF16_MIN_CAPABILITY = (8, 0)


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32 (half/bfloat16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def ms_deform_attn_core_pytorch(
    value: Tensor,
    value_spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference core op (``impl="reference"``): per-level ``grid_sample``, then the attention-weighted sum.

    Args:
        value: ``[N, S, M, D]`` values of all levels, flattened row-major and concatenated.
        value_spatial_shapes: ``[L, 2]`` long ``(H_l, W_l)`` per level, or the same as a list of pairs.
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised ``(x, y)``.
        attention_weights: ``[N, Lq, M, L, P]``.

    Returns:
        ``[N, Lq, M*D]`` (head-major channels), in the dtype of ``value``.
    """
    out_dtype = value.dtype
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    with torch.autocast(value.device.type, enabled=False):
        value, sampling_locations, attention_weights = (
            t.to(dtype) for t in (value, sampling_locations, attention_weights)
        )
        n, _, m, d = value.shape
        _, lq, _, num_levels, num_points, _ = sampling_locations.shape
        shapes = value_spatial_shapes.tolist() if isinstance(value_spatial_shapes, Tensor) else value_spatial_shapes
        value_per_level = value.split([h * w for h, w in shapes], dim=1)
        grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
        sampled = []
        for level, (h, w) in enumerate(shapes):
            value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)  # [N*M, D, H, W]
            grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N*M, Lq, P, 2]
            sampled.append(
                F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
            )  # [N*M, D, Lq, P]
        sampled_values = torch.stack(sampled, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
        weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
        output = (sampled_values * weights).sum(-1).view(n, m * d, lq)
        output = output.transpose(1, 2).contiguous()  # [N, Lq, M*D]
    return output.to(out_dtype)


def _pad_levels(x: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """Surround every level of ``x [N, S, M, D]`` with a one-pixel border of zeros.

    Returns ``[N, Spad, M, D]`` with ``Spad = sum_l (H_l + 2) * (W_l + 2)``, levels concatenated row-major.
    """
    n, _, m, d = x.shape
    padded = x.new_zeros(n, sum((h + 2) * (w + 2) for h, w in shapes), m, d)
    start = 0
    for level, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
        inner = padded[:, start : start + (h + 2) * (w + 2)].view(n, h + 2, w + 2, m, d)[:, 1 : h + 1, 1 : w + 1]
        inner.copy_(level.view(n, h, w, m, d))
        start += (h + 2) * (w + 2)
    return padded


def _unpad_levels(x: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
    """Inverse of :func:`_pad_levels`: ``[N, Spad, M, D]`` → ``[N, S, M, D]`` without the borders."""
    n, _, m, d = x.shape
    levels = x.split([(h + 2) * (w + 2) for h, w in shapes], dim=1)
    inner = [
        level.view(n, h + 2, w + 2, m, d)[:, 1 : h + 1, 1 : w + 1].reshape(n, h * w, m, d)
        for level, (h, w) in zip(levels, shapes)
    ]
    return torch.cat(inner, dim=1)


class _BilinearCorners:
    """The bilinear corners of every sampling point, as rows of the zero-bordered value table.

    The value map of every level is surrounded by a one-pixel border of zeros (:func:`_pad_levels`):
    ``Spad = sum_l (H_l + 2) * (W_l + 2)`` pixels per sample, viewed as the table ``[N*Spad*M, D]``
    (row ``(n * Spad + pixel) * M + m``). The 2×2 corners of a point whose top-left corner
    ``(x0, y0)`` lies in ``[-1, W-1] × [-1, H-1]`` all exist in it, each a fixed row offset from the
    top-left one (the "anchor"), whatever the point; corners on the border read zeros, which is
    grid_sample's zero padding. Points further out ("outside") get attention 0 and anchor 0.

    Attributes, per point ``[N, Lq, M, L, P]``: ``anchor`` (table row of the top-left corner),
    ``fx``, ``fy`` (position inside the cell, in [0, 1)), ``attention`` (zero when outside), ``inside``.
    Per bag ``(n, q, m)``, ``[N*Lq*M, 4*L*P]`` corner-major (top-left, top-right, bottom-left,
    bottom-right): ``index`` (table row) and ``weight`` (bilinear × attention). ``corner_shift [4, L]``:
    the row offset of each corner from the anchor.
    """

    def __init__(
        self, shapes: list[tuple[int, int]], n: int, m: int, sampling_locations: Tensor, attention_weights: Tensor
    ) -> None:
        _, lq, _, num_levels, num_points, _ = sampling_locations.shape
        device, dtype = sampling_locations.device, sampling_locations.dtype
        padded_sizes = [(h + 2) * (w + 2) for h, w in shapes]
        num_padded_rows = n * sum(padded_sizes) * m
        # int32 indices halve index memory and traffic; embedding_bag accepts both.
        index_dtype = torch.int32 if num_padded_rows < 2**31 else torch.int64

        def per_point(values: list[int], dtype: torch.dtype) -> Tensor:
            """One value per level → ``[L, P]``, so that it broadcasts over contiguous (level, point) pairs."""
            per_level = torch.tensor(values, device=device, dtype=dtype).view(num_levels, 1)
            return per_level.expand(num_levels, num_points).contiguous()

        heights = per_point([h for h, _ in shapes], dtype)
        widths = per_point([w for _, w in shapes], dtype)
        padded_widths = per_point([w + 2 for _, w in shapes], index_dtype)
        padded_starts = per_point([sum(padded_sizes[:level]) for level in range(num_levels)], index_dtype)

        # Pixel coordinates under align_corners=False: x * W - 0.5.
        x = sampling_locations[..., 0] * widths - 0.5  # [N, Lq, M, L, P]
        y = sampling_locations[..., 1] * heights - 0.5  # [N, Lq, M, L, P]
        x0 = x.floor()
        y0 = y.floor()
        self.fx = x - x0
        self.fy = y - y0
        self.inside = (x0 >= -1) & (x0 <= widths - 1) & (y0 >= -1) & (y0 <= heights - 1)
        self.attention = attention_weights * self.inside
        # Top-left corner in padded pixels, in [0, W] × [0, H].
        col = torch.where(self.inside, x0 + 1, 0).to(index_dtype)
        row = torch.where(self.inside, y0 + 1, 0).to(index_dtype)
        sample_and_head = (
            torch.arange(n, device=device, dtype=index_dtype).view(n, 1, 1, 1, 1) * (num_padded_rows // n)
            + torch.arange(m, device=device, dtype=index_dtype).view(1, 1, m, 1, 1)
        )  # [N, 1, M, 1, 1]
        pixel = row.mul_(padded_widths).add_(col).add_(padded_starts)  # in place: row and col are temporaries
        self.anchor = pixel.mul_(m).add_(sample_and_head)  # [N, Lq, M, L, P]

        level_widths = padded_widths[:, 0]  # [L]
        zeros = torch.zeros_like(level_widths)
        self.corner_shift = torch.stack([zeros, zeros + 1, level_widths, level_widths + 1]) * m  # [4, L]
        num_bags = n * lq * m
        points_per_bag = num_levels * num_points
        # The shift of every (corner, level, point) as a [4, L*P] block: one broadcast add over
        # contiguous rows of L*P entries builds the index.
        entry_shift = self.corner_shift[:, :, None].expand(NUM_CORNERS, num_levels, num_points).reshape(
            1, NUM_CORNERS, points_per_bag
        )
        self.index = (self.anchor.view(num_bags, 1, points_per_bag) + entry_shift).view(num_bags, -1)  # [N*Lq*M, 4*L*P]

        fx = self.fx.view(num_bags, points_per_bag)
        fy = self.fy.view(num_bags, points_per_bag)
        attention = self.attention.view(num_bags, points_per_bag)
        top = attention * (1 - fy)
        bottom = attention * fy
        one_minus_fx = 1 - fx
        weight = attention.new_empty(num_bags, NUM_CORNERS, points_per_bag)
        torch.mul(top, one_minus_fx, out=weight[:, 0])
        torch.mul(top, fx, out=weight[:, 1])
        torch.mul(bottom, one_minus_fx, out=weight[:, 2])
        torch.mul(bottom, fx, out=weight[:, 3])
        self.weight = weight.view(num_bags, -1)  # [N*Lq*M, 4*L*P]


def _table_gradient(
    table: Tensor, index: Tensor, weight: Tensor, anchor: Tensor, corner_shift: Tensor, grad_bags: Tensor
) -> Tensor:
    """Gradient of the bordered value table ``[N*Spad*M, D]`` from the bags' output gradients ``[N*Lq*M, D]``
    (see :class:`_SparseBilinearAttention`); its temporaries are freed on return."""
    num_bags, d = grad_bags.shape
    _, _, _, num_levels, num_points = anchor.shape
    points_per_bag = num_levels * num_points
    if index.numel() <= table.shape[0]:
        contributions = weight.view(num_bags, -1, 1) * grad_bags.view(num_bags, 1, d)  # [N*Lq*M, 4*L*P, D]
        return torch.zeros_like(table).index_add_(0, index.view(-1), contributions.view(-1, d))
    sorted_anchor, order = anchor.view(-1).sort()
    bag_of_point = order // points_per_bag
    level_of_point = (order // num_points) % num_levels
    point_weight = weight.view(num_bags, NUM_CORNERS, points_per_bag).transpose(1, 2)
    point_weight = point_weight.reshape(-1, NUM_CORNERS)[order].t().contiguous()  # [4, points] sorted
    del order
    grad_table = torch.zeros_like(table)
    for corner in range(NUM_CORNERS):
        target = sorted_anchor + corner_shift[corner][level_of_point]  # table rows, ascending
        counts = torch.bincount(target, minlength=table.shape[0])
        offsets = counts.cumsum(0) - counts  # bag r: the points whose corner lands on row r
        grad_table += F.embedding_bag(
            bag_of_point, grad_bags, offsets, mode="sum", per_sample_weights=point_weight[corner]
        )
    return grad_table


def _corner_weight_gradient(table: Tensor, index: Tensor, grad_bags: Tensor) -> Tensor:
    """``<grad_bags[bag], table[index[bag, k]]>`` for every corner ``[N*Lq*M, 4*L*P]``: the gradient of the
    corner weights, by chunks of bags (the gathered rows of a chunk, multiplied and summed).

    What ``embedding_bag``'s per-sample-weight backward computes, but multi-threaded (that one runs
    on one thread); the gathered rows of :data:`GATHER_CHUNK_ROWS` corners at a time bound the memory.
    """
    num_bags, corners_per_bag = index.shape
    d = table.shape[1]
    grad_weight = table.new_empty(num_bags, corners_per_bag)
    chunk = max(1, GATHER_CHUNK_ROWS // corners_per_bag)
    for start in range(0, num_bags, chunk):
        stop = min(start + chunk, num_bags)
        rows = table.index_select(0, index[start:stop].reshape(-1)).view(stop - start, corners_per_bag, d)
        torch.sum(rows.mul_(grad_bags[start:stop].unsqueeze(1)), dim=-1, out=grad_weight[start:stop])
    return grad_weight


class _SparseBilinearAttention(torch.autograd.Function):
    """``out[bag] = sum_k weight[bag, k] * value_table[index[bag, k]]`` with a hand-written backward.

    Forward: the value map with a zero border per level (:func:`_pad_levels`, one copy of the value)
    viewed as a table ``[N*Spad*M, D]``, and one ``embedding_bag`` over it. Backward:

    - value, the transposed scatter into the bordered table, then the border dropped: when there are
      fewer corners than table rows (decoder), a plain ``index_add_``. Otherwise it is done as a
      gather too: points are sorted once by anchor; for each corner that order is also sorted by
      target row (a corner lies in its anchor's level, a fixed row shift away), so ``embedding_bag``
      over ``grad_output`` rows, with bag offsets from ``bincount``, sums each row's contributions
      without atomics or ``[corners, D]`` temporaries.
    - corner weights: ``<grad_output[bag], value[row]>`` (:func:`_corner_weight_gradient`; border
      rows are zero, so their corners get zero); then the chain rule through the bilinear weights to locations and attention
      weights, in closed form.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        value: Tensor,
        shapes: list[tuple[int, int]],
        sampling_locations: Tensor,
        attention_weights: Tensor,
    ) -> Tensor:
        n, _, m, d = value.shape
        lq = sampling_locations.shape[1]
        corners = _BilinearCorners(shapes, n, m, sampling_locations, attention_weights)
        table = _pad_levels(value, shapes).view(-1, d)  # [N*Spad*M, D]
        output = F.embedding_bag(corners.index, table, mode="sum", per_sample_weights=corners.weight)
        ctx.save_for_backward(
            table, corners.index, corners.weight, corners.anchor, corners.corner_shift, corners.fx, corners.fy,
            corners.attention, corners.inside,
        )  # fmt: skip
        ctx.shapes = shapes
        ctx.value_shape = value.shape
        return output.view(n, lq, m * d)  # [N, Lq, M*D]

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        table, index, weight, anchor, corner_shift, fx, fy, attention, inside = ctx.saved_tensors
        n, lq, m, num_levels, num_points = anchor.shape
        d = table.shape[-1]
        num_bags = n * lq * m
        points_per_bag = num_levels * num_points
        grad_bags = grad_output.reshape(num_bags, d)  # [N*Lq*M, D]
        grad_value = grad_locations = grad_attention = None

        if ctx.needs_input_grad[0]:
            grad_table = _table_gradient(table, index, weight, anchor, corner_shift, grad_bags)
            grad_value = _unpad_levels(grad_table.view(n, -1, m, d), ctx.shapes).view(ctx.value_shape)
            del grad_table  # before the location and attention gradients allocate theirs

        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            grad_weight = _corner_weight_gradient(table, index, grad_bags)
            g00, g01, g10, g11 = grad_weight.view(num_bags, NUM_CORNERS, points_per_bag).unbind(1)
            fx = fx.view(num_bags, points_per_bag)
            fy = fy.view(num_bags, points_per_bag)
            if ctx.needs_input_grad[3]:
                grad_attention = (1 - fy) * (g00 * (1 - fx) + g01 * fx) + fy * (g10 * (1 - fx) + g11 * fx)
                grad_attention = grad_attention.view_as(inside) * inside
            if ctx.needs_input_grad[2]:
                shapes = ctx.shapes
                attention = attention.view(num_bags, points_per_bag)
                heights = torch.tensor([h for h, _ in shapes], device=fx.device, dtype=fx.dtype)
                widths = torch.tensor([w for _, w in shapes], device=fx.device, dtype=fx.dtype)
                grad_fx = attention * ((1 - fy) * (g01 - g00) + fy * (g11 - g10))
                grad_fy = attention * ((1 - fx) * (g10 - g00) + fx * (g11 - g01))
                grad_locations = torch.stack(
                    [
                        grad_fx.view(n, lq, m, num_levels, num_points) * widths.view(num_levels, 1),
                        grad_fy.view(n, lq, m, num_levels, num_points) * heights.view(num_levels, 1),
                    ],
                    dim=-1,
                )  # [N, Lq, M, L, P, 2]
        return grad_value, None, grad_locations, grad_attention


def ms_deform_attn_core_sparse(
    value: Tensor,
    value_spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Core op as one sparse weighted sum of value rows (``F.embedding_bag``): ``impl="pytorch"``.

    Same result as :func:`ms_deform_attn_core_pytorch` up to float rounding, forward and backward,
    including zero padding outside the maps (where a point sits within rounding of a pixel
    boundary, the two may floor it differently, and the location gradient, which is discontinuous
    there, may differ). Not twice differentiable. Arguments and result as :func:`ms_deform_attn_core`.
    """
    shapes = value_spatial_shapes.tolist() if isinstance(value_spatial_shapes, Tensor) else value_spatial_shapes
    shapes = [(int(h), int(w)) for h, w in shapes]
    out_dtype = value.dtype
    dtype = _compute_dtype(value, sampling_locations, attention_weights)
    with torch.autocast(value.device.type, enabled=False):
        output = _SparseBilinearAttention.apply(
            value.to(dtype), shapes, sampling_locations.to(dtype), attention_weights.to(dtype)
        )
    return output.to(out_dtype)


@functools.cache
def _triton_import_error() -> str | None:
    """None when the Triton core imports, else why not (Triton missing or broken)."""
    try:
        import models.ms_deform_attn_triton  # noqa: F401
    except Exception as error:  # a broken install can fail with more than ImportError: fall back all the same
        return f"{type(error).__name__}: {error}"
    return None


# Why the Triton kernel failed to build or launch in this process, once it has (``auto`` then uses
# the grid_sample core for the rest of the process): e.g. no C compiler for Triton's launcher, or a
# driver too old for its PTX. Empty while it has not.
_triton_failure: list[str] = []


def record_triton_failure(error: BaseException) -> None:
    """Note that the Triton kernel failed to build or launch here (``error``); ``auto`` stops choosing it."""
    if not _triton_failure:
        first_line = (str(error).strip().splitlines() or [""])[0]
        _triton_failure.append(f"it failed to build or launch in this process ({type(error).__name__}: {first_line})")


def falls_back_from(error: BaseException) -> bool:
    """Whether ``auto`` falls back to the grid_sample core after the Triton kernel raised ``error``:
    anything but a bad input (``ValueError``) and the GPU being out of memory (the grid_sample core
    needs more), which are the caller's to see."""
    return isinstance(error, Exception) and not isinstance(error, (ValueError, torch.OutOfMemoryError))


def triton_unavailable_reason(device: torch.device, dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Why the Triton core cannot run on ``device`` with inputs of ``dtypes``; None when it can."""
    error = _triton_import_error()
    if error is not None:
        return f"Triton cannot be imported ({error})"
    if _triton_failure:
        return f"the Triton kernel cannot be used: {_triton_failure[0]}"
    unsupported = [dtype for dtype in dtypes if dtype not in TRITON_DTYPES]
    if unsupported:
        return f"dtype {unsupported[0]} is not supported by the Triton kernel (it reads {list(TRITON_DTYPES)})"
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < TRITON_MIN_CAPABILITY:
            return f"GPU compute capability {capability} is below {TRITON_MIN_CAPABILITY}, the oldest Triton supports"
        if torch.bfloat16 in dtypes and capability < TRITON_BF16_MIN_CAPABILITY:
            return (
                f"bfloat16 inputs need GPU compute capability {TRITON_BF16_MIN_CAPABILITY}, this GPU has {capability}"
            )
        return None
    from models.ms_deform_attn_triton import interpreter_enabled

    if device.type == "cpu" and interpreter_enabled():
        return None
    return (
        f"the tensors are on {device.type}: the Triton kernel runs on CUDA GPUs "
        "(on the CPU only under Triton's interpreter, TRITON_INTERPRET=1, which tests use)"
    )


@functools.cache
def _log_fallback(reason: str) -> None:
    """Log once per process and reason that ``auto`` does not use the Triton core on CUDA."""
    logger.warning("deformable attention: not using the Triton core (%s); using the grid_sample core", reason)


def select_core_impl(
    impl: str, device: torch.device, dtypes: tuple[torch.dtype, ...], *, channels_per_head: int | None = None,
    backward: bool = False,
) -> str:
    """The implementation :func:`ms_deform_attn_core` runs for ``impl`` on ``device`` and inputs of ``dtypes``
    (``channels_per_head``: ``D``; ``backward``: whether a gradient will be taken).

    ``"pytorch"`` and ``"reference"`` always run as asked. ``"triton"`` raises ``RuntimeError``
    saying why when the kernel cannot run here. ``"auto"``:

    - CUDA: ``"triton"`` when it can run (and its kernel has not failed to build or launch in this
      process, :func:`record_triton_failure`); otherwise ``"reference"`` (grid_sample), with one
      logged line. Not ``"pytorch"``: its embedding_bag backward is pathologically slow on CUDA. Measured
      on an H200 at ReferFormer's encoder shapes (5 frames of 360x640, Lq = S = 4820 per frame):
      forward + backward 62.6 ms with the embedding_bag core vs 6.5 ms with grid_sample (forward
      alone 2.68 vs 2.23 ms).
    - any other device: ``"pytorch"``, the fastest on the CPU (the Triton kernel is never chosen
      there, even under the interpreter), except for a backward with at most
      :data:`CPU_REFERENCE_MAX_CHANNELS` channels per head: ``"reference"``. With so few channels
      grid_sample's backward costs little per point while the embedding_bag core's costs the same as
      with more. Encoder forward + backward, 2 CPU threads, reference / pytorch time (below 1:
      reference faster; ``benchmarks/msdeform_attn.py --d_model``, docs/performance.md): D = 8:
      0.44 with 6 one-frame 128x128 samples (the quick start's), 0.48 at 5 frames of 360x640;
      D = 16: 0.83 and 0.90 (within run-to-run drift); D = 32 (ReferFormer): 1.51 and 1.92.
    """
    if impl not in CORE_IMPLS:
        raise ValueError(f"deformable attention impl must be one of {CORE_IMPLS}, got {impl!r}")
    if impl in ("pytorch", "reference"):
        return impl
    if impl == "auto" and device.type != "cuda":
        few_channels = channels_per_head is not None and channels_per_head <= CPU_REFERENCE_MAX_CHANNELS
        return "reference" if backward and few_channels else "pytorch"
    reason = triton_unavailable_reason(device, dtypes)
    if impl == "triton":
        if reason is not None:
            raise RuntimeError(f"deformable attention impl 'triton' cannot run: {reason}")
        return "triton"
    if reason is None:
        return "triton"
    _log_fallback(reason)
    return "reference"


def ms_deform_attn_core(
    value: Tensor,
    value_spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    impl: str = "auto",
) -> Tensor:
    """The core op, by the implementation named ``impl`` (see :func:`select_core_impl`).

    ``"triton"``, ``"pytorch"`` (embedding_bag, :func:`ms_deform_attn_core_sparse`) and
    ``"reference"`` (grid_sample, :func:`ms_deform_attn_core_pytorch`) agree up to float rounding,
    forward and backward; where a point lies within rounding of a pixel boundary they may floor it
    differently, and the location gradient, discontinuous there, may then differ.

    Args:
        value: ``[N, S, M, D]`` values of all levels, flattened row-major and concatenated.
        value_spatial_shapes: ``[L, 2]`` long ``(H_l, W_l)`` per level, or the same as a list of pairs
            (saves a host synchronisation when the caller already has it).
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalised ``(x, y)``.
        attention_weights: ``[N, Lq, M, L, P]``.
        impl: ``"auto"``, ``"triton"``, ``"pytorch"`` or ``"reference"``.

    Returns:
        ``[N, Lq, M*D]`` (head-major channels), in the dtype of ``value``.
    """
    dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (value, sampling_locations, attention_weights))
    chosen = select_core_impl(impl, value.device, dtypes, channels_per_head=value.shape[-1], backward=backward)
    if chosen == "triton":
        from models.ms_deform_attn_triton import ms_deform_attn_core_triton

        if impl == "triton":
            return ms_deform_attn_core_triton(value, value_spatial_shapes, sampling_locations, attention_weights)
        # auto: if the kernel cannot be built or launched here, say why once and use grid_sample from
        # now on (a backward that fails likewise computes its gradients with grid_sample).
        try:
            return ms_deform_attn_core_triton(
                value, value_spatial_shapes, sampling_locations, attention_weights, fallback=ms_deform_attn_core_pytorch
            )
        except Exception as error:
            if not falls_back_from(error):
                raise
            record_triton_failure(error)
            chosen = select_core_impl(impl, value.device, dtypes, channels_per_head=value.shape[-1], backward=backward)
    core = ms_deform_attn_core_sparse if chosen == "pytorch" else ms_deform_attn_core_pytorch
    return core(value, value_spatial_shapes, sampling_locations, attention_weights)


def set_core_impl(model: nn.Module, impl: str) -> None:
    """Make every :class:`MSDeformAttn` in ``model`` use the core implementation ``impl``."""
    if impl not in CORE_IMPLS:
        raise ValueError(f"deformable attention impl must be one of {CORE_IMPLS}, got {impl!r}")
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.core_impl = impl


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the original's parameter names and initialisation.

    Args:
        d_model: channels C of queries, values and output.
        n_levels: feature levels L.
        n_heads: attention heads M; must divide ``d_model``.
        n_points: sampling points P per head and level.

    Attribute ``core_impl`` (``"auto"``, ``"triton"``, ``"pytorch"`` or ``"reference"``; default
    ``"auto"``) names the core implementation, see :func:`ms_deform_attn_core`.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, but got d_model={d_model}, n_heads={n_heads}")
        # Kept for state compatibility with the original CUDA op (its batch chunk size); unused here.
        self.im2col_step = 64
        # Core implementation (see ms_deform_attn_core); set_core_impl sets it on a whole model.
        self.core_impl = "auto"
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start on rays in M evenly spaced directions, point p at distance p+1 (in pixels of
        each level); attention starts uniform; projections are Xavier-uniform."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2]
        directions = directions / directions.abs().max(-1, keepdim=True).values  # on the unit square
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)  # [M, L, P, 2]
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def _check_inputs(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None,
    ) -> list[tuple[int, int]]:
        """Raise ``ValueError`` naming the expected and the given shapes of malformed inputs.

        Returns the level sizes ``[(H_l, W_l)]`` as Python ints (the one host synchronisation).
        """
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(f"query: expected [N, Lq, {self.d_model}], got {list(query.shape)}")
        if input_flatten.dim() != 3 or input_flatten.shape[-1] != self.d_model:
            raise ValueError(f"input_flatten: expected [N, S, {self.d_model}], got {list(input_flatten.shape)}")
        n, lq, _ = query.shape
        if input_flatten.shape[0] != n:
            raise ValueError(f"input_flatten: expected batch {n} (that of query), got {input_flatten.shape[0]}")
        expected_ref = f"[{n}, {lq}, {self.n_levels}, 2 or 4]"
        if (
            reference_points.dim() != 4
            or tuple(reference_points.shape[:3]) != (n, lq, self.n_levels)
            or reference_points.shape[-1] not in (2, 4)
        ):
            raise ValueError(f"reference_points: expected {expected_ref}, got {list(reference_points.shape)}")
        if tuple(input_spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(
                f"input_spatial_shapes: expected [{self.n_levels}, 2] (H, W per level), "
                f"got {list(input_spatial_shapes.shape)}"
            )
        if tuple(input_level_start_index.shape) != (self.n_levels,):
            raise ValueError(
                f"input_level_start_index: expected [{self.n_levels}], got {list(input_level_start_index.shape)}"
            )
        shapes = [(int(h), int(w)) for h, w in input_spatial_shapes.tolist()]
        total = sum(h * w for h, w in shapes)
        if total != input_flatten.shape[1]:
            raise ValueError(
                f"input_flatten: expected length sum(H*W) = {total} from input_spatial_shapes, "
                f"got {input_flatten.shape[1]}"
            )
        if input_padding_mask is not None and tuple(input_padding_mask.shape) != tuple(input_flatten.shape[:2]):
            raise ValueError(
                f"input_padding_mask: expected {list(input_flatten.shape[:2])}, got {list(input_padding_mask.shape)}"
            )
        return shapes

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend from each query to P points per head around its reference on every level.

        Args:
            query: ``[N, Lq, C]``.
            reference_points: ``[N, Lq, L, 2]`` normalised ``(x, y)`` points, or ``[N, Lq, L, 4]``
                normalised ``(cx, cy, w, h)`` boxes; the padded map of each level is ``[0, 1]``.
            input_flatten: ``[N, S, C]`` features of all levels, flattened row-major, level after level.
            input_spatial_shapes: ``[L, 2]`` long, ``(H_l, W_l)``.
            input_level_start_index: ``[L]`` long, ``[0, H_0*W_0, H_0*W_0 + H_1*W_1, ...]``.
            input_padding_mask: ``[N, S]`` bool, True at padding (its values are zeroed), or None.

        Returns:
            ``(output [N, Lq, C]`` in the dtype of ``query``, ``sampling_locations [N, Lq, M, L, P, 2]``
            normalised ``(x, y)``, ``attention_weights [N, Lq, M, L, P]`` summing to 1 over ``(L, P)``).
        """
        shapes = self._check_inputs(
            query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index, input_padding_mask
        )
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, num_levels, num_points = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)  # [N, S, M, D]

        # Under autocast the projections run in low precision; locations are computed in float32.
        sampling_offsets = self.sampling_offsets(query)
        loc_dtype = torch.promote_types(sampling_offsets.dtype, torch.float32)
        sampling_offsets = sampling_offsets.to(loc_dtype).view(n, lq, m, num_levels, num_points, 2)
        attention_weights = self.attention_weights(query).to(loc_dtype).view(n, lq, m, num_levels * num_points)
        attention_weights = attention_weights.softmax(-1).view(n, lq, m, num_levels, num_points)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level. Both terms are laid out as whole contiguous
            # (level, point, xy) blocks before the sum, which then only broadcasts over heads (several
            # times faster on the CPU than broadcasting over points too).
            offset_normalizer = input_spatial_shapes.flip(-1).to(sampling_offsets.dtype)  # [L, 2] as (W, H)
            offset_normalizer = offset_normalizer[:, None, :].expand(num_levels, num_points, 2).contiguous()
            references = reference_points[:, :, None, :, None, :].expand(n, lq, 1, num_levels, num_points, 2)
            sampling_locations = references.contiguous() + sampling_offsets / offset_normalizer
        else:
            # Offsets are in units of the box half-size / P.
            sampling_locations = (
                reference_points[:, :, None, :, None, :2]
                + sampling_offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )

        output = ms_deform_attn_core(value, shapes, sampling_locations, attention_weights, impl=self.core_impl)
        output = self.output_proj(output).to(query.dtype)
        return output, sampling_locations, attention_weights
