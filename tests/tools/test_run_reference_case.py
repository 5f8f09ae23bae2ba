"""The golden-case runner honours the case format for shipped and newly generated cases."""
from __future__ import annotations

import subprocess
import sys

import torch

from tests.golden import REFERENCE_DIR, ROOT, TOKENIZER_DIR, assert_close_to_scale, load_case
from tools.run_reference_case import run_case


def assert_same_structure(actual, expected, path="outputs"):
    """Same nested keys, list lengths, tensor shapes and dtypes (extra keys allowed)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}: missing key {key!r}"
            assert_same_structure(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_structure(a, e, f"{path}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), path
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
            f"{path}: {tuple(actual.shape)} {actual.dtype} != {tuple(expected.shape)} {expected.dtype}"
        )
    else:
        assert type(actual) is type(expected) or isinstance(expected, float), path


def run_cli(case_path, out_path, *extra):
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "run_reference_case.py"), str(case_path), str(out_path), *extra],
        check=True, cwd=ROOT, capture_output=True,
    )
    return torch.load(out_path, weights_only=True)


def test_cli_reproduces_deformable_attention_case(tmp_path):
    case = load_case("msdeformattn.pt")
    result = run_cli(REFERENCE_DIR / "msdeformattn.pt", tmp_path / "out.pt", "--threads", "1")
    assert_same_structure(result["outputs"], case["outputs"])
    for part in ("enc", "dec", "core"):
        assert_close_to_scale(result["outputs"][part]["output"], case["outputs"][part]["output"], 1e-5, part)


def test_cli_times_repeated_eval_forwards(tmp_path):
    case = load_case("model_eval_r50.pt")
    result = run_cli(REFERENCE_DIR / "model_eval_r50.pt", tmp_path / "out.pt", "--threads", "2", "--repeat", "1")
    assert_same_structure(result["outputs"], case["outputs"])
    assert result["timing"]["forward_seconds_min"] > 0
    assert_close_to_scale(result["outputs"]["pred_masks"], case["outputs"]["pred_masks"], 1e-4, "pred_masks")


def generated_case(kind: str, **opts) -> dict:
    """A new case in the golden format: one 2-frame clip of another size, other options, no outputs."""
    base = load_case("model_train_r50.pt")
    generator = torch.Generator().manual_seed(7)
    h, w = 64, 96
    frames = torch.randn(1, 2, 3, h, w, generator=generator)
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    mask[:, 8:40, 16:60] = True
    target = {"size": torch.tensor([h, w])}
    if kind == "model_train":
        target.update(
            labels=torch.zeros(2, dtype=torch.long), masks=mask, valid=torch.ones(2, dtype=torch.long),
            boxes=torch.tensor([[38 / w, 24 / h, 44 / w, 32 / h]] * 2), orig_size=torch.tensor([h, w]),
        )
    return {
        "kind": kind,
        "opts": {**base["opts"], "num_frames": 2, **opts},
        "text_encoder_config": base["text_encoder_config"],
        "inputs": {
            "samples_tensors": frames, "samples_mask": torch.zeros(1, 2, h, w, dtype=torch.bool),
            "captions": ["the large animal on the right"], "targets": [target],
        },
        "notes": [], "generator": {},
    }


def test_generated_eval_case_with_other_options():
    case = generated_case("model_eval", num_queries=3, dec_layers=3, with_box_refine=False)
    outputs = run_case(case, TOKENIZER_DIR)["outputs"]
    assert outputs["pred_logits"].shape == (1, 2, 3, 1)
    assert outputs["pred_masks"].shape == (1, 2, 3, 16, 24)
    assert len(outputs["aux_outputs"]) == 2
    assert outputs["reference_points"].shape == (1, 2, 3, 2)


def test_generated_train_case_has_every_output():
    case = generated_case("model_train", num_queries=4, dec_layers=2, dropout=0.0)
    outputs = run_case(case, TOKENIZER_DIR)["outputs"]
    assert sorted(outputs["losses"]) == sorted(
        f"loss_{n}{s}" for n in ("ce", "bbox", "giou", "mask", "dice") for s in ("", "_0")
    )
    total = sum(outputs["losses"][k] * outputs["weight_dict"][k] for k in outputs["losses"])
    torch.testing.assert_close(outputs["total_loss"], total)
    assert len(outputs["matcher_indices"]) == 2
    assert 0 <= int(outputs["matcher_indices"][0][0][0]) < 4
    assert outputs["grads"] and all(torch.isfinite(g).all() for g in outputs["grads"].values())
    assert "transformer.level_embed" in outputs["trainable_param_names"]
