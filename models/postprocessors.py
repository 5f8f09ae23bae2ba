"""From model outputs to scored boxes and binary masks at the original image size.

Two families live here:

* Evaluation postprocessors (``nn.Module``), called by the evaluation loop with the original
  call signatures:

  - :class:`A2DSentencesPostProcess` (A2D-/JHMDB-Sentences): every query of the first frame is a
    prediction with a mask, thresholded at a hard-coded 0.5.
  - :class:`PostProcess` (RefCOCO/+/g boxes) and :class:`PostProcessSegm` (their masks): the top
    ``T*Q`` of all ``T*Q*K`` class scores, in score order.

* Video inference functions shared by ``inference_ytvos.py``, ``inference_davis.py`` and
  ``demo.py``: :func:`select_best_query` picks one query for the whole clip,
  :func:`upsample_query_masks` brings its mask logits straight to the original frame size,
  :func:`binarize_mask_logits` thresholds them, and :func:`merge_object_probs` turns per-object
  probabilities into a DAVIS label map.

Model outputs read here (see ``models/referformer.py``): ``pred_logits [B, T, Q, K]``,
``pred_boxes [B, T, Q, 4]`` (cxcywh, normalised to the unpadded input size) and
``pred_masks [B, T, Q, h, w]`` (mask logits at stride 4 of the *padded* input).
Sizes are ``(height, width)`` pairs: ``max_target_sizes`` are the unpadded model-input sizes
(``target["size"]``), ``orig_target_sizes`` the original image sizes (``target["orig_size"]``).

Masks follow the original's resizing exactly: bilinear (``align_corners=False``), then
``sigmoid > threshold``, and PyTorch's legacy ``mode="nearest"`` for binary masks.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.box_ops import box_cxcywh_to_xyxy

logger = logging.getLogger(__name__)

# pred_masks are predicted at stride 4 of the padded model input (mask_out_stride of the mask head).
MASK_OUT_STRIDE = 4
# The original A2D/JHMDB postprocessor ignores --threshold and always cuts probabilities at 0.5
# kept for metric parity.
A2D_MASK_THRESHOLD = 0.5
# Referring datasets have one foreground category; every prediction is reported with this label
# (A2D `category_id` and RefCOCO `labels`), whatever class index scored it.
REFERRED_OBJECT_LABEL = 1
# DAVIS merge of per-object probabilities (the original's): probabilities below the cut-off are zeroed,
# and a constant background plane with this score is prepended before the argmax, so a pixel is
# background unless some object reaches the cut-off.
DAVIS_OBJECT_CUTOFF = 0.5
DAVIS_BACKGROUND_SCORE = 0.1
# Label maps are uint8 PNGs: label 0 is background, objects are 1..n_obj.
MAX_DAVIS_OBJECTS = int(np.iinfo(np.uint8).max)

VIDEO_DATASETS = ("ytvos", "davis", "ref_shapes", "joint", "mevis", "mevis_ytvos")
A2D_DATASETS = ("a2d", "jhmdb")
REFCOCO_DATASETS = ("refcoco", "refcoco+", "refcocog", "all")


def encode_rle(masks: Tensor) -> list[dict]:
    """COCO run-length encoding of binary masks.

    Args:
        masks: ``[N, 1, H, W]`` uint8 (or bool) masks.

    Returns:
        N dicts ``{"size": [H, W], "counts": str}`` (pycocotools RLE of the Fortran-ordered mask,
        ``counts`` decoded to an ASCII string so the result is JSON-serialisable).
    """
    rles = []
    for mask in masks.cpu():
        fortran_mask = np.asfortranarray(mask[0, :, :, None].numpy().astype(np.uint8))  # [H, W, 1]
        rle = mask_util.encode(fortran_mask)[0]
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
    return rles


def _upsample_to_padded_input(mask_logits: Tensor) -> Tensor:
    """Mask logits ``[N, M, h, w]`` at stride 4 → ``[N, M, 4h, 4w]`` at the padded input size."""
    height, width = mask_logits.shape[-2:]
    return F.interpolate(
        mask_logits, size=(height * MASK_OUT_STRIDE, width * MASK_OUT_STRIDE), mode="bilinear", align_corners=False
    )


def _crop_and_resize(binary_masks: Tensor, size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """Remove padding and resize to the original image size.

    Args:
        binary_masks: ``[M, Hp, Wp]`` bool masks at the padded input size.
        size: unpadded input size ``(h, w)``.
        orig_size: original image size ``(H, W)``.

    Returns:
        ``[M, 1, H, W]`` uint8 masks (0/1), resized with legacy nearest interpolation.
    """
    height, width = int(size[0]), int(size[1])
    unpadded = binary_masks[:, :height, :width].unsqueeze(1)  # [M, 1, h, w]
    resized = F.interpolate(unpadded.float(), size=(int(orig_size[0]), int(orig_size[1])), mode="nearest")
    return resized.to(torch.uint8)


def _check_sizes(outputs: dict, *sizes: Tensor) -> None:
    batch_size = outputs["pred_logits"].shape[0]
    for target_sizes in sizes:
        if target_sizes.shape != (batch_size, 2):
            raise ValueError(f"expected target sizes of shape ({batch_size}, 2), got {tuple(target_sizes.shape)}")


class A2DSentencesPostProcess(nn.Module):
    """A2D-/JHMDB-Sentences predictions: every query of the first (annotated) frame.

    The mask threshold is :data:`A2D_MASK_THRESHOLD` (0.5) and cannot be changed: the original
    ignores ``--threshold`` here, and the published A2D/JHMDB numbers depend on it.
    """

    @torch.no_grad()
    def forward(self, outputs: dict, orig_target_sizes: Tensor, max_target_sizes: Tensor) -> list[dict]:
        """
        Args:
            outputs: model outputs with ``pred_logits [B, T, Q, K]`` and ``pred_masks [B, T, Q, h, w]``;
                only frame 0 and class 0 are used.
            orig_target_sizes: ``[B, 2]`` original image sizes ``(H, W)``.
            max_target_sizes: ``[B, 2]`` unpadded model-input sizes ``(h, w)``.

        Returns:
            One dict per clip: ``scores [Q]`` (sigmoid of the class-0 logit), ``masks [Q, 1, H, W]``
            uint8 and ``rle_masks`` (Q COCO RLE dicts).
        """
        _check_sizes(outputs, orig_target_sizes, max_target_sizes)
        scores = outputs["pred_logits"][:, 0, :, 0].sigmoid()  # [B, Q]
        mask_logits = _upsample_to_padded_input(outputs["pred_masks"][:, 0])  # [B, Q, Hp, Wp]
        binary_masks = mask_logits.sigmoid() > A2D_MASK_THRESHOLD
        predictions = []
        for clip_scores, clip_masks, size, orig_size in zip(scores, binary_masks, max_target_sizes, orig_target_sizes):
            masks = _crop_and_resize(clip_masks, size, orig_size)  # [Q, 1, H, W]
            predictions.append({"scores": clip_scores, "masks": masks, "rle_masks": encode_rle(masks)})
        return predictions


def _top_scoring_queries(pred_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The ``T*Q`` best of all ``T*Q*K`` class scores of each clip, best first.

    Args:
        pred_logits: ``[B, T, Q, K]``.

    Returns:
        ``scores [B, T*Q]`` (sigmoid probabilities, descending) and ``query_indices [B, T*Q]``
        into the flattened ``T*Q`` (frame-major) query axis.
    """
    batch_size, num_frames, num_queries, num_classes = pred_logits.shape
    probs = pred_logits.sigmoid().reshape(batch_size, -1)  # [B, T*Q*K]
    scores, flat_indices = torch.topk(probs, k=num_frames * num_queries, dim=1)  # [B, T*Q]
    return scores, flat_indices // num_classes


class PostProcess(nn.Module):
    """RefCOCO/+/g boxes: the ``T*Q`` best-scoring (query, class) pairs, as xyxy pixel boxes."""

    @torch.no_grad()
    def forward(self, outputs: dict, orig_target_sizes: Tensor) -> list[dict]:
        """
        Args:
            outputs: ``pred_logits [B, T, Q, K]`` and ``pred_boxes [B, T, Q, 4]`` (normalised cxcywh).
            orig_target_sizes: ``[B, 2]`` original image sizes ``(H, W)``.

        Returns:
            One dict per clip with ``scores [T*Q]`` (descending), ``labels [T*Q]`` (all
            :data:`REFERRED_OBJECT_LABEL`) and ``boxes [T*Q, 4]`` (xyxy in original-image pixels).
        """
        _check_sizes(outputs, orig_target_sizes)
        scores, query_indices = _top_scoring_queries(outputs["pred_logits"])  # [B, T*Q] each
        batch_size = scores.shape[0]
        boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"].reshape(batch_size, -1, 4))  # [B, T*Q, 4]
        boxes = torch.gather(boxes, 1, query_indices.unsqueeze(-1).expand(-1, -1, 4))  # [B, T*Q, 4]
        heights, widths = orig_target_sizes.unbind(1)
        scale = torch.stack([widths, heights, widths, heights], dim=1)  # [B, 4]
        boxes = boxes * scale[:, None, :]
        labels = torch.full_like(query_indices, REFERRED_OBJECT_LABEL)
        return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]


class PostProcessSegm(nn.Module):
    """RefCOCO/+/g masks, in the same top-k order as :class:`PostProcess`.

    Args:
        threshold: probability above which a pixel is foreground (``--threshold``).
    """

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold

    @torch.no_grad()
    def forward(
        self, results: list[dict], outputs: dict, orig_target_sizes: Tensor, max_target_sizes: Tensor
    ) -> list[dict]:
        """
        Args:
            results: the list returned by :class:`PostProcess`; updated in place and returned.
            outputs: ``pred_logits [B, T, Q, K]`` and ``pred_masks [B, T, Q, h, w]``.
            orig_target_sizes: ``[B, 2]`` original image sizes ``(H, W)``.
            max_target_sizes: ``[B, 2]`` unpadded model-input sizes ``(h, w)``.

        Returns:
            ``results`` with ``masks [T*Q, 1, H, W]`` uint8 and ``rle_masks`` added to each dict.
        """
        _check_sizes(outputs, orig_target_sizes, max_target_sizes)
        if len(results) != len(orig_target_sizes):
            raise ValueError(f"got {len(results)} results for {len(orig_target_sizes)} clips")
        _, query_indices = _top_scoring_queries(outputs["pred_logits"])  # [B, T*Q]
        pred_masks = outputs["pred_masks"]
        batch_size, height, width = pred_masks.shape[0], pred_masks.shape[-2], pred_masks.shape[-1]
        pred_masks = pred_masks.reshape(batch_size, -1, height, width)  # [B, T*Q, h, w]
        index = query_indices[:, :, None, None].expand(-1, -1, height, width)
        mask_logits = _upsample_to_padded_input(torch.gather(pred_masks, 1, index))  # [B, T*Q, Hp, Wp]
        binary_masks = mask_logits.sigmoid() > self.threshold
        for result, clip_masks, size, orig_size in zip(results, binary_masks, max_target_sizes, orig_target_sizes):
            masks = _crop_and_resize(clip_masks, size, orig_size)  # [T*Q, 1, H, W]
            result["masks"] = masks
            result["rle_masks"] = encode_rle(masks)
        return results


def select_best_query(pred_logits: Tensor) -> tuple[int, Tensor]:
    """Choose the one query that describes the referred object in every frame of a clip.

    Args:
        pred_logits: ``[T, Q, K]`` class logits of one clip.

    Returns:
        ``(query_index, query_scores)``: the argmax over Q (first one on ties) of
        ``query_scores [Q]`` = sigmoid probabilities averaged over T, then maxed over K.
    """
    if pred_logits.dim() != 3:
        raise ValueError(f"pred_logits must be [T, Q, K], got shape {tuple(pred_logits.shape)}")
    query_scores = pred_logits.sigmoid().mean(0).max(-1).values  # [Q]
    return int(query_scores.argmax()), query_scores


def upsample_query_masks(pred_masks: Tensor, query_index: int, orig_size: Sequence[int]) -> Tensor:
    """Mask logits of one query, resized straight to the original frame size.

    There is no cropping of padding: video inference feeds unpadded frames.

    Args:
        pred_masks: ``[T, Q, h, w]`` mask logits of one clip (stride 4 of the input).
        query_index: the query to keep (from :func:`select_best_query`).
        orig_size: original frame size ``(H, W)``.

    Returns:
        ``[T, H, W]`` mask logits (bilinear, ``align_corners=False``).
    """
    if pred_masks.dim() != 4:
        raise ValueError(f"pred_masks must be [T, Q, h, w], got shape {tuple(pred_masks.shape)}")
    chosen = pred_masks[:, query_index].unsqueeze(0)  # [1, T, h, w]
    size = (int(orig_size[0]), int(orig_size[1]))
    return F.interpolate(chosen, size=size, mode="bilinear", align_corners=False)[0]  # [T, H, W]


def binarize_mask_logits(mask_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """``sigmoid(mask_logits) > threshold`` as a bool tensor of the same shape.

    Thresholds the probability, not the logit, as the original does: the two differ for logits
    so close to 0 that their float32 sigmoid rounds to exactly 0.5.
    """
    return mask_logits.sigmoid() > threshold


def merge_object_probs(object_probs: Tensor) -> Tensor:
    """Merge per-object mask probabilities of one video into a DAVIS label map.

    Probabilities below :data:`DAVIS_OBJECT_CUTOFF` are set to 0, a constant background plane of
    :data:`DAVIS_BACKGROUND_SCORE` is prepended and the argmax taken, so each pixel gets the most
    probable object that reaches the cut-off (the first one on ties), or background.

    Args:
        object_probs: ``[n_obj, T, H, W]`` sigmoid probabilities; object k becomes label k + 1.

    Returns:
        ``[T, H, W]`` uint8 label map (0 = background).
    """
    if object_probs.dim() != 4:
        raise ValueError(f"object_probs must be [n_obj, T, H, W], got shape {tuple(object_probs.shape)}")
    if object_probs.shape[0] > MAX_DAVIS_OBJECTS:
        raise ValueError(f"{object_probs.shape[0]} objects do not fit a uint8 label map (at most {MAX_DAVIS_OBJECTS})")
    kept = torch.where(object_probs < DAVIS_OBJECT_CUTOFF, torch.zeros_like(object_probs), object_probs)
    background = kept.new_full((1, *kept.shape[1:]), DAVIS_BACKGROUND_SCORE)  # [1, T, H, W]
    return torch.cat([background, kept], dim=0).argmax(0).to(torch.uint8)  # [T, H, W]


def build_postprocessors(dataset_file: str, threshold: float) -> dict[str, nn.Module]:
    """Evaluation postprocessors for ``--dataset_file``.

    * ``a2d`` / ``jhmdb`` → ``{"segm": A2DSentencesPostProcess()}`` (threshold fixed at 0.5);
    * ``refcoco``, ``refcoco+``, ``refcocog``, ``all`` → ``{"bbox": PostProcess(),
      "segm": PostProcessSegm(threshold)}``;
    * ``ytvos``, ``davis``, ``ref_shapes``, ``joint`` → ``{}``: these are never evaluated in the training loop;
      video inference uses :func:`select_best_query` and friends instead.

    The original returned the bare A2D module (not a dict) and built unused box/mask
    postprocessors for the video datasets.
    """
    if dataset_file in A2D_DATASETS:
        if threshold != A2D_MASK_THRESHOLD:
            logger.warning(
                "--threshold %s is ignored for %s: the A2D/JHMDB postprocessor always uses %s, as the original",
                threshold, dataset_file, A2D_MASK_THRESHOLD,
            )
        return {"segm": A2DSentencesPostProcess()}
    if dataset_file in REFCOCO_DATASETS:
        return {"bbox": PostProcess(), "segm": PostProcessSegm(threshold)}
    if dataset_file in VIDEO_DATASETS:
        return {}
    known = ", ".join(A2D_DATASETS + REFCOCO_DATASETS + VIDEO_DATASETS)
    raise ValueError(f"no postprocessors for dataset_file {dataset_file!r}; expected one of: {known}")
