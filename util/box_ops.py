"""Box conversions and IoU with ReferFormer's epsilons.

Boxes are ``(cx, cy, w, h)`` ("cxcywh") or ``(x0, y0, x1, y1)`` ("xyxy"), in whatever unit the
caller uses (normalised inside the model and losses). ``box_iou`` and ``generalized_box_iou``
add ``IOU_EPS`` to numerator and denominator, as the original does (DETR's versions do not),
so that two empty boxes have IoU 1 instead of NaN.

The pairwise functions take ``[..., N, 4]`` and ``[..., M, 4]`` with broadcastable leading axes
and return ``[..., N, M]``; with ``N = M = 1`` that is an element-wise IoU of paired boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Added to intersection/union and to the enclosing area, as in the original (not in DETR).
IOU_EPS = 1e-6


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` cxcywh → ``[..., 4]`` xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy → ``[..., 4]`` cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes ``[..., 4]`` → ``[...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes ``[..., N, 4]`` × ``[..., M, 4]`` → (iou, union), each ``[..., N, M]``."""
    area1 = box_area(boxes1)  # [..., N]
    area2 = box_area(boxes2)  # [..., M]
    top_left = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
    bottom_right = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [..., N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [..., N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [..., N, M]
    union = area1[..., :, None] + area2[..., None, :] - inter  # [..., N, M]
    iou = (inter + IOU_EPS) / (union + IOU_EPS)
    return iou, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU of xyxy boxes ``[..., N, 4]`` × ``[..., M, 4]`` → ``[..., N, M]``.

    Degenerate boxes (x1 < x0 or y1 < y0) would give meaningless values, so they are rejected
    (the original asserts); zero-size boxes are allowed.
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not bool((boxes[..., 2:] >= boxes[..., :2]).all()):
            raise ValueError(f"generalized_box_iou: {name} has a box with x1 < x0 or y1 < y0 (or NaN); "
                             "boxes must be xyxy, e.g. converted with box_cxcywh_to_xyxy")
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
    bottom_right = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [..., N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [..., N, M, 2]
    enclosing = wh[..., 0] * wh[..., 1]  # [..., N, M]
    return iou - ((enclosing - union) + IOU_EPS) / (enclosing + IOU_EPS)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight inclusive xyxy pixel boxes of ``[N, H, W]`` masks → float32 ``[N, 4]``; empty masks give zeros.

    Inclusive means a single pixel at ``(y, x)`` gives ``(x, y, x, y)`` (zero width and height),
    as the original datasets compute boxes.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes expects masks of shape [N, H, W], got {tuple(masks.shape)}")
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    if masks.numel() == 0:
        return boxes
    masks = masks.bool()
    height, width = masks.shape[-2:]
    rows = masks.any(dim=2)  # [N, H]
    cols = masks.any(dim=1)  # [N, W]
    ys = torch.arange(height, device=masks.device).expand_as(rows)  # [N, H]
    xs = torch.arange(width, device=masks.device).expand_as(cols)  # [N, W]
    x0 = torch.where(cols, xs, width).amin(dim=1)
    y0 = torch.where(rows, ys, height).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    nonempty = rows.any(dim=1)  # [N]
    boxes[nonempty] = torch.stack([x0, y0, x1, y1], dim=1)[nonempty].float()
    return boxes
