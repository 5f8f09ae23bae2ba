"""Visual backbones behind one interface, and the Joiner that adds padding masks and positions.

Every backbone body maps frames ``[B*T, 3, H, W]`` to four feature maps ("res2".."res5") at
strides ``body.strides`` with ``body.num_channels`` channels. The :class:`Joiner` (checkpoint
prefix ``backbone``; index 0 is the body wrapper, index 1 the position encoding) flattens the
clip axis, resizes the image padding mask to every level with legacy nearest interpolation and
encodes positions per level.

Backbones are chosen by name through ``BACKBONES`` (name → builder). ResNet-18/34/50/101 live here;
the Swin families register themselves in the same table. The builders start from random weights or
from the file they are given; which ImageNet weights a ResNet starts training from
(:func:`resnet_imagenet_weights`) is decided by ``main.py``, the one place that knows whether a run
trains afresh.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from models.position_encoding import PositionEmbeddingSine
from models.swin_transformer import SWIN_VARIANTS, build_swin
from models.video_swin_transformer import VIDEO_SWIN_VARIANTS, build_video_swin
from util.nested_tensor import NestedTensor


FROZEN_BN_EPS = 1e-5
# With a positive backbone learning rate the original trains only these ResNet stages.
RESNET_TRAINABLE_STAGES = ("layer2", "layer3", "layer4")
# Output channels of layer1..layer4 per torchvision ResNet: basic blocks (18, 34) keep their width,
# bottlenecks (50, 101) expand it 4x. ResNet-18/34 are not in the paper; the CPU quick start uses them.
RESNET_CHANNELS: dict[str, list[int]] = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "resnet101": [256, 512, 1024, 2048],
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # Checkpoints of ordinary BatchNorm carry a counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + FROZEN_BN_EPS).rsqrt()
        shift = self.bias - self.running_mean * scale
        # One fused pass over x; in x's dtype, so that under autocast a bfloat16/float16 feature map stays
        # in it instead of widening to float32 until the next convolution casts it back.
        return torch.addcmul(shift.to(x.dtype).reshape(1, -1, 1, 1), x, scale.to(x.dtype).reshape(1, -1, 1, 1))


class ResNetBody(nn.Module):
    """A torchvision ResNet without its classifier, returning the outputs of ``layer1..layer4``.

    Submodule names are torchvision's (``conv1``, ``bn1``, ``layer1``…), which makes the
    checkpoint keys ``backbone.0.body.conv1.weight`` and so on.
    """

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(resnet, name))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


class BackboneBody(nn.Module):
    """Holds a feature extractor as ``body`` and declares its per-level ``strides`` and ``num_channels``."""

    def __init__(self, body: nn.Module, strides: list[int], num_channels: list[int], clip_level: bool = False):
        super().__init__()
        self.body = body
        self.strides = strides
        self.num_channels = num_channels
        # A clip-level body (Video Swin) needs to know the clip length to regroup frames.
        self.clip_level = clip_level

    def forward(self, frames: Tensor, num_frames: int) -> list[Tensor]:
        """``[B*T, 3, H, W]`` → four maps ``[B*T, C_l, H/s_l, W/s_l]``."""
        if self.clip_level:
            return self.body(frames, num_frames)
        return self.body(frames)


class Joiner(nn.Sequential):
    """``backbone.0`` = :class:`BackboneBody`, ``backbone.1`` = 2-D sine position encoding."""

    def __init__(self, backbone: BackboneBody, position_embedding: nn.Module):
        super().__init__(backbone, position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def forward(self, samples: NestedTensor) -> tuple[list[NestedTensor], list[Tensor], Tensor]:
        """Run the backbone on a padded clip batch.

        Args:
            samples: frames ``[B, T, 3, Hp, Wp]`` with mask ``[B, T, Hp, Wp]`` (True = padding).

        Returns:
            features: 4 NestedTensors ``[B*T, C_l, H_l, W_l]`` with masks ``[B*T, H_l, W_l]``;
            positions: 4 tensors ``[B*T, hidden, H_l, W_l]``;
            image mask ``[B*T, Hp, Wp]``.
        """
        frames, mask = samples.decompose()
        if frames.ndim != 5 or mask is None or mask.ndim != 4:
            raise ValueError(
                f"the backbone expects clips [B, T, 3, H, W] with a mask [B, T, H, W]; got {tuple(frames.shape)} "
                f"and {None if mask is None else tuple(mask.shape)}"
            )
        num_frames = frames.shape[1]
        frames = frames.flatten(0, 1)  # [B*T, 3, Hp, Wp]
        mask = mask.flatten(0, 1)  # [B*T, Hp, Wp]
        features, positions = [], []
        for feature in self[0](frames, num_frames):
            level_mask = resize_mask(mask, feature.shape[-2:])
            level = NestedTensor(feature, level_mask)
            features.append(level)
            positions.append(self[1](level).to(feature.dtype))
        return features, positions, mask


def resize_mask(mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Legacy-nearest resize of a boolean mask ``[N, H, W]`` → ``[N, h, w]`` (as every mask resize in the original)."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


def build_resnet(
    name: str,
    *,
    train_backbone: bool,
    dilation: bool = False,
    pretrained_path: str | None = None,
    use_checkpoint: bool = False,
    from_scratch: bool = False,
) -> BackboneBody:
    """A torchvision ResNet (:data:`RESNET_CHANNELS`); ``pretrained_path`` = torchvision ImageNet weights file
    (without it the weights are random).

    As in the original, the normalisation is FrozenBatchNorm2d and only :data:`RESNET_TRAINABLE_STAGES`
    train: both assume pre-trained weights. ``from_scratch`` is for random weights: ordinary BatchNorm
    (batch statistics in training, running ones in evaluation) and every stage trained.
    """
    if use_checkpoint:
        raise ValueError("--use_checkpoint is supported by the Swin and Video Swin backbones only, not ResNet")
    if from_scratch and pretrained_path:
        raise ValueError("--backbone_from_scratch and --backbone_pretrained exclude each other")
    resnet = getattr(torchvision.models, name)(
        weights=None, replace_stride_with_dilation=[False, False, dilation],
        norm_layer=nn.BatchNorm2d if from_scratch else FrozenBatchNorm2d,
    )
    body = ResNetBody(resnet)
    if pretrained_path:
        from util.checkpoint import load_resnet_imagenet_weights

        load_resnet_imagenet_weights(body, pretrained_path)
    for param_name, parameter in body.named_parameters():
        trainable = from_scratch or any(stage in param_name for stage in RESNET_TRAINABLE_STAGES)
        if not train_backbone or not trainable:
            parameter.requires_grad_(False)
    strides = [4, 8, 16, 16 if dilation else 32]
    return BackboneBody(body, strides=strides, num_channels=list(RESNET_CHANNELS[name]))


def resnet_imagenet_weights(name: str) -> torchvision.models.WeightsEnum:
    """The ImageNet weights ResNet ``name`` starts training from: torchvision's ``IMAGENET1K_V1`` (e.g.
    ``ResNet50_Weights.IMAGENET1K_V1``, file ``resnet50-0676ba61.pth``), which the original's
    ``torchvision.models.resnet50(pretrained=True)`` loaded."""
    if name not in RESNET_CHANNELS:
        raise ValueError(f"{name!r} is not a ResNet backbone; choose one of {sorted(RESNET_CHANNELS)}")
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


BackboneBuilder = Callable[..., BackboneBody]
# name → builder(name, *, train_backbone, dilation, pretrained_path, use_checkpoint)
BACKBONES: dict[str, BackboneBuilder] = {
    **{name: build_resnet for name in RESNET_CHANNELS},
    **{name: build_swin for name in SWIN_VARIANTS},
    **{name: build_video_swin for name in VIDEO_SWIN_VARIANTS},
}


def build_backbone(
    name: str,
    *,
    hidden_dim: int,
    train_backbone: bool,
    dilation: bool = False,
    pretrained_path: str | None = None,
    use_checkpoint: bool = False,
    from_scratch: bool = False,
) -> Joiner:
    """The backbone named ``name`` (see ``BACKBONES``) joined with a 2-D sine position encoding.

    ``from_scratch``: a ResNet meant for random weights (see :func:`build_resnet`).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if from_scratch and name not in RESNET_CHANNELS:
        raise ValueError(f"--backbone_from_scratch applies to the ResNet backbones, not {name!r} (Swin backbones "
                         "always train every stage, with LayerNorm)")
    resnet_only = {"from_scratch": True} if from_scratch else {}  # the Swin builders take no such option
    body = BACKBONES[name](
        name, train_backbone=train_backbone, dilation=dilation, pretrained_path=pretrained_path,
        use_checkpoint=use_checkpoint, **resnet_only,
    )
    return Joiner(body, PositionEmbeddingSine(hidden_dim // 2, normalize=True))
