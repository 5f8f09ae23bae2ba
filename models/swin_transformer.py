"""Swin Transformer (2-D), applied frame by frame: ``swin_{t,s,b,l}_p4w7``.

The four variants differ only in the rows of :data:`SWIN_VARIANTS`. The building blocks
(window attention with a relative position bias, shifted-window mask, pre-norm block, patch
merging) are written once for windows of any number of axes and shared with Video Swin
(:mod:`models.video_swin_transformer`), which uses 3-D windows over (time, height, width).

Tokens travel channel-last, ``[B, *S, C]`` with ``S`` the spatial (or spatio-temporal) axes,
so one window partition serves both families. Numerics follow the original exactly:
zero padding of the normed tokens to window multiples (padded tokens are not masked),
``torch.roll`` for shifted windows with a −100 mask between regions, ``q * scale`` before
``q @ kᵀ``, and each stage output normed by its own LayerNorm ``norm{i}``.

State-dict names (prefix ``backbone.0.body.``): ``patch_embed.{proj,norm}``,
``layers.{s}.blocks.{b}.{norm1,attn.{relative_position_bias_table,relative_position_index,qkv,
proj},norm2,mlp.{fc1,fc2}}``, ``layers.{s}.downsample.{norm,reduction}`` (s = 0..2) and
``norm0..norm3``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from models.backbone import BackboneBody

PATCH_SIZE = 4
WINDOW_SIZE = 7
MLP_RATIO = 4.0
NUM_STAGES = 4
# Logit added between tokens of different regions inside a shifted window (exp(-100) ≈ 0).
SHIFT_MASK_VALUE = -100.0
# Every Linear weight and bias table starts as a truncated normal with this std.
INIT_STD = 0.02


@dataclass(frozen=True)
class SwinVariant:
    """What differs between the Swin sizes; channels of stage i are ``embed_dim * 2**i``."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    drop_path_rate: float

    @property
    def num_channels(self) -> list[int]:
        return [self.embed_dim * 2**stage for stage in range(NUM_STAGES)]


SWIN_VARIANTS: dict[str, SwinVariant] = {
    "swin_t_p4w7": SwinVariant(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "swin_s_p4w7": SwinVariant(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "swin_b_p4w7": SwinVariant(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.3),
    "swin_l_p4w7": SwinVariant(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), drop_path_rate=0.3),
}
SWIN_STRIDES = [4, 8, 16, 32]


# ----------------------------------------------------------------------------- windows
def window_partition(x: Tensor, window: tuple[int, ...]) -> Tensor:
    """``[B, *S, C]`` (every S divisible by its window) → windows ``[B*nW, N, C]``, N = prod(window)."""
    batch, *sizes, channels = x.shape
    split = [d for size, w in zip(sizes, window) for d in (size // w, w)]
    x = x.view(batch, *split, channels)  # [B, S0/w0, w0, S1/w1, w1, ..., C]
    n = len(window)
    order = [0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1]
    return x.permute(order).contiguous().view(-1, math.prod(window), channels)  # [B*nW, N, C]


def window_reverse(windows: Tensor, window: tuple[int, ...], batch: int, sizes: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B*nW, N, C]`` → ``[B, *S, C]``."""
    n = len(window)
    counts = [size // w for size, w in zip(sizes, window)]
    x = windows.view(batch, *counts, *window, -1)  # [B, S0/w0, S1/w1, ..., w0, w1, ..., C]
    order = [0, *(d for axis in range(n) for d in (1 + axis, 1 + n + axis)), 2 * n + 1]
    return x.permute(order).contiguous().view(batch, *sizes, -1)  # [B, *S, C]


def shifted_window_mask(
    padded_sizes: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
) -> Tensor:
    """Additive attention mask ``[nW, N, N]`` for windows shifted by ``-shift`` (0 or −100).

    Regions are labelled with the original's slices ``[0:-w)``, ``[-w:-s)``, ``[-s:)`` per axis. For
    an axis with shift 0 the last slice is ``[0:)`` and relabels the whole axis, so that axis adds
    no region boundary (as in the original).
    """
    labels = torch.zeros((1, *padded_sizes, 1), device=device)
    per_axis = [(slice(0, -w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
    for count, region in enumerate(itertools.product(*per_axis)):
        labels[(slice(None), *region, slice(None))] = count
    label_windows = window_partition(labels, window).squeeze(-1)  # [nW, N]
    mask = label_windows.unsqueeze(1) - label_windows.unsqueeze(2)  # [nW, N, N]
    return mask.masked_fill(mask != 0, SHIFT_MASK_VALUE).masked_fill(mask == 0, 0.0)


def relative_position_index(window: tuple[int, ...]) -> Tensor:
    """``[N, N]`` row of the bias table for each token pair of a window, N = prod(window).

    Row = Σ_axis (Δ_axis + w_axis − 1) · Π_{later axes} (2·w − 1); e.g. for 7×7 windows
    ``(Δy + 6)·13 + (Δx + 6)``.
    """
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # [n, N]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, n]
    index = torch.zeros(relative.shape[:2], dtype=torch.long)
    for axis, w in enumerate(window):
        later = math.prod(2 * v - 1 for v in window[axis + 1:])
        index += (relative[:, :, axis] + w - 1) * later
    return index


# ----------------------------------------------------------------------------- modules
class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    The bias table has ``Π(2·w − 1)`` rows × heads. When a window shrinks (Video Swin on small
    inputs) the index is sliced to ``[:N, :N]``, as in the original.
    """

    def __init__(self, dim: int, window: tuple[int, ...], num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in window), num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=INIT_STD)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Windows ``[B*nW, N, C]`` (+ additive mask ``[nW, N, N]``) → ``[B*nW, N, C]``."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B*nW, heads, N, C/heads]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)  # [B*nW, heads, N, N]
        index = self.relative_position_index[:tokens, :tokens].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(tokens, tokens, -1)  # [N, N, heads]
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(windows // num_windows, num_windows, self.num_heads, tokens, tokens)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(windows, tokens, channels)  # [B*nW, N, C]
        return self.proj(x)


class Mlp(nn.Module):
    """``fc1 → GELU (erf) → fc2`` with hidden width ``MLP_RATIO * dim``."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * MLP_RATIO))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(int(dim * MLP_RATIO), dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block on channel-last tokens ``[B, *S, C]``.

    The window and shift actually used are passed in by the stage (they may shrink on small
    inputs in Video Swin); the block's own ``window`` sizes only its bias table.
    """

    def __init__(self, dim: int, num_heads: int, window: tuple[int, ...], drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x: Tensor, window: tuple[int, ...], shift: tuple[int, ...], mask: Tensor | None) -> Tensor:
        """``[B, *S, C]`` → ``[B, *S, C]``; ``mask`` ``[nW, N, N]`` is used when any shift is non-zero."""
        batch, *sizes, channels = x.shape
        shortcut = x
        x = self.norm1(x)
        # Zero-pad the normed tokens at the end of every axis to a window multiple.
        pads = [(w - size % w) % w for size, w in zip(sizes, window)]
        x = F.pad(x, [0, 0, *(p for pad in reversed(pads) for p in (0, pad))])  # [B, *Sp, C]
        padded = tuple(x.shape[1:-1])
        axes = tuple(range(1, len(window) + 1))
        shifted = any(s > 0 for s in shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=axes)
        windows = self.attn(window_partition(x, window), mask if shifted else None)  # [B*nW, N, C]
        x = window_reverse(windows, window, batch, padded)  # [B, *Sp, C]
        if shifted:
            x = torch.roll(x, shifts=shift, dims=axes)
        if any(pads):
            x = x[(slice(None), *(slice(0, size) for size in sizes))].contiguous()  # [B, *S, C]
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2×2 spatial merge of channel-last tokens: ``[..., H, W, C]`` → ``[..., ⌈H/2⌉, ⌈W/2⌉, 2C]``.

    Odd sizes are zero-padded; the four sub-grids are concatenated in the order
    (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-3:-1]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat(
            [x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], dim=-1
        )  # [..., ⌈H/2⌉, ⌈W/2⌉, 4C]
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches: pad the end of each spatial axis to the patch size, ConvNd, LayerNorm.

    ``[B, 3, *S]`` → channel-last ``[B, *S/patch, C]``.
    """

    def __init__(self, patch: tuple[int, ...], embed_dim: int):
        super().__init__()
        self.patch = patch
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.proj = conv(3, embed_dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        sizes = x.shape[2:]
        pads = [(p - size % p) % p for size, p in zip(sizes, self.patch)]
        if any(pads):
            x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])
        x = self.proj(x)  # [B, C, *S/patch]
        grid = x.shape[2:]
        x = self.norm(x.flatten(2).transpose(1, 2))  # [B, L, C]
        return x.view(x.shape[0], *grid, -1)  # [B, *S/patch, C]


class SwinStage(nn.Module):
    """``depth`` blocks; even blocks use plain windows, odd blocks windows shifted by half a window.

    With ``shrink_windows`` (Video Swin), an axis whose size is ≤ its window uses a window of that
    size and no shift; otherwise inputs are padded up to whole windows (2-D Swin).
    """

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: tuple[int, ...], drop_path: list[float],
        shrink_windows: bool,
    ):
        super().__init__()
        self.window = window
        self.shift = tuple(w // 2 for w in window)
        self.shrink_windows = shrink_windows
        self.use_checkpoint = False
        self.blocks = nn.ModuleList(SwinBlock(dim, num_heads, window, drop_path[b]) for b in range(depth))

    def effective_window(self, sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(window, shift) used on a map of ``sizes``."""
        if not self.shrink_windows:
            return self.window, self.shift
        window = tuple(size if size <= w else w for size, w in zip(sizes, self.window))
        shift = tuple(0 if size <= w else s for size, w, s in zip(sizes, self.window, self.shift))
        return window, shift

    def forward(self, x: Tensor) -> Tensor:
        """``[B, *S, C]`` → ``[B, *S, C]``."""
        sizes = tuple(x.shape[1:-1])
        window, shift = self.effective_window(sizes)
        padded = tuple(math.ceil(size / w) * w for size, w in zip(sizes, window))
        mask = shifted_window_mask(padded, window, shift, x.device)  # [nW, N, N]
        no_shift = (0,) * len(window)
        for index, block in enumerate(self.blocks):
            block_shift = shift if index % 2 else no_shift
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, window, block_shift, mask, use_reentrant=False)
            else:
                x = block(x, window, block_shift, mask)
        return x


def init_swin_weights(module: nn.Module) -> None:
    """Truncated-normal Linear weights (zero biases), LayerNorm 1/0: the original's initialisation."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(depths: tuple[int, ...], max_rate: float) -> list[list[float]]:
    """Stochastic-depth rate of every block, linearly spaced from 0 to ``max_rate`` over all blocks."""
    rates = torch.linspace(0, max_rate, sum(depths)).tolist()
    starts = [sum(depths[:stage]) for stage in range(len(depths))]
    return [rates[start:start + depth] for start, depth in zip(starts, depths)]


class SwinTransformer(nn.Module):
    """2-D Swin applied to every frame: ``[N, 3, H, W]`` → four maps ``[N, C_i, H_i, W_i]`` at strides 4..32.

    ``H_0 = ⌈H/4⌉`` and ``H_{i+1} = ⌈H_i/2⌉`` (likewise W). Each stage output, before patch
    merging, is normed by ``norm{i}``.
    """

    def __init__(self, variant: SwinVariant):
        super().__init__()
        self.num_channels = variant.num_channels
        self.patch_embed = PatchEmbed((PATCH_SIZE, PATCH_SIZE), variant.embed_dim)
        self.layers = nn.ModuleList()
        for stage, (depth, heads, rates) in enumerate(
            zip(variant.depths, variant.num_heads, drop_path_rates(variant.depths, variant.drop_path_rate))
        ):
            layer = SwinStage(
                self.num_channels[stage], depth, heads, (WINDOW_SIZE, WINDOW_SIZE), rates, shrink_windows=False
            )
            if stage < NUM_STAGES - 1:
                # The merging after stage s is registered in it (checkpoint keys layers.{s}.downsample.*).
                layer.downsample = PatchMerging(self.num_channels[stage])
            self.layers.append(layer)
        for stage, channels in enumerate(self.num_channels):
            self.add_module(f"norm{stage}", nn.LayerNorm(channels))
        self.apply(init_swin_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (same outputs and gradients, less memory)."""
        for layer in self.layers:
            layer.use_checkpoint = enable

    def forward(self, frames: Tensor) -> list[Tensor]:
        x = self.patch_embed(frames)  # [N, H/4, W/4, C]
        features = []
        for stage, layer in enumerate(self.layers):
            x = layer(x)  # [N, H_i, W_i, C_i]
            norm = getattr(self, f"norm{stage}")
            features.append(norm(x).permute(0, 3, 1, 2).contiguous())  # [N, C_i, H_i, W_i]
            if stage < NUM_STAGES - 1:
                x = layer.downsample(x)  # [N, ⌈H_i/2⌉, ⌈W_i/2⌉, 2C_i]
        return features


def build_swin(
    name: str,
    *,
    train_backbone: bool,
    dilation: bool = False,
    pretrained_path: str | None = None,
    use_checkpoint: bool = False,
) -> BackboneBody:
    """``swin_*_p4w7``: the variant's Swin, ImageNet weights from ``pretrained_path`` if given.

    With ``train_backbone`` False every Swin parameter is frozen.
    """
    from models.backbone import BackboneBody  # models.backbone imports this module for its registry

    if dilation:
        raise ValueError(f"--dilation applies to ResNet backbones only, not {name}")
    body = SwinTransformer(SWIN_VARIANTS[name])
    if pretrained_path:
        from util.checkpoint import load_swin_imagenet_weights

        load_swin_imagenet_weights(body, pretrained_path, backbone=name)
    body.set_grad_checkpointing(use_checkpoint)
    body.requires_grad_(train_backbone)
    return BackboneBody(body, strides=list(SWIN_STRIDES), num_channels=body.num_channels)
