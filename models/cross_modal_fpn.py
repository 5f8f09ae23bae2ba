"""Cross-modal FPN pixel decoder: mask features at stride 4, fused with the words at every scale.

Top-down over strides 32 → 16 → 8 (the encoder memory of those levels) and then 4 (the backbone's
res2 feature). At every scale a :class:`VisionLanguageBlock` lets the pixels of all frames of a
clip attend to each other (spatially reduced by ``sr_ratio``) and then to the words.

Checkpoint keys (``pixel_decoder.``): ``adapter_s`` (lateral 1×1 conv + ``norm``), ``layer_s``
(3×3 conv + ``norm``), ``cross_attn_s`` for s = 1..4 (1 ↔ stride 4), and ``mask_features``.
"""
from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from models.dropout import Dropout, explicit_attention
from models.position_encoding import PositionEmbeddingSine1D
from util.nested_tensor import NestedTensor

FPN_GROUP_NORM_GROUPS = 8
# Self-attention spatial-reduction ratio of cross_attn_1..4 (strides 4, 8, 16, 32).
SR_RATIOS = (8, 4, 2, 1)
FPN_ATTENTION_HEADS = 8
FPN_DROPOUT = 0.1  # hard-coded in the original, independent of --dropout
# The stride-4 map is reduced 8x for self-attention, so it needs >= 8 cells: about 29 input pixels.
MIN_INPUT_SIDE = 4 * SR_RATIOS[0] - 3


class ConvNormActivation(nn.Conv2d):
    """``Conv2d`` followed by an optional ``norm`` submodule and activation (weights stay at ``weight``)."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.activation else x


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's "XavierFill": kaiming-uniform with a = 1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


class VisionLanguageBlock(nn.Module):
    """Post-norm block: spatio-temporal self-attention, cross-attention to words, ReLU FFN.

    Sequence-first tensors: visual ``[T*H*W, B, C]``, words ``[S, B, C]``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = FPN_DROPOUT, sr_ratio: int = 1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.sr_ratio = sr_ratio

    def _self_attention(self, visual: Tensor, visual_pos: Tensor, visual_mask: Tensor, t: int, h: int, w: int) -> Tensor:
        """Self-attention over all T·H·W pixels of a clip, on a nearest-downsampled grid if ``sr_ratio > 1``."""
        q = k = visual + visual_pos
        if self.sr_ratio == 1:
            return self.self_attn(q, k, value=visual, key_padding_mask=visual_mask,
                                  need_weights=explicit_attention(self.self_attn))[0]
        b = visual.shape[1]
        size = (int(h / self.sr_ratio), int(w / self.sr_ratio))
        if min(size) == 0:
            raise ValueError(
                f"input too small for the cross-modal FPN: a {h}x{w} feature map cannot be reduced {self.sr_ratio}x "
                f"for self-attention; frames need at least about {MIN_INPUT_SIDE} pixels per side"
            )

        def downsample(x: Tensor) -> Tensor:
            x = rearrange(x, "(t h w) b c -> (b t) c h w", t=t, h=h, w=w)
            x = F.interpolate(x, size=size, mode="nearest")
            return rearrange(x, "(b t) c h w -> (t h w) b c", t=t)

        mask = F.interpolate(visual_mask.reshape(b * t, 1, h, w).float(), size=size, mode="nearest").bool()
        mask = mask.reshape(b, t * size[0] * size[1])  # [B, T*h'*w']
        q = k = downsample(q)
        attended = self.self_attn(q, k, value=downsample(visual), key_padding_mask=mask,
                                   need_weights=explicit_attention(self.self_attn))[0]
        attended = rearrange(attended, "(t h w) b c -> (b t) c h w", t=t, h=size[0], w=size[1])
        attended = F.interpolate(attended, size=(h, w), mode="bilinear", align_corners=False)
        return rearrange(attended, "(b t) c h w -> (t h w) b c", t=t)

    def attend_visual(self, visual: Tensor, visual_pos: Tensor, visual_mask: Tensor, t: int, h: int, w: int) -> Tensor:
        """First half: self-attention among the clip's pixels, with residual and ``norm1`` → ``[T*H*W, B, C]``.

        Caption-independent when ``visual`` is (the finest stage, which reads the backbone's res2 feature).
        """
        return self.norm1(visual + self.dropout1(self._self_attention(visual, visual_pos, visual_mask, t, h, w)))

    def attend_text(self, x: Tensor, text: Tensor, text_mask: Tensor, text_pos: Tensor, visual_pos: Tensor) -> Tensor:
        """Second half: cross-attention to the words and the FFN → ``[T*H*W, B, C]``."""
        attended = self.multihead_attn(
            query=x + visual_pos, key=text + text_pos, value=text, key_padding_mask=text_mask,
            need_weights=explicit_attention(self.multihead_attn),
        )[0]
        x = self.norm2(x + self.dropout2(attended))
        # in-place ReLU: the FFN's hidden activation is the largest tensor of the block (T*H*W x 2048 at stride 4)
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))
        return self.norm3(x + self.dropout3(ffn))

    def forward(
        self, visual: Tensor, text: Tensor, t: int, h: int, w: int, visual_mask: Tensor, text_mask: Tensor,
        text_pos: Tensor, visual_pos: Tensor,
    ) -> Tensor:
        """
        Args:
            visual: ``[T*H*W, B, C]``; visual_mask ``[B, T*H*W]``; visual_pos ``[T*H*W, B, C]``.
            text: ``[S, B, C]``; text_mask ``[B, S]``; text_pos ``[S, B, C]``.

        Returns:
            ``[T*H*W, B, C]``.
        """
        x = self.attend_visual(visual, visual_pos, visual_mask, t, h, w)
        return self.attend_text(x, text, text_mask, text_pos, visual_pos)


class CrossModalFPNDecoder(nn.Module):
    """FPN over (res2 feature, encoder memory at strides 8/16/32) with word fusion at every scale.

    Args:
        feature_channels: input channels per scale, stride 4 first (``[C_res2, C, C, C]``).
        conv_dim: FPN width; mask_dim: output channels of ``mask_features``.
        dropout: of the vision-language blocks (fixed at 0.1 in the original; ``--fpn_dropout``).
    """

    def __init__(self, feature_channels: list[int], *, conv_dim: int, mask_dim: int, dim_feedforward: int = 2048,
                 dropout: float = FPN_DROPOUT):
        super().__init__()
        for stage, in_channels in enumerate(feature_channels, start=1):
            adapter = ConvNormActivation(
                in_channels, conv_dim, kernel_size=1, bias=False, norm=nn.GroupNorm(FPN_GROUP_NORM_GROUPS, conv_dim)
            )
            layer = ConvNormActivation(
                conv_dim, conv_dim, kernel_size=3, padding=1, bias=False,
                norm=nn.GroupNorm(FPN_GROUP_NORM_GROUPS, conv_dim), activation=True,
            )
            c2_xavier_fill(adapter)
            c2_xavier_fill(layer)
            self.add_module(f"adapter_{stage}", adapter)
            self.add_module(f"layer_{stage}", layer)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        c2_xavier_fill(self.mask_features)
        self.text_pos = PositionEmbeddingSine1D(conv_dim, normalize=True)
        for stage, sr_ratio in enumerate(SR_RATIOS[: len(feature_channels)], start=1):
            block = VisionLanguageBlock(conv_dim, FPN_ATTENTION_HEADS, dim_feedforward=dim_feedforward, dropout=dropout,
                                        sr_ratio=sr_ratio)
            for p in block.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            self.add_module(f"cross_attn_{stage}", block)
        self.num_stages = len(feature_channels)

    def _finest_stage_inputs(
        self, features: list[NestedTensor], positions: list[Tensor], num_frames: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Adapted res2 feature, its positions and mask, sequence-first: ``[T*H*W, B, C]`` ×2, ``[B, T*H*W]``."""
        b = features[0].tensors.shape[0] // num_frames
        visual = rearrange(self.adapter_1(features[0].tensors), "(b t) c h w -> (t h w) b c", b=b, t=num_frames)
        visual_pos = rearrange(positions[0], "(b t) c h w -> (t h w) b c", b=b, t=num_frames)
        visual_mask = rearrange(features[0].mask, "(b t) h w -> b (t h w)", b=b, t=num_frames)
        return visual, visual_pos, visual_mask

    def forward_visual(self, features: list[NestedTensor], positions: list[Tensor], num_frames: int) -> Tensor:
        """The caption-independent start of the finest stage (stride 4): the res2 feature's adapter and
        self-attention (:meth:`VisionLanguageBlock.attend_visual`) → ``[T*H*W, B, C]``, for :meth:`forward`'s
        ``finest_visual`` (inference computes it once for all expressions of a clip)."""
        visual, visual_pos, visual_mask = self._finest_stage_inputs(features, positions, num_frames)
        _, _, h, w = positions[0].shape
        return self.cross_attn_1.attend_visual(visual, visual_pos, visual_mask, num_frames, h, w)

    def forward(
        self,
        features: list[NestedTensor],
        text_word_features: NestedTensor,
        positions: list[Tensor],
        memory: list[Tensor],
        num_frames: int,
        finest_visual: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            features: backbone levels (strides 4, 8, 16, 32) ``[B*T, C_l, H_l, W_l]`` with masks.
            text_word_features: ``[B, S, C]`` with mask ``[B, S]``.
            positions: backbone position maps per level ``[B*T, C, H_l, W_l]``.
            memory: encoder memory at strides 8, 16, 32 ``[B*T, C, H_l, W_l]``.
            num_frames: T.
            finest_visual: :meth:`forward_visual` of the same features, if already computed.

        Returns:
            mask features ``[B*T, mask_dim, H/4, W/4]`` (stride 4 of the padded input).
        """
        text_pos = self.text_pos(text_word_features).permute(2, 0, 1)  # [S, B, C]
        text, text_mask = text_word_features.decompose()
        text = text.permute(1, 0, 2)  # [S, B, C]
        t = num_frames
        y = None
        # coarse to fine: encoder memory at strides 32, 16, 8 with the backbone level's mask and position
        for index, (source, level, pos) in enumerate(zip(memory[::-1], features[1:][::-1], positions[1:][::-1])):
            stage = self.num_stages - index
            adapter = getattr(self, f"adapter_{stage}")
            block = getattr(self, f"cross_attn_{stage}")
            n, _, h, w = pos.shape
            b = n // t
            visual = rearrange(adapter(source), "(b t) c h w -> (t h w) b c", b=b, t=t)
            visual_pos = rearrange(pos, "(b t) c h w -> (t h w) b c", b=b, t=t)
            visual_mask = rearrange(level.mask, "(b t) h w -> b (t h w)", b=b, t=t)
            fused = block(visual, text, t, h, w, visual_mask, text_mask, text_pos, visual_pos)
            y = self._merge(getattr(self, f"layer_{stage}"), fused, y, t, h, w)
        # finest stage (stride 4): the res2 feature, whose self-attention does not depend on the words
        _, _, h, w = positions[0].shape
        if finest_visual is None:
            finest_visual = self.forward_visual(features, positions, t)
        visual_pos = rearrange(positions[0], "(b t) c h w -> (t h w) b c", t=t)
        fused = self.cross_attn_1.attend_text(finest_visual, text, text_mask, text_pos, visual_pos)
        y = self._merge(self.layer_1, fused, y, t, h, w)
        return self.mask_features(y)

    @staticmethod
    def _merge(layer: nn.Module, fused: Tensor, coarser: Tensor | None, t: int, h: int, w: int) -> Tensor:
        """``layer(fused + nearest-upsampled coarser output)``: ``[T*H*W, B, C]`` → ``[B*T, C, H, W]``."""
        fused = rearrange(fused, "(t h w) b c -> (b t) c h w", t=t, h=h, w=w)
        if coarser is None:
            return layer(fused)
        return layer(fused + F.interpolate(coarser, size=fused.shape[-2:], mode="nearest"))
