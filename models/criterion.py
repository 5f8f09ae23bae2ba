"""Training losses of ReferFormer: class focal loss, box L1 + GIoU, mask focal + dice.

For the final decoder layer and for each auxiliary layer, the matcher picks one query per clip
(the same for all frames); the losses then compare that query's predictions with the target in
every frame, and push all other (query, frame) pairs — and the matched query in frames without
the object — towards "no object".
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from models.dynamic_mask_head import MASK_FEAT_STRIDE, aligned_bilinear
from models.losses import FIXED_FOCAL_ALPHA, dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher, check_targets, sample_target_masks
from opts import MASK_OUT_STRIDES
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from util.dist import all_reduce_sum, get_world_size

Indices = list[tuple[Tensor, Tensor]]
# Loss groups and the keys they return: labels → loss_ce, boxes → loss_bbox/loss_giou, masks → loss_mask/loss_dice.
LOSS_GROUPS = ("labels", "boxes", "masks")


class SetCriterion(nn.Module):
    """Computes the unweighted losses of one batch; the caller sums ``weight_dict[k] · loss[k]``.

    Args:
        num_classes: K, the number of class logits per query.
        matcher: assigns one query per clip (run separately for every decoder layer).
        weight_dict: loss name → weight, kept for the caller (aux copies included).
        eos_coef: only fills the unused ``empty_weight`` buffer, as in the original.
        losses: which of ``"labels"``, ``"boxes"``, ``"masks"`` to compute.
        focal_alpha: α of the class focal loss (the mask focal loss always uses 0.25).
        mask_out_stride: stride of the grid on which the mask losses and costs compare masks: 4 (the
            original's) uses the predicted masks as they are; 2 or 1 upsamples them first with the
            original's aligned-bilinear routine (what its mask head does when its hard-coded
            ``mask_out_stride`` is changed), so that finer ground truth supervises them.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float], eos_coef: float,
                 losses: list[str], focal_alpha: float = 0.25, mask_out_stride: int = MASK_FEAT_STRIDE):
        super().__init__()
        if mask_out_stride not in MASK_OUT_STRIDES:
            raise ValueError(f"mask_out_stride must be one of {MASK_OUT_STRIDES}, got {mask_out_stride}")
        unknown = [name for name in losses if name not in LOSS_GROUPS]
        if unknown:
            raise ValueError(f"unknown losses {unknown}; choose among {list(LOSS_GROUPS)}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.focal_alpha = focal_alpha
        self.mask_out_stride = mask_out_stride
        # Kept for parity with the original module; no loss reads it (the class loss is a focal loss).
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(self, outputs: Mapping, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Losses of the final layer (``loss_ce``, ``loss_bbox``, …) and of each aux layer (suffix ``_0``, ``_1``, …).

        Args:
            outputs: ``pred_logits [B, T, Q, K]``, ``pred_boxes [B, T, Q, 4]`` (normalised cxcywh),
                ``pred_masks [B, T, Q, h, w]`` (stride 4 of the 32-padded input) and optionally
                ``aux_outputs``, a list of dicts with the same three keys (decoder layers 0..L-2).
            targets: B dicts with ``labels [T]``, ``boxes [T, 4]``, ``masks [T, H, W]``, ``valid [T]``.

        Returns:
            Scalar tensors, unweighted, keyed as in ``weight_dict``.
        """
        check_targets(outputs, targets)
        num_boxes = self.num_boxes(targets, outputs["pred_logits"].device)
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses = {}
        for suffix, layer_outputs in layers:
            layer_outputs = self.at_mask_out_stride(layer_outputs)
            indices = self.matcher(layer_outputs, targets)
            for name in self.losses:
                layer_losses = self.loss_functions[name](layer_outputs, targets, indices, num_boxes)
                losses.update({key + suffix: value for key, value in layer_losses.items()})
        return losses

    def at_mask_out_stride(self, outputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        """``outputs`` with ``pred_masks`` upsampled from stride 4 to ``mask_out_stride`` (unchanged at 4)."""
        factor = MASK_FEAT_STRIDE // self.mask_out_stride
        if factor == 1:
            return outputs
        masks = outputs["pred_masks"]  # [B, T, Q, h, w]
        *lead, height, width = masks.shape
        upsampled = aligned_bilinear(masks.reshape(-1, 1, height, width), factor)  # [B*T*Q, 1, fh, fw]
        return {**outputs, "pred_masks": upsampled.reshape(*lead, factor * height, factor * width)}

    @property
    def loss_functions(self) -> dict[str, Callable[..., dict[str, Tensor]]]:
        return {"labels": self.loss_labels, "boxes": self.loss_boxes, "masks": self.loss_masks}

    @staticmethod
    def num_boxes(targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
        """Valid (clip, frame) pairs summed over all processes, divided by the world size, at least 1."""
        num_valid = sum(int(t["valid"].sum()) for t in targets)
        total = all_reduce_sum(torch.as_tensor([num_valid], dtype=torch.float, device=device))
        return torch.clamp(total / get_world_size(), min=1).item()

    def loss_labels(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], indices: Indices,
                    num_boxes: float) -> dict[str, Tensor]:
        """``loss_ce``: focal loss of all T·Q class logits; positive only at the matched query in valid frames."""
        logits = outputs["pred_logits"]  # [B, T, Q, K]
        num_clips, num_frames, num_queries, num_classes = logits.shape
        target_onehot = torch.zeros_like(logits)  # [B, T, Q, K]
        for clip, (target, (query, _)) in enumerate(zip(targets, indices)):
            frames = target["valid"].nonzero().flatten().to(logits.device)  # [T_valid]
            classes = torch.zeros_like(frames) if self.num_classes == 1 else target["labels"].to(logits.device)[frames]
            target_onehot[clip, frames, query.to(logits.device), classes] = 1
        logits = logits.flatten(1, 2)  # [B, T*Q, K], frame-major
        target_onehot = target_onehot.flatten(1, 2)  # [B, T*Q, K]
        # sigmoid_focal_loss averages over the T·Q axis; × T·Q turns that back into a sum (original order).
        loss_ce = sigmoid_focal_loss(logits, target_onehot, num_boxes, alpha=self.focal_alpha) * logits.shape[1]
        return {"loss_ce": loss_ce}

    def loss_boxes(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], indices: Indices,
                   num_boxes: float) -> dict[str, Tensor]:
        """``loss_bbox`` (L1) and ``loss_giou`` (1 − GIoU) of the matched query's box in all T frames.

        Invalid frames are compared with their all-zero target box, as in the original.
        """
        clips, queries = self._matched_queries(indices, outputs["pred_boxes"].device)
        pred_boxes = outputs["pred_boxes"][clips, :, queries].flatten(0, 1)  # [B, T, 4] -> [B*T, 4]
        gt_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)  # [B*T, 4]
        loss_bbox = (pred_boxes - gt_boxes).abs()
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes)[:, None], box_cxcywh_to_xyxy(gt_boxes)[:, None])
        loss_giou = 1 - giou.flatten()  # [B*T, 1, 1] -> [B*T]
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def loss_masks(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], indices: Indices,
                   num_boxes: float) -> dict[str, Tensor]:
        """``loss_mask`` (focal, α fixed at 0.25) and ``loss_dice`` of the matched query's masks over all T·h·w points.

        The GT masks are point-sampled to the ``h × w`` prediction grid; padding counts as background.
        """
        pred_masks = outputs["pred_masks"]  # [B, T, Q, h, w]
        clips, queries = self._matched_queries(indices, pred_masks.device)
        pred_masks = pred_masks[clips, :, queries].flatten(1)  # [B, T, h, w] -> [B, T*h*w]
        gt_masks = sample_target_masks(targets, outputs["pred_masks"].shape[-2:]).to(pred_masks)  # [B, T, h, w]
        gt_masks = gt_masks.flatten(1)  # [B, T*h*w]
        return {
            "loss_mask": sigmoid_focal_loss(pred_masks, gt_masks, num_boxes, alpha=FIXED_FOCAL_ALPHA),
            "loss_dice": dice_loss(pred_masks, gt_masks, num_boxes),
        }

    @staticmethod
    def _matched_queries(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
        """(clip index ``[B]``, matched query ``[B]``) for advanced indexing of ``[B, T, Q, ...]`` outputs."""
        queries = torch.cat([query for query, _ in indices]).to(device)  # [B]
        clips = torch.arange(len(indices), device=device)  # [B]
        return clips, queries
