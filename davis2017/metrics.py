"""DAVIS-2017 per-frame measures and their per-object statistics.

Region similarity J is the intersection over union of a predicted and a ground-truth mask;
the boundary measure F is the F1 score of their 1-pixel boundaries, where a boundary pixel
counts as matched if the other boundary passes within a disk of radius ``bound_pix``
(``ceil(0.008 · sqrt(H² + W²))``, 8 pixels at 480p). Void pixels (label 255 of the ground
truth) are left out of both measures when a void map is given.

The numbers equal the official DAVIS-2017 toolkit's (``db_eval_iou``, ``db_eval_boundary``,
``db_statistics``); only the computation is organised differently: the boundaries and their
dilations are computed once per mask and frame, and every (prediction, ground-truth) pair
of a frame is then scored from pixel counts (``frame_scores``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008
"""Boundary matching distance as a fraction of the image diagonal (the toolkit's ``bound_th``)."""

RECALL_THRESHOLD = 0.5
"""A frame counts towards Recall when its score is strictly above this."""

DECAY_BINS = 4
"""Decay compares the first and the last of this many (overlapping) quarters of a video."""


def boundary_radius(height: int, width: int) -> int:
    """Boundary matching distance in pixels for an ``height × width`` frame.

    ``ceil(0.008 · sqrt(H² + W²))``; 8 for DAVIS' 480 × 854 frames.
    """
    return int(math.ceil(BOUNDARY_TOLERANCE * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """Disk structuring element: uint8 ``[2r+1, 2r+1]``, 1 where ``dx² + dy² ≤ r²``."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a binary mask (the toolkit's ``seg2bmap`` at the mask's own size).

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour. Pixels of the last row compare only with their right neighbour, pixels of the
    last column only with their lower neighbour, and the bottom-right pixel is never on the
    boundary; so a mask touching the right or bottom image border has no boundary along that
    border, while one touching the left or top border has.

    Args:
        mask: ``[H, W]``, nonzero = foreground.

    Returns:
        bool ``[H, W]``.
    """
    m = np.asarray(mask).astype(bool)
    boundary = np.zeros_like(m)
    inner = m[:-1, :-1]
    boundary[:-1, :-1] = (inner != m[:-1, 1:]) | (inner != m[1:, :-1]) | (inner != m[1:, 1:])
    boundary[-1, :-1] = m[-1, :-1] != m[-1, 1:]
    boundary[:-1, -1] = m[:-1, -1] != m[1:, -1]
    return boundary


def dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``boundary`` (bool ``[H, W]``) by ``disk(radius)``; outside the image counts as 0.

    Only the bounding box of the boundary grown by ``radius`` can change, so the dilation
    runs on that crop.
    """
    dilated = np.zeros_like(boundary, dtype=bool)
    rows = np.flatnonzero(boundary.any(axis=1))
    if rows.size == 0:
        return dilated
    cols = np.flatnonzero(boundary.any(axis=0))
    height, width = boundary.shape
    top, bottom = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, height)
    left, right = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, width)
    crop = boundary[top:bottom, left:right].astype(np.uint8)
    # cv2's default border for dilation is "-infinity", i.e. nothing outside the crop is set;
    # the crop keeps `radius` pixels around every boundary pixel, so it loses nothing.
    dilated[top:bottom, left:right] = cv2.dilate(crop, disk(radius)) > 0
    return dilated


def f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """F measure from boundary pixel counts.

    Args:
        n_pred, n_gt: boundary pixels of the prediction / ground truth.
        pred_matched: predicted boundary pixels within the dilated ground-truth boundary.
        gt_matched: ground-truth boundary pixels within the dilated predicted boundary.

    Precision = pred_matched / n_pred, recall = gt_matched / n_gt; with an empty boundary the
    toolkit's conventions apply: (none, some GT) → P 1, R 0; (some, no GT) → P 0, R 1;
    neither → P 1, R 1. F = 2PR / (P + R), 0 when P + R = 0.
    """
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = pred_matched / n_pred, gt_matched / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


class _Boundary:
    """Boundary of one mask: flat indices of its pixels and its flattened disk dilation."""

    def __init__(self, mask: np.ndarray, radius: int) -> None:
        boundary = boundary_map(mask)
        self.pixels = np.flatnonzero(boundary)
        self.dilated = dilate(boundary, radius).ravel()


def _without_void(pred_masks: np.ndarray, gt_masks: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``[Np, H, W]`` and ``[Ng, H, W]`` as bool with the void pixels cleared; raises if the sizes differ."""
    pred_masks = np.asarray(pred_masks).astype(bool)
    gt_masks = np.asarray(gt_masks).astype(bool)
    if pred_masks.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"prediction masks {pred_masks.shape[1:]} and ground truth {gt_masks.shape[1:]} differ in size"
        )
    if void is not None:
        valid = ~np.asarray(void, dtype=bool)
        pred_masks = pred_masks & valid
        gt_masks = gt_masks & valid
    return pred_masks, gt_masks


def _jaccard_matrix(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """J of every pair of bool masks ``[Np, H, W]`` × ``[Ng, H, W]`` → float64 ``[Np, Ng]``, 1 where the union is empty."""
    pred_flat = pred_masks.reshape(len(pred_masks), -1).astype(np.float64)  # [Np, H*W]
    gt_flat = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)  # [Ng, H*W]
    # 0/1 sums in float64 are exact integers.
    intersection = pred_flat @ gt_flat.T  # [Np, Ng]
    union = pred_flat.sum(1)[:, None] + gt_flat.sum(1)[None, :] - intersection  # [Np, Ng]
    j_scores = np.ones_like(intersection)  # 1 where the union is empty
    np.divide(intersection, union, out=j_scores, where=union > 0)
    return j_scores


def frame_scores(
    pred_masks: np.ndarray, gt_masks: np.ndarray, void: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (prediction, ground truth) pair of one frame.

    Args:
        pred_masks: ``[Np, H, W]`` binary predicted masks.
        gt_masks: ``[Ng, H, W]`` binary ground-truth masks.
        void: ``[H, W]`` bool, pixels left out of both measures; None = no void.

    Returns:
        ``(J, F)``, each float64 ``[Np, Ng]``. J = |P∧G∧¬void| / |(P∨G)∧¬void|, 1 when the
        union is empty; F as in ``f_from_counts`` on the boundaries of ``P∧¬void`` and
        ``G∧¬void`` matched within ``boundary_radius(H, W)``.
    """
    pred_masks, gt_masks = _without_void(pred_masks, gt_masks, void)
    height, width = gt_masks.shape[1:]
    j_scores = _jaccard_matrix(pred_masks, gt_masks)

    radius = boundary_radius(height, width)
    pred_boundaries = [_Boundary(m, radius) for m in pred_masks]
    gt_boundaries = [_Boundary(m, radius) for m in gt_masks]
    f_scores = np.zeros_like(j_scores)
    for p, pb in enumerate(pred_boundaries):
        for g, gb in enumerate(gt_boundaries):
            pred_matched = int(np.count_nonzero(gb.dilated[pb.pixels]))
            gt_matched = int(np.count_nonzero(pb.dilated[gb.pixels]))
            f_scores[p, g] = f_from_counts(pb.pixels.size, gb.pixels.size, pred_matched, gt_matched)
    return j_scores, f_scores


def jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J of one predicted and one ground-truth mask (``[H, W]``); see ``frame_scores``."""
    return float(_jaccard_matrix(*_without_void(np.asarray(pred)[None], np.asarray(gt)[None], void))[0, 0])


def f_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """Boundary measure F of one predicted and one ground-truth mask (``[H, W]``); see ``frame_scores``."""
    return float(frame_scores(np.asarray(pred)[None], np.asarray(gt)[None], void)[1][0, 0])


def decay_bin_edges(num_frames: int) -> np.ndarray:
    """First-frame indices of the Decay bins plus the last frame, int ``[DECAY_BINS + 1]``.

    ``round(linspace(1, n, 5) + 1e-10) − 1`` (the 1e-10 rounds halves up), cast to uint8 as
    the toolkit does: beyond 256 frames the indices wrap around. The
    toolkit ran on NumPy 1.x, where adding 1 to these uint8 values later promotes to a wider
    integer; returning plain ints keeps that.
    """
    edges = np.round(np.linspace(1, num_frames, DECAY_BINS + 1) + 1e-10) - 1
    return edges.astype(np.uint8).astype(np.int64)


def mean_recall_decay(values: np.ndarray) -> tuple[float, float, float]:
    """Statistics of one object's per-frame scores (the toolkit's ``db_statistics``).

    Args:
        values: float ``[T]`` per-frame J or F.

    Returns:
        ``(mean, recall, decay)``: the mean ignoring NaN; the fraction of frames scoring
        strictly above ``RECALL_THRESHOLD``; the mean of the first Decay bin minus the mean of
        the last, bin i being ``values[e_i : e_{i+1} + 1]`` for the edges of
        ``decay_bin_edges`` (NaN when a bin is empty).
    """
    values = np.asarray(values, dtype=np.float64)
    edges = decay_bin_edges(len(values))
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[DECAY_BINS - 1] : edges[DECAY_BINS] + 1]
    return _nanmean(values), _nanmean(values > RECALL_THRESHOLD), _nanmean(first) - _nanmean(last)


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN (without a warning) when nothing is left."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan
