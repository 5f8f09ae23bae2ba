"""Deformable transformer as ReferFormer uses it (Deformable DETR, single stage, box refinement).

The encoder fuses the four flattened levels of every frame with multi-scale deformable
self-attention. The decoder runs ``Q`` object queries per frame: their content is the sentence
feature (the "language as queries" of the paper) and their position a learnt embedding shared by
all frames. Frames are independent here: they sit in the batch axis ``N = B*T``.

Shapes: ``N = B*T``, ``S = Σ_l H_l W_l`` flattened tokens over ``L`` levels, ``C = d_model``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dropout import Dropout, explicit_attention
from models.ms_deform_attn import MSDeformAttn

INVERSE_SIGMOID_EPS = 1e-5


def inverse_sigmoid(x: Tensor, eps: float = INVERSE_SIGMOID_EPS) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped to ``eps`` after clamping ``x`` to [0, 1]."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm: deformable self-attention, then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
        level_start_index: Tensor, padding_mask: Tensor,
    ) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)[0]
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))  # in place: the largest activation
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer: DeformableTransformerEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes: list[tuple[int, int]], valid_ratios: Tensor) -> Tensor:
        """Pixel centres of every level, normalised by that level's valid extent → ``[N, S, L, 2]`` (x, y)."""
        device = valid_ratios.device
        references = []
        for level, (height, width) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)  # [N, H*W]
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)  # [N, H*W]
            references.append(torch.stack((ref_x, ref_y), -1))  # [N, H*W, 2]
        reference_points = torch.cat(references, 1)  # [N, S, 2]
        return reference_points[:, :, None] * valid_ratios[:, None]  # [N, S, L, 2]

    def forward(
        self, src: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
        pos: Tensor, padding_mask: Tensor,
    ) -> Tensor:
        reference_points = self.get_reference_points(
            [tuple(hw) for hw in spatial_shapes.tolist()], valid_ratios
        )
        output = src
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output


class DeformableTransformerDecoderLayer(nn.Module):
    """Post-norm: query self-attention (within a frame), deformable cross-attention, ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        # Registration order (cross_attn first) is the original's; it fixes named_parameters() order.
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, reference_points: Tensor, src: Tensor, spatial_shapes: Tensor,
        level_start_index: Tensor, padding_mask: Tensor,
    ) -> Tensor:
        q = k = (tgt + query_pos).transpose(0, 1)  # [Q, N, C]
        attended = self.self_attn(q, k, tgt.transpose(0, 1), need_weights=explicit_attention(self.self_attn))[0]
        attended = attended.transpose(0, 1)  # [N, Q, C]
        tgt = self.norm2(tgt + self.dropout2(attended))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


class DeformableTransformerDecoder(nn.Module):
    """Stack of decoder layers with optional iterative box refinement.

    With refinement the model assigns its ``bbox_embed`` list here (the same modules, so their
    checkpoint keys appear twice: ``bbox_embed.*`` and ``transformer.decoder.bbox_embed.*``).
    """

    def __init__(self, decoder_layer: DeformableTransformerDecoderLayer, num_layers: int):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed: nn.ModuleList | None = None

    def forward(
        self, tgt: Tensor, reference_points: Tensor, src: Tensor, spatial_shapes: Tensor,
        level_start_index: Tensor, valid_ratios: Tensor, query_pos: Tensor, padding_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            tgt: query content ``[N, Q, C]``; query_pos ``[N, Q, C]``;
            reference_points: initial normalised points ``[N, Q, 2]`` (x, y);
            src: encoder memory ``[N, S, C]``; valid_ratios ``[N, L, 2]``; padding_mask ``[N, S]``.

        Returns:
            hs ``[num_layers, N, Q, C]`` (output of every layer) and the reference after every
            layer ``[num_layers, N, Q, 2 or 4]`` (boxes ``cxcywh`` once refinement has run).
        """
        output = tgt
        intermediate, intermediate_references = [], []
        for layer_index, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                reference_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                reference_input = reference_points[:, :, None] * valid_ratios[:, None]  # [N, Q, L, 2]
            output = layer(output, query_pos, reference_input, src, spatial_shapes, level_start_index, padding_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[layer_index](output)  # [N, Q, 4]
                if reference_points.shape[-1] == 4:
                    new_reference = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    # first layer: refine the centre, take width/height from the head alone
                    new_reference = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    ).sigmoid()
                reference_points = new_reference.detach()
            intermediate.append(output)
            intermediate_references.append(reference_points)
        return torch.stack(intermediate), torch.stack(intermediate_references)


class DeformableTransformer(nn.Module):
    """Encoder + decoder. Checkpoint keys: ``encoder``, ``decoder``, ``level_embed``, ``reference_points``."""

    def __init__(
        self,
        *,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        dec_n_points: int = 4,
        enc_n_points: int = 4,
    ):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        encoder_layer = DeformableTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points
        )
        self.decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module._reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def get_valid_ratio(mask: Tensor) -> Tensor:
        """``[N, H, W]`` padding mask → ``[N, 2]`` (valid width / W, valid height / H), read off the first row/column."""
        _, height, width = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / width, valid_h.float() / height], -1)

    def forward(
        self, srcs: list[Tensor], tgt: Tensor, masks: list[Tensor], pos_embeds: list[Tensor], query_embed: Tensor
    ) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """
        Args:
            srcs, masks, pos_embeds: per level ``[N, C, H_l, W_l]``, ``[N, H_l, W_l]``, ``[N, C, H_l, W_l]``.
            tgt: query content ``[B, T, Q, C]`` (the sentence feature repeated).
            query_embed: query positions ``[Q, C]``.

        Returns:
            hs ``[num_dec_layers, N, Q, C]``; memory_features: encoder memory of the first
            ``L - 1`` levels as ``[N, C, H_l, W_l]`` (strides 8, 16, 32); init_reference
            ``[N, Q, 2]``; inter_references ``[num_dec_layers, N, Q, 2 or 4]``.
        """
        spatial_shapes_list = [tuple(src.shape[-2:]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)  # [N, S, C]
        mask_flatten = torch.cat([mask.flatten(1) for mask in masks], 1)  # [N, S]
        lvl_pos_embed_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1) for level, pos in enumerate(pos_embeds)],
            1,
        )  # [N, S, C]
        spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=src_flatten.device)  # [L, 2]
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)  # [N, L, 2]

        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios, lvl_pos_embed_flatten, mask_flatten)

        batch, frames, num_queries, channels = tgt.shape
        tgt = tgt.reshape(batch * frames, num_queries, channels)  # [N, Q, C]
        query_pos = query_embed.unsqueeze(0).expand(batch * frames, -1, -1)  # [N, Q, C]
        init_reference = self.reference_points(query_pos).sigmoid()  # [N, Q, 2]
        hs, inter_references = self.decoder(
            tgt, init_reference, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flatten
        )

        memory_features = []
        start = 0
        for height, width in spatial_shapes_list[:-1]:
            level_memory = memory[:, start : start + height * width]  # [N, H*W, C]
            memory_features.append(level_memory.transpose(1, 2).reshape(-1, channels, height, width))
            start += height * width
        return hs, memory_features, init_reference, inter_references
