"""ResNet backbones: every registered depth declares the channels and strides its feature maps have."""
from __future__ import annotations

import pytest
import torch

from models.backbone import BACKBONES, RESNET_CHANNELS, RESNET_TRAINABLE_STAGES


@pytest.mark.parametrize("name", sorted(RESNET_CHANNELS))
def test_declared_channels_and_strides_match_the_features(name):
    body = BACKBONES[name](name, train_backbone=True)
    height, width = 64, 96
    with torch.no_grad():
        features = body(torch.zeros(2, 3, height, width), num_frames=1)
    assert [f.shape[1] for f in features] == body.num_channels == RESNET_CHANNELS[name]
    assert [(height // s, width // s) for s in body.strides] == [tuple(f.shape[-2:]) for f in features]
    trainable = {n.split(".")[1] for n, p in body.named_parameters() if p.requires_grad}  # body.<stage>.…
    assert trainable == set(RESNET_TRAINABLE_STAGES)
