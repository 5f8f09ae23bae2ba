"""Checkpoints in the original's layout load strictly; checkpoints of another backbone are refused clearly."""
from __future__ import annotations

import argparse

import pytest
import torch

from tests.models.test_referformer import build_tiny_model
from util.checkpoint import CheckpointMismatchError, load_checkpoint, load_model_state, model_state_from_checkpoint


def write_original_layout(model, path, extra_keys: dict | None = None):
    """What the original main.py saves every epoch, with the legacy (non-zip) serialisation."""
    state = dict(model.state_dict())
    state.update(extra_keys or {})
    checkpoint = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {"milestones": {6: 1, 8: 1}, "last_epoch": 1},
        "epoch": 0,
        "args": argparse.Namespace(backbone="resnet50", with_box_refine=True),
    }
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)


def test_original_checkpoint_loads_strictly(tmp_path):
    source, _ = build_tiny_model()
    path = tmp_path / "checkpoint.pth"
    # written with transformers < 4.31: a persistent position_ids buffer that no longer exists
    write_original_layout(source, path, {"text_encoder.embeddings.position_ids": torch.arange(514)[None]})
    target, _ = build_tiny_model()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    load_model_state(target, model_state_from_checkpoint(load_checkpoint(path)), strict=True, source=str(path))
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    # the tied box heads are still one tensor after loading
    assert target.bbox_embed[1].layers[0].weight is target.transformer.decoder.bbox_embed[1].layers[0].weight


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    resnet101, _ = build_tiny_model(backbone="resnet101")
    path = tmp_path / "r101.pth"
    write_original_layout(resnet101, path)
    resnet50, _ = build_tiny_model()
    with pytest.raises(CheckpointMismatchError, match=r"unexpected") as info:
        load_model_state(resnet50, model_state_from_checkpoint(load_checkpoint(path)), source=str(path))
    message = str(info.value)
    assert "backbone.0.body.layer3.6" in message and str(path) in message
