"""Video-level matcher: one query per clip is assigned to the referred object.

Each clip has a single target (the object the sentence refers to), present in the frames where
``valid`` is 1. Every query is scored over the whole clip and the cheapest one wins, so the same
query index stands for the object in every frame. There is nothing to solve (one target), so the
"Hungarian" matcher is an argmin of the summed costs.

Targets as the matcher and the criterion see them, a list of B dicts with at least:

* ``labels [T]`` int64 class index per frame (used only when K > 1),
* ``boxes [T, 4]`` normalised cxcywh, all zero in frames without the object,
* ``masks [T, H, W]`` bool/uint8 at the clip's (unpadded) input size,
* ``valid [T]`` 1 where the object is present, else 0.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from models.dynamic_mask_head import MASK_FEAT_STRIDE
from models.losses import focal_class_cost, pairwise_dice_coefficient, pairwise_sigmoid_focal_cost
from opts import MASK_OUT_STRIDES
from util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from util.nested_tensor import TRAIN_SIZE_DIVISIBILITY, nested_tensor_from_tensor_list

TARGET_KEYS = ("labels", "boxes", "masks", "valid")
OUTPUT_KEYS = ("pred_logits", "pred_boxes", "pred_masks")


def check_targets(outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> None:
    """Raise ``ValueError`` unless ``targets`` has one complete dict per clip of ``outputs`` with T frames each."""
    if "pred_logits" not in outputs:
        raise ValueError(f"outputs lack 'pred_logits' (have {sorted(outputs)})")
    logits = outputs["pred_logits"]
    if logits.ndim != 4:
        raise ValueError(f"pred_logits must be [B, T, Q, K], got shape {tuple(logits.shape)}")
    num_clips, num_frames = logits.shape[:2]
    if len(targets) != num_clips:
        raise ValueError(f"got {len(targets)} target dicts for a batch of {num_clips} clips; pass one dict per clip")
    for index, target in enumerate(targets):
        missing = [key for key in TARGET_KEYS if key not in target]
        if missing:
            raise ValueError(f"target {index} lacks {missing}; each target needs {list(TARGET_KEYS)}")
        lengths = {key: target[key].shape[0] if target[key].ndim else None for key in TARGET_KEYS}
        if any(length != num_frames for length in lengths.values()):
            raise ValueError(f"target {index} has frame counts {lengths}, but the outputs have T = {num_frames} "
                             "frames per clip; every target tensor must start with a T axis")
        if target["boxes"].shape[1:] != (4,) or target["masks"].ndim != 3:
            raise ValueError(f"target {index}: boxes must be [T, 4] and masks [T, H, W], got "
                             f"{tuple(target['boxes'].shape)} and {tuple(target['masks'].shape)}")


def target_sample_offset(stride: int) -> int:
    """The first input pixel sampled for the ground truth on the stride-``stride`` grid of ``pred_masks``.

    On the mask head's own grid (stride 4) the original samples pixel 4i + 2 for logit i. The
    criterion's ``aligned_bilinear`` upsampling by f = 4 / stride puts logit i on point f·i + f // 2
    of the finer grid, so that grid must start at 4i + 2 − stride·(f·i + f // 2) = 2 − stride·(f // 2)
    for every logit to stay on its pixel: 2 at stride 4, 0 at strides 2 and 1 (at stride 2 the cell
    centre, 1, would put every upsampled logit one pixel right of and below its own).
    """
    return MASK_FEAT_STRIDE // 2 - stride * (MASK_FEAT_STRIDE // stride // 2)


def sample_target_masks(targets: Sequence[Mapping[str, Tensor]], pred_mask_size: Sequence[int]) -> Tensor:
    """GT masks zero-padded like the input batch and point-sampled on the prediction grid → ``[B, T, h, w]``.

    The masks are padded at the bottom/right to the batch's common size rounded up to a multiple
    of 32 (the padded input size). The ``h × w = pred_mask_size`` grid of ``pred_masks`` divides it
    by a stride s (4: the mask head's own grid; 2 or 1: masks upsampled by the criterion's
    ``mask_out_stride``), and every s-th pixel is kept instead of resizing the mask, from the offset
    that puts each predicted logit on the pixel it stands for (``target_sample_offset``). Same dtype
    as the input masks.
    """
    padded, _ = nested_tensor_from_tensor_list([t["masks"] for t in targets], TRAIN_SIZE_DIVISIBILITY).decompose()
    padded_size = tuple(padded.shape[-2:])
    height, width = (int(side) for side in pred_mask_size)
    stride = padded_size[0] // height if height else 0
    if stride not in MASK_OUT_STRIDES or padded_size != (height * stride, width * stride):
        raise ValueError(f"GT masks padded to {padded_size} do not map onto the {(height, width)} grid of pred_masks "
                         f"at any stride in {MASK_OUT_STRIDES}; the input batch must be padded to a multiple of "
                         f"{TRAIN_SIZE_DIVISIBILITY} and the masks be at the input size")
    offset = target_sample_offset(stride)
    return padded[:, :, offset::stride, offset::stride]  # [B, T, Hp/s, Wp/s]


class HungarianMatcher(nn.Module):
    """Assigns each clip's referred object to the query with the lowest clip-level cost.

    Cost of query q (weights ``cost_*``):

    * class: focal class cost of ``sigmoid(pred_logits)`` at class 0 (K = 1) or ``labels[t]``,
      averaged over the valid frames only (a clip without valid frames gets 0 here; the
      original crashes, the datasets never produce one);
    * bbox / giou: L1 distance and −GIoU to the target box, averaged over **all** T frames
      (the zero box of an invalid frame included);
    * mask / dice: mean focal loss and −dice coefficient of the query's masks over all frames
      jointly (``T·h·w`` points) against the point-sampled GT masks.
    """

    def __init__(self, *, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0,
                 cost_mask: float = 1.0, cost_dice: float = 1.0, num_classes: int = 1):
        super().__init__()
        if all(weight == 0 for weight in (cost_class, cost_bbox, cost_giou, cost_mask, cost_dice)):
            raise ValueError("all matcher cost weights are 0; every query would tie")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_classes = num_classes

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor],
                targets: Sequence[Mapping[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """Match one layer's predictions.

        Args:
            outputs: ``pred_logits [B, T, Q, K]``, ``pred_boxes [B, T, Q, 4]`` (normalised cxcywh)
                and ``pred_masks [B, T, Q, h, w]`` (logits at stride 4 of the 32-padded input, or at
                the criterion's ``mask_out_stride``);
                other keys (``aux_outputs``) are ignored.
            targets: B dicts with ``labels [T]``, ``boxes [T, 4]``, ``masks [T, H, W]``, ``valid [T]``.

        Returns:
            Per clip ``(query_index, target_index)``, both int64 ``[1]`` on the CPU; the target
            index is always 0.
        """
        self.check_inputs(outputs, targets)
        num_clips, _, num_queries = outputs["pred_logits"].shape[:3]
        if num_queries == 1:  # nothing to choose (the costs would be computed for nothing)
            best_query = torch.zeros(num_clips, dtype=torch.int64)
        else:
            best_query = self._weighted_costs(outputs, targets).argmin(dim=1).cpu()  # [B, Q] -> [B]
        target_index = torch.zeros(1, dtype=torch.int64)
        return [(query.reshape(1), target_index.clone()) for query in best_query]

    def check_inputs(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> None:
        """Raise ``ValueError`` for outputs or targets the matcher cannot use (inputs as in ``forward``)."""
        missing = [key for key in OUTPUT_KEYS if key not in outputs]
        if missing:
            raise ValueError(f"the matcher needs {list(OUTPUT_KEYS)} in outputs; missing {missing}")
        check_targets(outputs, targets)
        num_classes = outputs["pred_logits"].shape[-1]
        if num_classes != self.num_classes:
            raise ValueError(f"pred_logits has K = {num_classes} classes, "
                             f"but the matcher was built for num_classes = {self.num_classes}")
        if num_classes > 1:
            for index, target in enumerate(targets):
                labels = target["labels"][target["valid"].bool()]
                if bool(((labels < 0) | (labels >= num_classes)).any()):
                    raise ValueError(f"target {index}: labels {target['labels'].tolist()} fall outside [0, {num_classes})")

    @torch.no_grad()
    def cost_matrix(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Tensor:
        """Weighted total cost of every query of every clip → ``[B, Q]`` (inputs as in ``forward``)."""
        self.check_inputs(outputs, targets)
        return self._weighted_costs(outputs, targets)

    def _weighted_costs(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> Tensor:
        logits = outputs["pred_logits"]  # [B, T, Q, K]
        pred_boxes = outputs["pred_boxes"]  # [B, T, Q, 4]
        pred_masks = outputs["pred_masks"]  # [B, T, Q, h, w]
        valid = torch.stack([t["valid"] for t in targets]).to(logits.device).bool()  # [B, T]
        labels = torch.stack([t["labels"] for t in targets]).to(logits.device)  # [B, T]
        gt_boxes = torch.stack([t["boxes"] for t in targets]).to(pred_boxes)  # [B, T, 4]
        gt_masks = sample_target_masks(targets, pred_masks.shape[-2:]).to(pred_masks)  # [B, T, h, w]

        # Class: the cost of the target's class in each valid frame, averaged over those frames.
        if self.num_classes == 1:
            frame_classes = torch.zeros_like(labels)  # the binary "referred" class, whatever the label
        else:
            frame_classes = torch.where(valid, labels, 0)  # labels of invalid frames are never used
        class_cost_all = focal_class_cost(logits.sigmoid())  # [B, T, Q, K]
        index = frame_classes[:, :, None, None].expand(*logits.shape[:3], 1)  # [B, T, Q, 1]
        class_cost_per_frame = class_cost_all.gather(-1, index).squeeze(-1)  # [B, T, Q]
        class_cost_per_frame = torch.where(valid[:, :, None], class_cost_per_frame, 0)
        num_valid = valid.sum(1, keepdim=True).clamp(min=1)  # [B, 1]
        class_cost = class_cost_per_frame.sum(1) / num_valid  # [B, Q]

        # Boxes: every frame counts, an invalid frame against its all-zero target box.
        bbox_cost = torch.cdist(pred_boxes, gt_boxes[:, :, None], p=1).squeeze(-1).mean(1)  # [B, T, Q] -> [B, Q]
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes[:, :, None]))
        giou_cost = -giou.squeeze(-1).mean(1)  # [B, T, Q, 1] -> [B, Q]

        # Masks: each query's T masks against the clip's T GT masks as one T·h·w-point mask.
        query_masks = pred_masks.transpose(1, 2).flatten(2)  # [B, Q, T*h*w]
        clip_gt_masks = gt_masks.flatten(1)[:, None]  # [B, 1, T*h*w]
        mask_cost = pairwise_sigmoid_focal_cost(query_masks, clip_gt_masks).squeeze(-1)  # [B, Q]
        dice_cost = -pairwise_dice_coefficient(query_masks, clip_gt_masks).squeeze(-1)  # [B, Q]

        return (self.cost_class * class_cost + self.cost_bbox * bbox_cost + self.cost_giou * giou_cost
                + self.cost_mask * mask_cost + self.cost_dice * dice_cost)
