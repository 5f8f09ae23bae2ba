"""The state dict is the checkpoint API: names, shapes and order must equal the original's."""
from __future__ import annotations

import json

import pytest
import torch

from tests.golden import REFERENCE_DIR, TOKENIZER_DIR
from tools.run_reference_case import run_case

ROBERTA_BASE_CONFIG = json.loads((REFERENCE_DIR / "roberta_base_config.json").read_text())


def default_opts(backbone: str) -> dict:
    """Original defaults plus the Ref-YouTube-VOS script flags, as used for the key schemas."""
    return {"backbone": backbone, "with_box_refine": True, "binary": True, "freeze_text_encoder": True, "device": "cpu"}


@pytest.mark.parametrize("backbone", sorted(path.stem for path in (REFERENCE_DIR / "keys").glob("[!_]*.json")))
def test_state_dict_matches_reference_schema(backbone):
    expected = json.loads((REFERENCE_DIR / "keys" / f"{backbone}.json").read_text())
    case = {"kind": "keys", "opts": default_opts(backbone), "text_encoder_config": ROBERTA_BASE_CONFIG}
    keys = run_case(case, TOKENIZER_DIR)["outputs"]["keys"]
    missing = sorted(set(expected) - set(keys))
    unexpected = sorted(set(keys) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:10]} unexpected {unexpected[:10]}"
    assert list(keys) == list(expected), "state_dict order differs from the original's"
    shapes = {k: v for k, v in keys.items() if list(v) != list(expected[k])}
    assert not shapes, f"shape mismatches: {list(shapes.items())[:10]}"


def test_named_parameter_counts_match_summary():
    """Parameter registration order and trainability match the original (optimizer state is positional)."""
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from tools.run_reference_case import build_args

    summary = json.loads((REFERENCE_DIR / "keys" / "_summary.json").read_text())["resnet50"]
    args = build_args(default_opts("resnet50"))
    model, _, _ = build_model(
        args, text_encoder=text_encoder_from_config(ROBERTA_BASE_CONFIG), tokenizer=load_tokenizer(str(TOKENIZER_DIR))
    )
    named = list(model.named_parameters())
    assert len(named) == summary["num_named_parameters"]
    assert [n for n, _ in named[:10]] == summary["named_parameters_order_first10"]
    assert sum(p.numel() for _, p in named) == summary["num_params_unique"]
    trainable = [p for _, p in named if p.requires_grad]
    assert len(trainable) == summary["num_trainable_named_parameters"]
    assert sum(p.numel() for p in trainable) == summary["num_trainable_params"]
    # box refinement registers the same box heads twice; they must be the very same tensors
    state = model.state_dict(keep_vars=True)
    for first, second in summary["tied_key_groups"]:
        assert state[first] is state[second]
    assert torch.equal(state["class_embed.0.bias"], state["class_embed.1.bias"])
    assert state["class_embed.0.bias"] is not state["class_embed.1.bias"]
