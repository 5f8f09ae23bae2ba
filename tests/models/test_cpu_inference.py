"""Faster CPU inference (models/cpu_inference.py): the golden parity holds with its kernels; bfloat16 autocast
measured against float32 on the golden cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from models.backbone import FrozenBatchNorm2d
from models.cpu_inference import OneDNNLinear, cpu_inference, onednn_linear_available, use_channels_last
from tests.golden import TOKENIZER_DIR, load_case
from tests.models.test_referformer_parity import (
    INTERMEDIATE_REL_TOL,
    OUTPUT_REL_TOL,
    compare_intermediates,
    compare_outputs,
)
from tools.run_reference_case import (
    COMPACT_ABOVE,
    build_reference_model,
    finish_intermediates,
    model_inputs,
    record_intermediates,
)

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN")
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"


def profiled_ops(function) -> tuple[object, set[str]]:
    """``function()``'s result and the names of the operators it ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = function()
    return result, {event.key for event in prof.key_averages()}


@needs_onednn
def test_golden_parity_holds_with_the_fast_cpu_kernels():
    """The golden R50 eval case, with channels-last weights and oneDNN linear layers, within the parity
    tests' tolerances (the same comparison as tests/models/test_referformer_parity.py)."""
    case = load_case("model_eval_r50.pt")
    _, model, _ = build_reference_model(case, TOKENIZER_DIR)
    use_channels_last(model.eval())
    assert model.backbone[0].body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    store, remove = record_intermediates(model)
    with torch.no_grad(), cpu_inference(model):
        outputs, ops = profiled_ops(lambda: model(*model_inputs(case)))
    remove()
    assert ONEDNN_LINEAR in ops
    compare_outputs(outputs, case["outputs"], OUTPUT_REL_TOL)
    compare_intermediates(finish_intermediates(store, COMPACT_ABOVE["model_eval"]), case["intermediates"],
                          INTERMEDIATE_REL_TOL)


@needs_onednn
def test_onednn_linear_computes_f_linear_and_steps_aside_otherwise():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 100, 32, generator=generator)
    weight = torch.randn(48, 32, generator=generator)
    bias = torch.randn(48, generator=generator)
    expected = (x.double() @ weight.double().t() + bias.double()).float()
    with torch.no_grad(), OneDNNLinear():
        output, ops = profiled_ops(lambda: F.linear(x, weight, bias))
        unbiased = F.linear(x, weight)
    assert ONEDNN_LINEAR in ops
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unbiased, expected - bias, rtol=1e-5, atol=1e-5)
    # under bfloat16 autocast: the linear layer on bfloat16 inputs, as autocast computes it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.linear(x, weight, bias)
        with OneDNNLinear():
            output, ops = profiled_ops(lambda: F.linear(x, weight, bias))
    assert ONEDNN_LINEAR in ops and output.dtype == torch.bfloat16
    torch.testing.assert_close(output.float(), reference.float(), rtol=2e-2, atol=2e-2)
    # autograd, too few rows, float64: PyTorch's own F.linear
    leaf = weight.clone().requires_grad_()
    with OneDNNLinear():
        output, ops = profiled_ops(lambda: F.linear(x, leaf, bias))
        small = F.linear(x[:, :1], weight, bias)
        wide = F.linear(x.double(), weight.double())
    assert ONEDNN_LINEAR not in ops and output.grad_fn is not None
    torch.testing.assert_close(small, expected[:, :1], rtol=1e-5, atol=1e-5)
    assert wide.dtype == torch.float64


def test_channels_last_keeps_values_and_keys():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv3d(8, 4, 1), torch.nn.Linear(4, 2))
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    use_channels_last(conv)
    after = conv.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert conv[1].weight.is_contiguous()  # 5-D: left as it was


def test_frozen_batchnorm_keeps_the_dtype_of_its_input():
    norm = FrozenBatchNorm2d(4)
    generator = torch.Generator().manual_seed(0)
    for name in ("weight", "bias", "running_mean"):
        getattr(norm, name).normal_(generator=generator)
    norm.running_var.uniform_(0.5, 2, generator=generator)
    x = torch.randn(2, 4, 3, 5, generator=generator)
    scale = norm.weight / (norm.running_var + 1e-5).sqrt()
    expected = (x - norm.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)
    low = norm(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), expected, rtol=2e-2, atol=2e-2)


# bfloat16 autocast against float32 on the golden eval cases (fast CPU kernels in both). The fill rule's
# weights give near-constant mask logits (about -0.016 ± 0.001): no pixel is positive, so masks are
# compared at the float32 logits' median, where bfloat16 rounding flips the most pixels (a worst case).
# Measured on an AVX-512 BF16 CPU: IoU 0.888 (R50), 0.991 (Swin-T), 0.945 (Video Swin-T); boxes within
# 0.7-0.9 % of their largest value. Bounds leave room for other CPUs' kernels.
BF16_CASES = {"model_eval_r50.pt": 0.85, "model_eval_swin_t.pt": 0.95, "model_eval_video_swin_t.pt": 0.9}
BF16_BOX_REL_TOL = 2e-2


@pytest.mark.parametrize("case_name", list(BF16_CASES))
def test_bfloat16_autocast_against_float32_on_golden_cases(case_name):
    case = load_case(case_name)
    _, model, _ = build_reference_model(case, TOKENIZER_DIR)
    use_channels_last(model.eval())
    with torch.no_grad(), cpu_inference(model):
        full = model(*model_inputs(case))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(*model_inputs(case))
    threshold = full["pred_masks"].median()
    masks, low_masks = full["pred_masks"] > threshold, low["pred_masks"].float() > threshold
    iou = (masks & low_masks).sum() / (masks | low_masks).sum()
    assert iou >= BF16_CASES[case_name]
    box_error = (low["pred_boxes"].float() - full["pred_boxes"]).abs().max() / full["pred_boxes"].abs().max()
    assert box_error <= BF16_BOX_REL_TOL
