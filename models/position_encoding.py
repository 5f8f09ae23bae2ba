"""Sine position encodings: 2-D for frames (per feature level) and 1-D for words.

Both follow the original exactly, including its asymmetry: the 2-D encoding subtracts 0.5 from
the cumulative count (pixel centres) but divides by the *unshifted* last count, while the 1-D
text encoding has no 0.5 offset at all.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from util.nested_tensor import NestedTensor

TEMPERATURE = 10000
NORMALIZE_EPS = 1e-6


def _interleave_sin_cos(positions: Tensor, num_pos_feats: int) -> Tensor:
    """``[..., 1]`` positions → ``[..., num_pos_feats]`` as ``sin, cos, sin, cos, …`` of scaled positions."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=positions.device)
    dim_t = TEMPERATURE ** (2 * (dim_t // 2) / num_pos_feats)
    scaled = positions / dim_t  # [..., num_pos_feats]
    return torch.stack((scaled[..., 0::2].sin(), scaled[..., 1::2].cos()), dim=-1).flatten(-2)


class PositionEmbeddingSine(nn.Module):
    """2-D sine encoding of a padded feature map.

    Input: a NestedTensor whose mask is ``[N, H, W]`` (True = padding). Output ``[N, 2*num_pos_feats, H, W]``:
    the y channels, then the x channels, positions normalised to ``(0, 2π]`` over the unpadded extent.
    """

    def __init__(self, num_pos_feats: int = 128, normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.normalize = normalize
        self.scale = scale

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        not_mask = ~tensor_list.mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)  # [N, H, W]
        x_embed = not_mask.cumsum(2, dtype=torch.float32)  # [N, H, W]
        if self.normalize:
            y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + NORMALIZE_EPS) * self.scale
            x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + NORMALIZE_EPS) * self.scale
        pos_y = _interleave_sin_cos(y_embed[..., None], self.num_pos_feats)  # [N, H, W, F]
        pos_x = _interleave_sin_cos(x_embed[..., None], self.num_pos_feats)  # [N, H, W, F]
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [N, 2F, H, W]


class PositionEmbeddingSine1D(nn.Module):
    """1-D sine encoding of padded word sequences.

    Input: a NestedTensor with mask ``[B, S]`` (True = padding). Output ``[B, num_pos_feats, S]``.
    """

    def __init__(self, num_pos_feats: int = 256, normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.normalize = normalize
        self.scale = scale

    def forward(self, tensor_list: NestedTensor) -> Tensor:
        not_mask = ~tensor_list.mask
        x_embed = not_mask.cumsum(1, dtype=torch.float32)  # [B, S]
        if self.normalize:
            x_embed = x_embed / (x_embed[:, -1:] + NORMALIZE_EPS) * self.scale
        pos_x = _interleave_sin_cos(x_embed[..., None], self.num_pos_feats)  # [B, S, F]
        return pos_x.permute(0, 2, 1)  # [B, F, S]
