"""MSDeformAttn: golden parity with the original, fast core == reference core, module contract."""
from __future__ import annotations

import math

import pytest
import torch

from models.ms_deform_attn import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_core_pytorch
from tests.golden import assert_close_to_scale, load_case
from tools.run_reference_case import fill_by_rule

# Golden tolerance, relative to each tensor's max magnitude. Observed worst max|Δ| / max|ref| over
# every enc/dec/core tensor (outputs, locations, weights, all gradients): 3.8e-7 (dec grad_query);
# the reference core op reproduces the golden core case bit for bit (0.0). The README's float32
# vs float64 spread for this case is 6.3e-7, so 1e-5 leaves a 25x margin over rounding noise.
GOLDEN_REL = 1e-5

# Fast core vs reference core on the random float32 cases below: observed worst max|Δ| / max|ref|
# 4.5e-7 (any output or gradient). Locations are kept 1e-3 pixel away from cell edges because the
# location gradient jumps there and the two ops may floor such a point differently.
RANDOM_REL = 1e-5


@pytest.fixture(scope="module")
def golden() -> dict:
    return load_case("msdeformattn.pt")


@pytest.mark.parametrize("case", ["enc", "dec"])
def test_module_matches_golden(golden: dict, case: str) -> None:
    inputs, expected = golden["inputs"], golden["outputs"][case]
    module = MSDeformAttn(256, n_levels=4, n_heads=8, n_points=4)
    fill_by_rule(module)
    query = inputs[case]["query"].clone().requires_grad_()
    reference_points = inputs[case]["reference_points"].clone().requires_grad_()
    input_flatten = inputs[case]["input_flatten"].clone().requires_grad_()

    output, sampling_locations, attention_weights = module(
        query, reference_points, input_flatten, inputs["spatial_shapes"], inputs["level_start_index"],
        inputs["padding_mask"],
    )  # fmt: skip
    (output * inputs[case]["grad_output"]).sum().backward()

    actual = {
        "output": output,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
        "grad_query": query.grad,
        "grad_input_flatten": input_flatten.grad,
        "grad_reference_points": reference_points.grad,
    }
    for name, value in actual.items():
        assert_close_to_scale(value, expected[name], GOLDEN_REL, f"{case} {name}")
    parameters = dict(module.named_parameters())
    for key, value in expected["grad_params"].items():
        name, _, rows = key.partition("[:")
        grad = parameters[name].grad
        if rows:
            grad = grad[: int(rows.rstrip("]"))]
        assert_close_to_scale(grad, value, GOLDEN_REL, f"{case} grad {key}")


@pytest.mark.parametrize("core", ["reference", "fast"])
def test_core_matches_golden(golden: dict, core: str) -> None:
    inputs, expected = golden["inputs"]["core"], golden["outputs"]["core"]
    shapes = golden["inputs"]["spatial_shapes"]
    value = inputs["value"].clone().requires_grad_()
    locations = inputs["sampling_locations"].clone().requires_grad_()
    weights = inputs["attention_weights"].clone().requires_grad_()
    op = ms_deform_attn_core_pytorch if core == "reference" else ms_deform_attn_core

    output = op(value, shapes, locations, weights)
    (output * inputs["grad_output"]).sum().backward()

    assert_close_to_scale(output, expected["output"], GOLDEN_REL, f"{core} output")
    assert_close_to_scale(value.grad, expected["grad_value"], GOLDEN_REL, f"{core} grad_value")
    assert_close_to_scale(locations.grad, expected["grad_sampling_locations"], GOLDEN_REL, f"{core} grad_locations")
    assert_close_to_scale(weights.grad, expected["grad_attention_weights"], GOLDEN_REL, f"{core} grad_weights")


def random_core_inputs(
    shapes: list[tuple[int, int]], n: int, lq: int, m: int, d: int, p: int, seed: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value, spatial shapes, locations in [-0.3, 1.3] (many outside) away from cell edges, softmaxed weights."""
    generator = torch.Generator().manual_seed(seed)
    num_levels = len(shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=generator, dtype=dtype)
    locations = torch.rand(n, lq, m, num_levels, p, 2, generator=generator, dtype=dtype) * 1.6 - 0.3
    # Move pixel coordinates (x * W - 0.5) that are within 1e-3 of an integer off the cell edge.
    size = spatial_shapes.flip(-1).to(dtype).view(1, 1, 1, num_levels, 1, 2)
    pixel = locations * size - 0.5
    near_edge = (pixel - pixel.round()).abs() < 1e-3
    locations = torch.where(near_edge, (pixel + 0.01 + 0.5) / size, locations)
    weights = torch.randn(n, lq, m, num_levels * p, generator=generator, dtype=dtype).softmax(-1)
    return value, spatial_shapes, locations, weights.view(n, lq, m, num_levels, p)


def run_core(op, value, spatial_shapes, locations, weights, grad_output) -> list[torch.Tensor]:
    value, locations, weights = (t.clone().requires_grad_() for t in (value, locations, weights))
    output = op(value, spatial_shapes, locations, weights)
    output.backward(grad_output)
    return [output, value.grad, locations.grad, weights.grad]


@pytest.mark.parametrize(
    ("shapes", "n", "lq", "m", "d", "p"),
    [
        ([(6, 8), (3, 4), (2, 2), (1, 1)], 2, 31, 8, 4, 4),  # the model's 4 levels, tiny
        ([(7, 3)], 1, 9, 1, 5, 1),  # one level, one head, one point, tall map
        ([(5, 11), (1, 7), (9, 2)], 3, 20, 2, 3, 3),  # non-square, 1-pixel-high level, N > 1
        ([(4, 4), (2, 2)], 4, 1, 4, 8, 6),  # a single query, many points
        ([(9, 10), (5, 5)], 2, 2, 2, 4, 1),  # fewer corners than value rows: the index_add_ backward
    ],
)
def test_fast_core_matches_reference(shapes, n, lq, m, d, p) -> None:
    value, spatial_shapes, locations, weights = random_core_inputs(shapes, n, lq, m, d, p, seed=lq, dtype=torch.float32)
    grad_output = torch.randn(n, lq, m * d, generator=torch.Generator().manual_seed(1))
    expected = run_core(ms_deform_attn_core_pytorch, value, spatial_shapes, locations, weights, grad_output)
    actual = run_core(ms_deform_attn_core, value, spatial_shapes, locations, weights, grad_output)
    for name, a, e in zip(["output", "grad_value", "grad_locations", "grad_weights"], actual, expected):
        assert_close_to_scale(a, e, RANDOM_REL, name)


def test_fast_core_far_outside_is_zero() -> None:
    """Points entirely off the map (more than one pixel out) sample zero and get zero gradients."""
    value, spatial_shapes, locations, weights = random_core_inputs([(4, 5)], 1, 6, 2, 3, 2, seed=0, dtype=torch.float32)
    locations = torch.tensor([-1.0, 2.0, -0.5, 1.5, 0.5, 0.5]).view(1, 6, 1, 1, 1, 1).expand_as(locations).clone()
    locations[:, 4:, ..., 0] = -0.4  # x far left, y centred
    value.requires_grad_()
    locations.requires_grad_()
    output = ms_deform_attn_core(value, spatial_shapes, locations, weights)
    output.sum().backward()
    assert output.abs().max() == 0
    assert value.grad.abs().max() == 0
    assert locations.grad.abs().max() == 0


@pytest.mark.parametrize("lq", [3, 1])  # 1 query: fewer corners than value rows, the other backward
def test_fast_core_gradcheck_float64(lq: int) -> None:
    value, spatial_shapes, locations, weights = random_core_inputs(
        [(3, 4), (2, 1)], n=2, lq=lq, m=2, d=2, p=1, seed=3, dtype=torch.float64
    )
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn_core(v, spatial_shapes, loc, w), inputs, eps=1e-6, atol=1e-5
    )


def test_initialisation() -> None:
    module = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=2)
    assert module.im2col_step == 64
    assert module.sampling_offsets.weight.abs().max() == 0
    bias = module.sampling_offsets.bias.view(8, 3, 2, 2)  # [M, L, P, xy]
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(2):
            expected = (direction * (point + 1)).expand(3, 2)
            # The module's angles are float32 (as the original's): sin(pi) ~ -9e-8, not 0.
            torch.testing.assert_close(bias[head, :, point], expected, rtol=0, atol=1e-5)
    assert module.attention_weights.weight.abs().max() == 0
    assert module.attention_weights.bias.abs().max() == 0
    assert module.value_proj.bias.abs().max() == 0 and module.output_proj.bias.abs().max() == 0
    assert set(module.state_dict()) == {
        f"{layer}.{kind}"
        for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for kind in ("weight", "bias")
    }


def small_inputs(reference_dim: int = 2, n: int = 2, lq: int = 5) -> dict[str, torch.Tensor]:
    spatial_shapes = torch.tensor([[4, 6], [2, 3]])
    s = 4 * 6 + 2 * 3
    return {
        "query": torch.randn(n, lq, 16),
        "reference_points": torch.rand(n, lq, 2, reference_dim),
        "input_flatten": torch.randn(n, s, 16),
        "input_spatial_shapes": spatial_shapes,
        "input_level_start_index": torch.tensor([0, 24]),
        "input_padding_mask": torch.zeros(n, s, dtype=torch.bool),
    }


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_forward_shapes_and_padding(reference_dim: int) -> None:
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    inputs = small_inputs(reference_dim)
    output, locations, weights = module(**inputs)
    assert output.shape == (2, 5, 16)
    assert locations.shape == (2, 5, 4, 2, 3, 2)
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(2, 5, 4))
    # Masked values do not matter: changing them leaves the output unchanged.
    inputs["input_padding_mask"][:, -7:] = True
    masked, _, _ = module(**inputs)
    inputs["input_flatten"][:, -7:] += 100.0
    torch.testing.assert_close(module(**inputs)[0], masked)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query": torch.randn(2, 5)}, "query: expected"),
        ({"query": torch.randn(2, 5, 8)}, "query: expected"),
        ({"input_flatten": torch.randn(2, 29, 16)}, "sum\\(H\\*W\\) = 30"),
        ({"input_flatten": torch.randn(3, 30, 16)}, "expected batch 2"),
        ({"reference_points": torch.rand(2, 5, 2, 3)}, "2 or 4"),
        ({"reference_points": torch.rand(2, 5, 3, 2)}, "reference_points: expected"),
        ({"input_spatial_shapes": torch.tensor([[4, 6], [2, 3], [1, 1]])}, "input_spatial_shapes: expected"),
        ({"input_level_start_index": torch.tensor([0])}, "input_level_start_index: expected"),
        ({"input_padding_mask": torch.zeros(2, 29, dtype=torch.bool)}, "input_padding_mask: expected"),
    ],
)
def test_bad_inputs_raise(change: dict, message: str) -> None:
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    with pytest.raises(ValueError, match=message):
        module(**{**small_inputs(), **change})


def test_heads_must_divide_channels() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_autocast_bfloat16(reference_dim: int) -> None:
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    inputs = small_inputs(reference_dim)
    expected, _, _ = module(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, locations, weights = module(**inputs)
    assert output.dtype == inputs["query"].dtype
    assert torch.isfinite(output).all()
    # bfloat16 projections: about 3 significant digits.
    assert_close_to_scale(output, expected, 3e-2, "autocast output")


def test_module_reference_core_switch_gives_the_same_output() -> None:
    module = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=3)
    fill_by_rule(module)
    inputs = small_inputs(reference_dim=4)
    fast = module(**inputs)[0]
    module.core_impl = "reference"
    reference = module(**inputs)[0]
    assert_close_to_scale(fast, reference, RANDOM_REL, "reference core switch")
