"""Whole-model parity with the original ReferFormer on the golden ResNet cases.

The golden files were made by the original code on CPU with one thread; our model is built from
the case options, filled by the README's weight rule and run through ``tools/run_reference_case``.
"""
from __future__ import annotations

import pytest
import torch

from tests.golden import TOKENIZER_DIR, assert_close_to_scale, compare_compacted, load_case
from tools.run_reference_case import run_case

# Measured on this machine (1 thread): worst max|Δ|/max|ref| over the outputs of
# model_eval_r50 is 8.9e-6 (pred_logits, |Δ| 4.2e-7 on a scale of 0.047); boxes 2.3e-7,
# masks 1.3e-6. The float32-vs-float64 spread of the original itself is 1.05e-5 (README), so
# differences are summation-order rounding. Tolerance: the 1e-4 of each output's scale.
OUTPUT_REL_TOL = 1e-4
# Intermediates: worst measured 1.9e-6 relative (encoder memory); float rounding again.
INTERMEDIATE_REL_TOL = 1e-5
OUTPUT_KEYS = ("pred_logits", "pred_boxes", "pred_masks")


def compare_outputs(actual: dict, expected: dict, rel: float) -> None:
    for key in OUTPUT_KEYS:
        assert_close_to_scale(actual[key], expected[key], rel, key)
    assert len(actual["aux_outputs"]) == len(expected["aux_outputs"])
    for layer, (a, e) in enumerate(zip(actual["aux_outputs"], expected["aux_outputs"])):
        for key in OUTPUT_KEYS:
            assert_close_to_scale(a[key], e[key], rel, f"aux_outputs[{layer}].{key}")


def compare_intermediates(actual: dict, expected: dict, rel: float) -> None:
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"intermediates not produced: {missing}"
    for name, reference in expected.items():
        value = actual[name]
        if isinstance(reference, dict):
            full = value if isinstance(value, torch.Tensor) else None
            if full is None:  # both compacted: compare heads and stats
                assert_close_to_scale(value["head"], reference["head"], rel, f"{name} (head)")
                assert_close_to_scale(value["stats"], reference["stats"], rel, f"{name} (stats)")
            else:
                compare_compacted(full, reference, rel, name)
        elif reference.dtype == torch.bool:
            assert torch.equal(value, reference), name
        else:
            assert_close_to_scale(value, reference, rel, name)


@pytest.fixture(scope="module")
def eval_case():
    return load_case("model_eval_r50.pt")


@pytest.fixture(scope="module")
def eval_result(eval_case):
    torch.set_num_threads(1)
    return run_case(eval_case, TOKENIZER_DIR)


def test_eval_outputs_match_original(eval_case, eval_result):
    compare_outputs(eval_result["outputs"], eval_case["outputs"], OUTPUT_REL_TOL)
    assert_close_to_scale(
        eval_result["outputs"]["reference_points"], eval_case["outputs"]["reference_points"], OUTPUT_REL_TOL, "reference_points"
    )


def test_eval_intermediates_match_original(eval_case, eval_result):
    compare_intermediates(eval_result["intermediates"], eval_case["intermediates"], INTERMEDIATE_REL_TOL)


# Train case (model.train(), every dropout 0). Measured on this machine, 1 thread: losses within
# 1.8e-7 absolute (total bit-identical); gradients within 9.1e-6 of their tensor's max magnitude
# (worst: pixel_decoder.cross_attn_1 in_proj, itself ~2e-8), grad norms within 9.6e-6 relative.
# On a CPU with AMX (other oneDNN kernels) one gradient is off by 4.3e-8 absolute, 1.4e-4 of its
# tensor's max magnitude (pixel_decoder.adapter_1.weight, max 3.0e-4): hence also the README's
# suggested absolute 1e-7.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
GRAD_REL_TOL, GRAD_ATOL = 1e-4, 1e-7
GRAD_NORM_RTOL = 1e-4
# Gradients whose magnitude is pure rounding noise (README: decoder layer 0 self-attention
# in_proj rows 0..77, max |g| ≈ 6e-10, float32 vs float64 differ by 100%): absolute check only.
NOISE_GRAD_SCALE = 1e-8


@pytest.fixture(scope="module")
def train_case():
    return load_case("model_train_r50.pt")


@pytest.fixture(scope="module")
def train_result(train_case):
    torch.set_num_threads(1)
    return run_case(train_case, TOKENIZER_DIR)


def test_train_outputs_and_matching_match_original(train_case, train_result):
    train_result = train_result["outputs"]
    compare_outputs(train_result["model_outputs"], train_case["outputs"]["model_outputs"], OUTPUT_REL_TOL)
    as_lists = lambda indices: [[(src.tolist(), tgt.tolist()) for src, tgt in layer] for layer in indices]  # noqa: E731
    assert as_lists(train_result["matcher_indices"]) == as_lists(train_case["outputs"]["matcher_indices"])


def test_train_losses_match_original(train_case, train_result):
    train_result = train_result["outputs"]
    expected = train_case["outputs"]
    assert train_result["weight_dict"] == expected["weight_dict"]
    assert sorted(train_result["losses"]) == sorted(expected["losses"])
    for name, value in expected["losses"].items():
        torch.testing.assert_close(train_result["losses"][name], value, rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=name)
    torch.testing.assert_close(train_result["total_loss"], expected["total_loss"], rtol=LOSS_RTOL, atol=LOSS_ATOL)


def test_train_gradients_match_original(train_case, train_result):
    train_result = train_result["outputs"]
    expected = train_case["outputs"]
    assert train_result["trainable_param_names"] == expected["trainable_param_names"]
    for name, grad in expected["grads"].items():
        if grad.abs().max() < NOISE_GRAD_SCALE:
            assert (train_result["grads"][name] - grad).abs().max() <= NOISE_GRAD_SCALE, name
        else:
            assert_close_to_scale(train_result["grads"][name], grad, GRAD_REL_TOL, name, atol=GRAD_ATOL)
    assert sorted(train_result["grad_norms"]) == sorted(expected["grad_norms"])
    for name, norm in expected["grad_norms"].items():
        assert train_result["grad_norms"][name] == pytest.approx(norm, rel=GRAD_NORM_RTOL, abs=NOISE_GRAD_SCALE), name


def test_train_intermediates_match_original(train_case, train_result):
    compare_intermediates(train_result["intermediates"], train_case["intermediates"], INTERMEDIATE_REL_TOL)
