"""Dynamic mask head: each query's controller output becomes a tiny per-query conv net.

For every query the controller predicts ``num_gen_params`` numbers that are split into the
weights and biases of ``controller_layers`` 1×1 convolutions (``in → D → D → 1`` with D =
``dynamic_mask_channels``). They run over the frame's mask features, to which two channels of
*relative coordinates* are appended: the query's reference centre minus each mask-feature
location, in absolute pixels of the unpadded input, as in the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Both strides are hard-coded to 4 in the original: mask features and predicted masks share stride 4.
MASK_FEAT_STRIDE = 4
MASK_OUT_STRIDE = 4


def compute_locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Centres of a stride-``stride`` grid in input pixels → ``[H*W, 2]`` (x, y), ``stride * j + stride // 2``."""
    shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + stride // 2


def aligned_bilinear(tensor: Tensor, factor: int) -> Tensor:
    """Upsample ``[N, C, H, W]`` by an integer ``factor`` keeping pixel centres aligned (identity for 1)."""
    if factor == 1:
        return tensor
    h, w = tensor.shape[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode="replicate")
    tensor = F.interpolate(tensor, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return tensor[:, :, : factor * h, : factor * w]


class DynamicMaskHead(nn.Module):
    """Parameter-free: applies the controller's per-query convolutions. ``num_gen_params`` sizes the controller."""

    def __init__(self, *, in_channels: int, dynamic_mask_channels: int = 8, num_layers: int = 3, rel_coord: bool = True):
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"the dynamic mask head needs at least 2 layers, got {num_layers}")
        self.dynamic_mask_channels = dynamic_mask_channels
        self.rel_coord = rel_coord
        first_in = in_channels + 2 if rel_coord else in_channels
        # weights of each layer (in_channels × out_channels), then biases, in this order
        self.weight_nums = [first_in * dynamic_mask_channels]
        self.weight_nums += [dynamic_mask_channels * dynamic_mask_channels] * (num_layers - 2)
        self.weight_nums += [dynamic_mask_channels * 1]
        self.bias_nums = [dynamic_mask_channels] * (num_layers - 1) + [1]
        self.num_gen_params = sum(self.weight_nums) + sum(self.bias_nums)

    def parse_dynamic_params(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``[I, num_gen_params]`` → per layer weights ``[I*out, in, 1, 1]`` and biases ``[I*out]``."""
        num_insts = params.shape[0]
        splits = torch.split_with_sizes(params, self.weight_nums + self.bias_nums, dim=1)
        num_layers = len(self.weight_nums)
        weights, biases = [], []
        for layer in range(num_layers):
            out_channels = self.dynamic_mask_channels if layer < num_layers - 1 else 1
            weights.append(splits[layer].reshape(num_insts * out_channels, -1, 1, 1))
            biases.append(splits[num_layers + layer].reshape(num_insts * out_channels))
        return weights, biases

    def forward(self, mask_features: Tensor, params: Tensor, reference_points: Tensor, sizes: Tensor) -> Tensor:
        """
        Args:
            mask_features: ``[B, T, C, h, w]`` at stride 4 of the padded input.
            params: controller output ``[B, T*Q, num_gen_params]``.
            reference_points: normalised query centres ``[B, T*Q, 2]`` (x, y).
            sizes: unpadded input size per clip ``[B, 2]`` (h, w).

        Returns:
            mask logits ``[B, T*Q, h, w]``.
        """
        b, t, c, h, w = mask_features.shape
        num_queries = reference_points.shape[1] // t
        channels = self.dynamic_mask_channels
        weights, biases = self.parse_dynamic_params(params.flatten(0, 1))  # instances ordered (b, t, q)
        # First layer as one matrix product per frame: the frame's Q queries share its mask features, so
        # they are multiplied by the stacked per-query weights without being copied Q times (the grouped
        # 1x1 conv over [features, coordinates] it replaces computes the same sums).
        first = weights[0].reshape(b, t, num_queries * channels, -1)  # [B, T, Q*D, C(+2)]
        x = torch.matmul(first[..., :c], mask_features.reshape(b, t, c, h * w))  # [B, T, Q*D, h*w]
        if self.rel_coord:
            scale = sizes.flip(-1).to(reference_points.dtype)  # [B, 2] (w, h)
            reference_pixels = reference_points * scale[:, None, :]  # [B, T*Q, 2] in input pixels
            locations = compute_locations(h, w, MASK_FEAT_STRIDE, mask_features.device)  # [h*w, 2]
            relative = reference_pixels.reshape(b, t, num_queries, 1, 2) - locations.reshape(1, 1, 1, h * w, 2)
            relative = relative.transpose(-1, -2).to(mask_features.dtype)  # [B, T, Q, 2, h*w]
            coordinate_weights = first[..., c:].reshape(b, t, num_queries, channels, 2)  # [B, T, Q, D, 2]
            x = x + torch.matmul(coordinate_weights, relative).reshape(b, t, num_queries * channels, h * w)
        x = F.relu(x + biases[0].reshape(b, t, num_queries * channels, 1))
        x = x.reshape(1, -1, h, w)  # [1, B*T*Q*D, h, w]
        num_insts = b * t * num_queries
        for layer, (weight, bias) in enumerate(zip(weights[1:], biases[1:]), start=1):
            x = F.conv2d(x, weight, bias=bias, stride=1, padding=0, groups=num_insts)
            if layer < len(weights) - 1:
                x = F.relu(x)
        logits = aligned_bilinear(x.reshape(-1, 1, h, w), MASK_FEAT_STRIDE // MASK_OUT_STRIDE)
        return logits.reshape(b, t * num_queries, logits.shape[-2], logits.shape[-1])
