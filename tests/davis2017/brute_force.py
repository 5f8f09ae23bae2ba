"""Straightforward per-pixel J and F, written from the definitions and independent of `davis2017`.

Slow pure-Python loops; meant for masks of a few thousand pixels.
"""
from __future__ import annotations

import math

import numpy as np


def brute_jaccard(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    inter = union = 0
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            if void is not None and void[y, x]:
                continue
            p, g = bool(pred[y, x]), bool(gt[y, x])
            inter += p and g
            union += p or g
    return 1.0 if union == 0 else inter / union


def brute_boundary_pixels(mask: np.ndarray) -> list[tuple[int, int]]:
    """Pixels differing from the right, lower or lower-right neighbour; last row: right only;
    last column: lower only; bottom-right corner never."""
    h, w = mask.shape
    out = []
    for y in range(h):
        for x in range(w):
            if y == h - 1 and x == w - 1:
                continue
            if y == h - 1:
                neighbours = [(y, x + 1)]
            elif x == w - 1:
                neighbours = [(y + 1, x)]
            else:
                neighbours = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            if any(bool(mask[ny, nx]) != bool(mask[y, x]) for ny, nx in neighbours):
                out.append((y, x))
    return out


def brute_f_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    if void is not None:
        pred = pred.astype(bool) & ~void
        gt = gt.astype(bool) & ~void
    h, w = gt.shape
    radius = math.ceil(0.008 * math.sqrt(h * h + w * w))
    pb, gb = brute_boundary_pixels(pred), brute_boundary_pixels(gt)

    def matched(points, others):
        return sum(any((y - oy) ** 2 + (x - ox) ** 2 <= radius**2 for oy, ox in others) for y, x in points)

    if not pb and not gb:
        p, r = 1.0, 1.0
    elif not pb:
        p, r = 1.0, 0.0
    elif not gb:
        p, r = 0.0, 1.0
    else:
        p, r = matched(pb, gb) / len(pb), matched(gb, pb) / len(gb)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def random_blobs(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """bool mask: union of `count` random ellipses and rectangles, some touching the borders."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(count):
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        ry, rx = rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.35) * w
        if rng.random() < 0.5:
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask |= (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    return mask
