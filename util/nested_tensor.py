"""Padded batches of frames and clips, with their padding masks.

A :class:`NestedTensor` pairs a zero-padded tensor with a boolean mask that is ``True`` on
padding. Video batches are ``[B, T, 3, H, W]`` with masks ``[B, T, H, W]``; after the
backbone flattens the clip axis they become ``[B*T, 3, H, W]`` / ``[B*T, H, W]``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# Training batches are padded to multiples of this (the coarsest backbone stride).
TRAIN_SIZE_DIVISIBILITY = 32


class NestedTensor:
    """A padded tensor and its padding mask (``True`` = padded)."""

    def __init__(self, tensors: Tensor, mask: Tensor | None):
        self.tensors = tensors
        self.mask = mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "NestedTensor":
        mask = self.mask.to(device, non_blocking=non_blocking) if self.mask is not None else None
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self) -> tuple[Tensor, Tensor | None]:
        return self.tensors, self.mask

    def __repr__(self) -> str:
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={None if self.mask is None else tuple(self.mask.shape)})"


def _padded_size(sizes: Sequence[Sequence[int]], size_divisibility: int) -> list[int]:
    """Element-wise max of ``sizes``, the last two entries rounded up to ``size_divisibility``."""
    max_size = [max(dims) for dims in zip(*sizes)]
    if size_divisibility > 1:
        for axis in (-2, -1):
            max_size[axis] = int(math.ceil(max_size[axis] / size_divisibility) * size_divisibility)
    return max_size


def nested_tensor_from_tensor_list(tensors: Sequence[Tensor], size_divisibility: int = 1) -> NestedTensor:
    """Pad ``[C, H, W]`` images at the bottom/right to a common size → ``[N, C, Hp, Wp]`` and ``[N, Hp, Wp]``."""
    if len(tensors) == 0:
        raise ValueError("nested_tensor_from_tensor_list needs at least one image")
    if any(t.ndim != 3 for t in tensors):
        raise ValueError(f"expected images of shape [C, H, W], got shapes {[tuple(t.shape) for t in tensors]}")
    c, hp, wp = _padded_size([t.shape for t in tensors], size_divisibility)
    batch = tensors[0].new_zeros((len(tensors), c, hp, wp))
    mask = torch.ones((len(tensors), hp, wp), dtype=torch.bool, device=tensors[0].device)
    for image, padded, m in zip(tensors, batch, mask):
        padded[: image.shape[0], : image.shape[1], : image.shape[2]].copy_(image)
        m[: image.shape[1], : image.shape[2]] = False
    return NestedTensor(batch, mask)


def nested_tensor_from_videos_list(videos: Sequence[Tensor], size_divisibility: int = 1) -> NestedTensor:
    """Pad ``[T, 3, H, W]`` clips at the bottom/right → ``[B, T, 3, Hp, Wp]`` and mask ``[B, T, Hp, Wp]``.

    Training collation uses ``size_divisibility=TRAIN_SIZE_DIVISIBILITY``; the inference scripts
    call the model with a plain list, which the original pads with divisibility 1.
    """
    if len(videos) == 0:
        raise ValueError("nested_tensor_from_videos_list needs at least one clip")
    if any(v.ndim != 4 for v in videos):
        raise ValueError(f"expected clips of shape [T, 3, H, W], got shapes {[tuple(v.shape) for v in videos]}")
    t, c, hp, wp = _padded_size([v.shape for v in videos], size_divisibility)
    batch = videos[0].new_zeros((len(videos), t, c, hp, wp))
    mask = torch.ones((len(videos), t, hp, wp), dtype=torch.bool, device=videos[0].device)
    for clip, padded, m in zip(videos, batch, mask):
        padded[: clip.shape[0], :, : clip.shape[2], : clip.shape[3]].copy_(clip)
        m[: clip.shape[0], : clip.shape[2], : clip.shape[3]] = False
    return NestedTensor(batch, mask)
