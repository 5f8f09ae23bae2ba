"""ResNet backbones: every registered depth declares the channels and strides its feature maps have."""
from __future__ import annotations

import pytest
import torch

from models.backbone import (BACKBONES, RESNET_CHANNELS, RESNET_TRAINABLE_STAGES, build_backbone,
                             resnet_imagenet_weights)
from util.checkpoint import load_model_state, model_state_from_checkpoint


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


def test_from_scratch_trains_every_stage_with_batch_statistics():
    body = BACKBONES["resnet18"]("resnet18", train_backbone=True, from_scratch=True)
    assert all(p.requires_grad for p in body.parameters())  # stem and layer1 included
    norms = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 20  # bn1 + 2 per basic block × 8 blocks + 3 downsample projections
    frames = torch.rand(4, 3, 64, 64) * 5 + 3  # far from the initial running statistics (0, 1)
    body.train()
    body(frames, num_frames=1)
    assert not torch.allclose(body.body.bn1.running_mean, torch.zeros(64))
    normalised = body.body.bn1(body.body.conv1(frames))  # per channel: zero mean, unit variance over the batch
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.var(dim=(0, 2, 3), unbiased=False), torch.ones(64), atol=1e-2, rtol=0)


def test_default_resnet_freezes_the_stem_layer1_and_every_batchnorm():
    body = BACKBONES["resnet18"]("resnet18", train_backbone=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    assert not body.body.conv1.weight.requires_grad and not body.body.layer1[0].conv1.weight.requires_grad


def test_from_scratch_refuses_pretrained_weights_and_non_resnet_backbones():
    with pytest.raises(ValueError, match="exclude each other"):
        BACKBONES["resnet18"]("resnet18", train_backbone=True, from_scratch=True, pretrained_path="r18.pth")
    with pytest.raises(ValueError, match="applies to the ResNet backbones"):
        build_backbone("swin_t_p4w7", hidden_dim=32, train_backbone=True, from_scratch=True)


def test_from_scratch_weights_give_the_same_features_in_a_default_resnet():
    """In evaluation BatchNorm is the frozen affine map of its running statistics: the checkpoint of a
    --backbone_from_scratch run also works without the flag."""
    trained = BACKBONES["resnet18"]("resnet18", train_backbone=True, from_scratch=True)
    trained.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from (0, 1)
            trained(torch.rand(4, 3, 64, 64) * 2, num_frames=1)
    trained.eval()
    default = BACKBONES["resnet18"]("resnet18", train_backbone=True)
    load_model_state(default, model_state_from_checkpoint({"model": trained.state_dict()}), strict=True)
    frames = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for expected, actual in zip(trained(frames, num_frames=1), default(frames, num_frames=1)):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# The files torchvision publishes as IMAGENET1K_V1 (the original's pretrained=True).
IMAGENET_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth",
                  "resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}


@pytest.mark.parametrize("name", sorted(RESNET_CHANNELS))
def test_imagenet_weights_are_torchvisions_v1_files(name):
    weights = resnet_imagenet_weights(name)
    assert weights.url.rsplit("/", 1)[-1] == IMAGENET_FILES[name] and weights.name == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="not a ResNet backbone"):
        resnet_imagenet_weights("swin_t_p4w7")


def test_backbone_pretrained_takes_a_torchvision_imagenet_file(tmp_path):
    """A raw torchvision state dict, classifier (fc.*) and BatchNorm counters included."""
    import torchvision

    torch.manual_seed(7)
    imagenet = torchvision.models.resnet18(weights=None)
    for module in imagenet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)
    path = tmp_path / IMAGENET_FILES["resnet18"]
    torch.save(imagenet.state_dict(), path)
    joiner = build_backbone("resnet18", hidden_dim=32, train_backbone=True, pretrained_path=str(path))
    loaded = joiner[0].body.state_dict()
    expected = {key: value for key, value in imagenet.state_dict().items()
                if not key.startswith("fc.") and not key.endswith("num_batches_tracked")}
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())

