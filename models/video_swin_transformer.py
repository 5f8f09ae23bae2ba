"""Video Swin Transformer, applied to whole clips: ``video_swin_{t,s,b}_p4w7``.

The three variants differ only in the rows of :data:`VIDEO_SWIN_VARIANTS`. Blocks, stages and
patch merging are those of :mod:`models.swin_transformer` with 3-D windows over
(time, height, width): window (8, 7, 7), shifted by (4, 3, 3) in odd blocks, and shrunk to the
input size with no shift along any axis that is not larger than its window (so a 5-frame clip has
a 5-frame window and no temporal shift). The relative-position index is built for the full
window and sliced ``[:N, :N]`` when a window shrinks, as in the original.

As in ReferFormer, each stage's patch merging is moved out of the stage into ``downsamples``,
and the feature of stage i is the stage output **before** merging and **without** any norm
(Video Swin's final norm is discarded).

State-dict names (prefix ``backbone.0.body.``): ``patch_embed.{proj,norm}`` (kernel
``[C, 3, 1, 4, 4]``), ``layers.{s}.blocks.{b}.*`` (bias table ``[2535, heads]``, index
``[392, 392]``) and ``downsamples.{0,1,2}.{reduction,norm}``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from models.swin_transformer import (
    NUM_STAGES,
    PATCH_SIZE,
    PatchEmbed,
    PatchMerging,
    SwinStage,
    SwinVariant,
    drop_path_rates,
    init_swin_weights,
)

if TYPE_CHECKING:
    from models.backbone import BackboneBody

# No temporal downsampling: every frame keeps its own feature maps.
PATCH_3D = (1, PATCH_SIZE, PATCH_SIZE)
WINDOW_3D = (8, 7, 7)


VIDEO_SWIN_VARIANTS: dict[str, SwinVariant] = {
    "video_swin_t_p4w7": SwinVariant(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "video_swin_s_p4w7": SwinVariant(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "video_swin_b_p4w7": SwinVariant(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.2),
}
VIDEO_SWIN_STRIDES = [4, 8, 16, 32]


class VideoSwinTransformer(nn.Module):
    """Clip-level Video Swin: frames ``[B*T, 3, H, W]`` → four maps ``[B*T, C_i, H_i, W_i]`` at strides 4..32.

    ``H_0 = ⌈H/4⌉`` and ``H_{i+1} = ⌈H_i/2⌉`` (likewise W); attention mixes the T frames of a clip.
    """

    def __init__(self, variant: SwinVariant):
        super().__init__()
        self.num_channels = variant.num_channels
        self.patch_embed = PatchEmbed(PATCH_3D, variant.embed_dim)
        self.layers = nn.ModuleList(
            SwinStage(self.num_channels[stage], depth, heads, WINDOW_3D, rates, shrink_windows=True)
            for stage, (depth, heads, rates) in enumerate(
                zip(variant.depths, variant.num_heads, drop_path_rates(variant.depths, variant.drop_path_rate))
            )
        )
        self.downsamples = nn.ModuleList(PatchMerging(channels) for channels in self.num_channels[:-1])
        self.apply(init_swin_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (same outputs and gradients, less memory)."""
        for layer in self.layers:
            layer.use_checkpoint = enable

    def forward(self, frames: Tensor, num_frames: int) -> list[Tensor]:
        batch_frames, channels, height, width = frames.shape
        if batch_frames % num_frames:
            raise ValueError(f"{batch_frames} frames cannot be split into clips of {num_frames} frames")
        clips = frames.view(-1, num_frames, channels, height, width).transpose(1, 2)  # [B, 3, T, H, W]
        x = self.patch_embed(clips)  # [B, T, H/4, W/4, C]
        features = []
        for stage, layer in enumerate(self.layers):
            x = layer(x)  # [B, T, H_i, W_i, C_i]
            features.append(x.permute(0, 1, 4, 2, 3).flatten(0, 1).contiguous())  # [B*T, C_i, H_i, W_i]
            if stage < NUM_STAGES - 1:
                x = self.downsamples[stage](x)  # [B, T, ⌈H_i/2⌉, ⌈W_i/2⌉, 2C_i]
        return features


def build_video_swin(
    name: str,
    *,
    train_backbone: bool,
    dilation: bool = False,
    pretrained_path: str | None = None,
    use_checkpoint: bool = False,
) -> BackboneBody:
    """``video_swin_*_p4w7``: the variant's Video Swin, Kinetics weights from ``pretrained_path`` if given.

    All Video Swin parameters are trainable, as in the original (``train_backbone`` is not consulted;
    with ``--lr_backbone 0`` they simply do not move).
    """
    from models.backbone import BackboneBody  # models.backbone imports this module for its registry

    if dilation:
        raise ValueError(f"--dilation applies to ResNet backbones only, not {name}")
    body = VideoSwinTransformer(VIDEO_SWIN_VARIANTS[name])
    if pretrained_path:
        from util.checkpoint import load_video_swin_kinetics_weights

        load_video_swin_kinetics_weights(body, pretrained_path, backbone=name)
    body.set_grad_checkpointing(use_checkpoint)
    return BackboneBody(body, strides=list(VIDEO_SWIN_STRIDES), num_channels=body.num_channels, clip_level=True)
