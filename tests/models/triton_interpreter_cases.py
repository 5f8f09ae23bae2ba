"""The Triton deformable-attention core, run by Triton's interpreter on the CPU, against the
grid_sample reference core (forward and the three gradients).

Not collected by the test session itself: Triton decides when it is imported whether its kernels,
including its own library functions, are compiled or interpreted, and other tests import it
first. ``test_ms_deform_attn_triton.py`` runs this file in a child pytest with
``TRITON_INTERPRET=1``; it can also be run on its own::

    python -m pytest -q tests/models/triton_interpreter_cases.py

Interpreted kernels are slow (about 20 ms per program, level and point, forward and backward
together): the shapes are small and the programs (samples x heads x blocks of queries, see the
launch configurations) few.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton

import pytest  # noqa: E402
import torch  # noqa: E402

from models.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_core_pytorch  # noqa: E402
from models.ms_deform_attn_triton import (  # noqa: E402
    CANDIDATE_CONFIGS,
    LAUNCH_CONFIGS,
    LaunchConfig,
    ms_deform_attn_core_triton,
)
from tests.golden import assert_close_to_scale  # noqa: E402
from tests.models.test_ms_deform_attn import random_core_inputs, run_core, small_inputs  # noqa: E402

# Tolerances relative to each tensor's max magnitude, against the reference core on the same input
# values (upcast to float32 for half-precision inputs), from the worst max|Δ| / max|ref| observed
# over the cases below (output and the three gradients):
# - float64: 2.6e-15 (summation order only);
FLOAT64_REL = 1e-12
# - float32: 4.2e-7, the same spread as the pure-PyTorch core's (its test allows 1e-5);
FLOAT32_REL = 1e-5
# - float16 inputs (results rounded to float16 once, unit roundoff 2^-11 = 4.9e-4): 3.4e-4;
FLOAT16_REL = 1e-3
# - bfloat16: 6.1e-3. Triton's interpreter converts float32 to bfloat16 by truncation, up to one
#   bfloat16 ulp (2^-7 = 7.8e-3 relative); a GPU rounds to nearest, half that.
BFLOAT16_REL = 1e-2
GRAD_NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")


def triton_core(value, spatial_shapes, locations, weights):
    return ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="triton")


def assert_matches_reference(shapes, n, lq, m, d, p, dtype, rel, seed=0) -> None:
    value, spatial_shapes, locations, weights = random_core_inputs(shapes, n, lq, m, d, p, seed=seed, dtype=dtype)
    grad_output = torch.randn(n, lq, m * d, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    expected = run_core(ms_deform_attn_core_pytorch, value, spatial_shapes, locations, weights, grad_output)
    actual = run_core(triton_core, value, spatial_shapes, locations, weights, grad_output)
    for name, a, e in zip(GRAD_NAMES, actual, expected):
        assert a.dtype == dtype, name
        assert_close_to_scale(a, e, rel, name)


@pytest.mark.parametrize(
    ("shapes", "n", "lq", "m", "d", "p"),
    [
        ([(6, 8), (3, 4), (2, 2), (1, 1)], 1, 13, 1, 4, 4),  # the model's 4 levels and 4 points, tiny
        ([(7, 3)], 1, 9, 1, 5, 1),  # one level, head and point; 5 channels (not a power of two)
        ([(5, 11), (1, 7), (9, 2)], 2, 6, 1, 3, 3),  # non-square, 1-pixel-high level, N > 1, 3 channels
        ([(4, 6), (2, 3)], 1, 70, 1, 32, 1),  # 32 channels as in the model; two blocks of queries
    ],
)
def test_triton_core_matches_reference_float64(shapes, n, lq, m, d, p) -> None:
    assert_matches_reference(shapes, n, lq, m, d, p, torch.float64, FLOAT64_REL)


@pytest.mark.parametrize(
    ("shapes", "n", "lq", "m", "d", "p"),
    [
        ([(6, 8), (3, 4)], 1, 11, 2, 8, 2),  # 2 heads
        ([(3, 5), (2, 2), (1, 3)], 1, 7, 3, 6, 2),  # 3 heads, 6 channels
    ],
)
def test_triton_core_matches_reference_float32(shapes, n, lq, m, d, p) -> None:
    assert_matches_reference(shapes, n, lq, m, d, p, torch.float32, FLOAT32_REL, seed=lq)


@pytest.mark.parametrize("block_q", sorted({config.block_q for config in CANDIDATE_CONFIGS}))
def test_triton_core_any_candidate_block_of_queries(block_q: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block size benchmarks/gpu.py may choose, in both passes, gives the reference's results
    (70 queries: several blocks and a partial last one for each)."""
    for key, config in list(LAUNCH_CONFIGS.items()):
        monkeypatch.setitem(LAUNCH_CONFIGS, key, LaunchConfig(block_q, config.num_warps))
    assert_matches_reference([(4, 6), (2, 3)], 1, 70, 2, 8, 1, torch.float64, FLOAT64_REL, seed=block_q)


def test_triton_backward_that_fails_to_build_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward ran on the kernel, the backward's kernel cannot be built: with a fallback core
    (as auto passes) the gradients come from it, and auto stops choosing Triton; without, the
    error propagates."""
    from models import ms_deform_attn, ms_deform_attn_triton

    monkeypatch.setattr(ms_deform_attn, "_triton_failure", [])
    launch = ms_deform_attn_triton._launch

    def forward_only(*args):
        if args[-1] is not None:  # the gradient buffers: a backward launch
            raise RuntimeError("PTX .version 9.0 does not support .target sm_90a")
        launch(*args)

    monkeypatch.setattr(ms_deform_attn_triton, "_launch", forward_only)
    value, spatial_shapes, locations, weights = random_core_inputs([(4, 5), (2, 3)], 1, 9, 2, 3, 2, seed=4,
                                                                   dtype=torch.float64)
    grad_output = torch.randn(1, 9, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="PTX"):
        run_core(triton_core, value, spatial_shapes, locations, weights, grad_output)

    def with_fallback(*args):
        return ms_deform_attn_core_triton(*args, fallback=ms_deform_attn_core_pytorch)

    expected = run_core(ms_deform_attn_core_pytorch, value, spatial_shapes, locations, weights, grad_output)
    actual = run_core(with_fallback, value, spatial_shapes, locations, weights, grad_output)
    for name, a, e in zip(GRAD_NAMES, actual, expected):
        assert_close_to_scale(a, e, FLOAT64_REL, name)
    assert "failed to build or launch in this process (RuntimeError: PTX" in ms_deform_attn._triton_failure[0]


def test_triton_core_borders_and_outside() -> None:
    """Points on the borders, just inside and just outside them, and far off the map, in x and y.

    The map is 4x8, so the locations below and their pixel coordinates (x * W - 0.5) are exact in
    binary or 1e-9 pixel away from an integer: both cores floor them alike. Pixel coordinates: -1
    (a corner row/column just off the map, the other on it with weight 0), -0.5 (the border),
    W - 0.5, W - 1e-9 (just inside the far side), W (just off it: all corners off the map), below
    -1 and beyond W (off the map).
    """
    h, w = 4, 8
    pixel_x = [-1.0, -0.5, 0.0, 3.25, w - 0.5, w - 1e-9, w, -1.0 - 1e-9, w + 3.0, -7.0]
    pixel_y = [0.5, -1.0, h - 0.5, h - 1e-9, h, 1.0, -0.5, 2.0, -1.0 - 1e-9, h + 0.25]
    pixel_x, pixel_y = (torch.tensor(p, dtype=torch.float64) for p in (pixel_x, pixel_y))
    # Every x paired with every y: [Lq = 100] queries, one head, level and point.
    locations = torch.stack(torch.meshgrid((pixel_x + 0.5) / w, (pixel_y + 0.5) / h, indexing="ij"), -1)
    locations = locations.reshape(1, -1, 1, 1, 1, 2)
    lq = locations.shape[1]
    generator = torch.Generator().manual_seed(0)
    value = torch.randn(1, h * w, 1, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(1, lq, 1, 1, 1, generator=generator, dtype=torch.float64) + 0.5
    grad_output = torch.randn(1, lq, 3, generator=generator, dtype=torch.float64)
    spatial_shapes = torch.tensor([[h, w]])

    expected = run_core(ms_deform_attn_core_pytorch, value, spatial_shapes, locations, weights, grad_output)
    actual = run_core(triton_core, value, spatial_shapes, locations, weights, grad_output)
    for name, a, e in zip(GRAD_NAMES, actual, expected):
        assert_close_to_scale(a, e, FLOAT64_REL, name)

    # Points with no corner on the map sample zero and get zero gradients, exactly.
    off_x = (pixel_x <= -1.0 - 1e-9) | (pixel_x >= w)
    off_y = (pixel_y <= -1.0 - 1e-9) | (pixel_y >= h)
    off = (off_x[:, None] | off_y[None, :]).reshape(-1)
    assert (~off).sum() == 6 * 7
    output, _, grad_locations, grad_weights = actual
    assert output[0, off].abs().max() == 0
    assert grad_locations[0, off].abs().max() == 0 and grad_weights[0, off].abs().max() == 0
    # At pixel x = -1 the only corner column on the map has weight 0: zero output, but moving the
    # point moves that weight, so the x gradient is not zero (query x = -1, y = 0.5).
    assert output[0, 0].abs().max() == 0
    assert grad_locations[0, 0, ..., 0].abs().min() > 0


def test_triton_core_non_contiguous_inputs() -> None:
    """Strided views (transposed, sliced) give the results of their contiguous copies."""
    shapes, n, lq, m, d, num_levels, p = [(4, 5), (2, 3)], 2, 5, 2, 3, 2, 2
    s = sum(h * w for h, w in shapes)
    value, spatial_shapes, locations, weights = random_core_inputs(shapes, n, lq, m, d, p, seed=5, dtype=torch.float64)
    grad_output = torch.randn(n, lq, m * d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    strided_value = value.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)  # [N, S, M, D] over [N, M, S, D] memory
    strided_locations = torch.zeros(n, lq, m, num_levels, p, 3, dtype=torch.float64)
    strided_locations[..., :2] = locations
    strided_locations = strided_locations[..., :2]  # last-dim stride 1, others padded
    strided_weights = weights.transpose(1, 2).contiguous().transpose(1, 2)  # [N, Lq, M, L, P] over [N, M, Lq, L, P]
    strided_grad = grad_output.transpose(1, 2).contiguous().transpose(1, 2)
    views = (strided_value, strided_locations, strided_weights, strided_grad)
    assert not any(t.is_contiguous() for t in views)
    assert strided_value.shape == (n, s, m, d)

    expected = run_core(ms_deform_attn_core_pytorch, value, spatial_shapes, locations, weights, grad_output)
    actual = run_core(triton_core, strided_value, spatial_shapes, strided_locations, strided_weights, strided_grad)
    for name, a, e in zip(GRAD_NAMES, actual, expected):
        assert_close_to_scale(a, e, FLOAT64_REL, name)


@pytest.mark.parametrize(
    ("low", "rel"), [(torch.bfloat16, BFLOAT16_REL), (torch.float16, FLOAT16_REL)], ids=["bfloat16", "float16"]
)
@pytest.mark.parametrize("all_low", [True, False], ids=["all-low", "value-low"])
def test_triton_core_half_precision(low: torch.dtype, rel: float, all_low: bool) -> None:
    """fp16/bf16 inputs, alone (all_low) or as under autocast (value in low precision, locations and
    weights float32): float32 arithmetic, outputs and gradients in the inputs' dtypes."""
    value, spatial_shapes, locations, weights = random_core_inputs(
        [(6, 5), (3, 3)], 1, 20, 2, 8, 2, seed=2, dtype=torch.float32
    )
    grad_output = torch.randn(1, 20, 16, generator=torch.Generator().manual_seed(3)).to(low)
    value = value.to(low)
    if all_low:
        locations, weights = locations.to(low), weights.to(low)
    actual = run_core(triton_core, value, spatial_shapes, locations, weights, grad_output)
    upcast = [t.float() for t in (value, locations, weights, grad_output)]
    expected = run_core(ms_deform_attn_core_pytorch, upcast[0], spatial_shapes, *upcast[1:])
    assert [t.dtype for t in actual] == [low, low, locations.dtype, weights.dtype]
    for name, a, e in zip(GRAD_NAMES, actual, expected):
        assert_close_to_scale(a.float(), e, rel, name)


def test_triton_core_float64_mixed_with_float32() -> None:
    """An input in float64 makes the whole op float64; the output keeps the dtype of value."""
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 1, 4, 1, 2, 1, seed=7, dtype=torch.float64)
    output = triton_core(value.float(), spatial_shapes, locations, weights)
    expected = ms_deform_attn_core_pytorch(value.float(), spatial_shapes, locations, weights)
    assert output.dtype == torch.float32
    assert_close_to_scale(output, expected, FLOAT32_REL, "output")


def test_triton_core_bad_inputs() -> None:
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 1, 4, 2, 2, 1, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"sum\(H\*W\) = 12"):
        triton_core(value[:, :11], spatial_shapes, locations, weights)
    with pytest.raises(ValueError, match="attention_weights: expected"):
        triton_core(value, spatial_shapes, locations, weights[..., :0])
    with pytest.raises(ValueError, match="sampling_locations: expected"):
        triton_core(value, spatial_shapes, locations[:, :, :1], weights[:, :, :1])
    with pytest.raises(ValueError, match="expected 1 levels, got 2"):
        triton_core(value, [(3, 4), (0, 0)], locations, weights)
    # Called directly (ms_deform_attn_core refuses such dtypes before).
    with pytest.raises(ValueError, match=r"value: dtype torch.int32 is not supported"):
        ms_deform_attn_core_triton(value.int(), spatial_shapes, locations, weights)


def test_triton_core_without_queries() -> None:
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 2, 0, 2, 3, 1, seed=0, dtype=torch.float64)
    grad_output = torch.zeros(2, 0, 6, dtype=torch.float64)
    output, grad_value, grad_locations, grad_weights = run_core(
        triton_core, value, spatial_shapes, locations, weights, grad_output
    )
    assert output.shape == (2, 0, 6) and grad_locations.shape == locations.shape
    assert grad_value.shape == value.shape and grad_value.abs().max() == 0


def test_module_with_triton_core_matches_reference_core() -> None:
    """MSDeformAttn with core_impl "triton": same output and input gradients as with "reference"."""
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in small_inputs(reference_dim=4, lq=3).items()}
    results = {}
    for impl in ("reference", "triton"):
        module.core_impl = impl
        query = inputs["query"].clone().requires_grad_()
        flatten = inputs["input_flatten"].clone().requires_grad_()
        output = module(**{**inputs, "query": query, "input_flatten": flatten})[0]
        output.square().sum().backward()
        results[impl] = (output, query.grad, flatten.grad)
    for name, a, e in zip(("output", "grad_query", "grad_input_flatten"), results["triton"], results["reference"]):
        assert_close_to_scale(a, e, FLOAT64_REL, name)
