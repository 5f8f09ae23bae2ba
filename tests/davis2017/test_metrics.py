"""Per-frame J and F, boundary map, disk dilation and Mean/Recall/Decay against hand-derived values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from davis2017.metrics import (
    boundary_map,
    boundary_radius,
    decay_bin_edges,
    dilate,
    disk,
    f_measure,
    frame_scores,
    jaccard,
    mean_recall_decay,
)

from .brute_force import brute_boundary_pixels, brute_f_measure, brute_jaccard, random_blobs


def columns_mask(shape: tuple[int, int], first: int, last: int) -> np.ndarray:
    """Foreground in columns first..last (inclusive), all rows."""
    mask = np.zeros(shape, dtype=bool)
    mask[:, first : last + 1] = True
    return mask


# ---------------------------------------------------------------- building blocks


def test_boundary_radius():
    # 0.008 * sqrt(480² + 854²) = 7.84 → 8; 0.008 * sqrt(200)=0.11 → 1; 0.008 * 256.1 = 2.05 → 3
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(10, 10) == 1
    assert boundary_radius(160, 200) == 3


def test_disk_radius_2():
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ]
    )
    np.testing.assert_array_equal(disk(2), expected)
    # radius 3 includes (±2, ±2) (8 ≤ 9) but not (±3, ±1) (10 > 9)
    assert disk(3)[1, 1] == 1 and disk(3)[0, 2] == 0 and disk(3)[0, 3] == 1


def test_boundary_map_hand_checked():
    mask = np.array(
        [
            [0, 0, 0, 0],
            [0, 1, 1, 0],
            [0, 1, 1, 0],
            [0, 0, 0, 0],
        ]
    )
    # (0,0) differs from its lower-right neighbour, (0,1..2) from the one below, (1..2,0) from
    # the one to the right; (1,2), (2,1), (2,2) differ to the right and/or below; (1,1) has
    # foreground right, below and below-right → not boundary. Row 3 is the last row and
    # compares only to the right (all 0); column 3 is the last column and compares only below.
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(boundary_map(mask), expected.astype(bool))


def test_boundary_map_border_rule():
    # Mask filling the bottom-right corner: last row compares to the right only, last column
    # below only, corner never.
    mask = np.zeros((3, 3), dtype=bool)
    mask[1:, 1:] = True
    expected = np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(boundary_map(mask), expected)
    # A full mask has no boundary at all.
    assert not boundary_map(np.ones((4, 5))).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_map_matches_brute_force(seed):
    mask = random_blobs(np.random.default_rng(seed), (23, 31), 4)
    expected = np.zeros(mask.shape, dtype=bool)
    for y, x in brute_boundary_pixels(mask):
        expected[y, x] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilate_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    boundary = rng.random((19, 27)) < 0.03
    boundary[0, 5] = boundary[18, 26] = True  # reach the image borders
    expected = np.zeros_like(boundary)
    for y, x in zip(*np.nonzero(boundary)):
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dy * dy + dx * dx <= radius * radius and 0 <= y + dy < 19 and 0 <= x + dx < 27:
                    expected[y + dy, x + dx] = True
    np.testing.assert_array_equal(dilate(boundary, radius), expected)
    assert not dilate(np.zeros((5, 6), dtype=bool), radius).any()


# ---------------------------------------------------------------- J and F


def test_perfect_masks():
    mask = random_blobs(np.random.default_rng(5), (40, 50), 3)
    assert jaccard(mask, mask) == 1.0
    assert f_measure(mask, mask) == 1.0


def test_empty_pred_and_empty_gt():
    empty = np.zeros((12, 15), dtype=bool)
    assert jaccard(empty, empty) == 1.0
    assert f_measure(empty, empty) == 1.0


def test_empty_pred_nonempty_gt():
    empty = np.zeros((12, 15), dtype=bool)
    gt = columns_mask((12, 15), 3, 6)
    assert jaccard(empty, gt) == 0.0
    assert f_measure(empty, gt) == 0.0  # P = 1, R = 0
    assert jaccard(gt, empty) == 0.0
    assert f_measure(gt, empty) == 0.0  # P = 0, R = 1


@pytest.mark.parametrize(
    "pred_last, expected_j, expected_f",
    [
        # GT = columns 0..4 of a 10×10 frame (50 px): boundary = column 4 (10 px); radius 1.
        (5, 50 / 60, 1.0),  # boundary column 5 lies 1 px from column 4: all matched
        (6, 50 / 70, 0.0),  # column 6 is 2 px away: nothing matched, P = R = 0
        (4, 1.0, 1.0),
    ],
)
def test_shifted_masks_hand_derived(pred_last, expected_j, expected_f):
    gt = columns_mask((10, 10), 0, 4)
    pred = columns_mask((10, 10), 0, pred_last)
    assert jaccard(pred, gt) == pytest.approx(expected_j, abs=1e-12)
    assert f_measure(pred, gt) == pytest.approx(expected_f, abs=1e-12)


def test_partial_boundary_match_hand_derived():
    # 10×10, radius 1. GT: columns 0..4 → boundary (0..9, 4), 10 px.
    # Pred: GT plus the block rows 5..9 × columns 5..6 → boundary (0..4, 4) [right neighbour
    # background], (4, 5) and (4, 6) [lower neighbour foreground], (5..9, 6) = 12 px.
    # Pred boundary within 1 px of column 4: (0..4, 4) and (4, 5) = 6 → P = 6/12.
    # GT boundary within 1 px of the pred boundary: rows 0..4 and (5, 4) next to (4, 4) = 6 → R = 6/10.
    gt = columns_mask((10, 10), 0, 4)
    pred = gt.copy()
    pred[5:, 5:7] = True
    expected = brute_f_measure(pred, gt)
    p, r = 6 / 12, 6 / 10
    assert expected == pytest.approx(2 * p * r / (p + r), abs=1e-12)
    assert f_measure(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert jaccard(pred, gt) == pytest.approx(50 / 60, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (160, 200) if seed % 2 else (37, 53)  # radius 3 and 1
    pred, gt = random_blobs(rng, shape, 3), random_blobs(rng, shape, 3)
    void = random_blobs(rng, shape, 1) if seed >= 2 else None
    assert jaccard(pred, gt, void) == pytest.approx(brute_jaccard(pred, gt, void), abs=1e-12)
    assert f_measure(pred, gt, void) == pytest.approx(brute_f_measure(pred, gt, void), abs=1e-12)


def test_void_pixels_ignored():
    gt = columns_mask((10, 12), 2, 5)
    void = columns_mask((10, 12), 6, 8)
    pred = columns_mask((10, 12), 2, 8)  # GT plus the whole void band
    assert jaccard(pred, gt, void) == 1.0
    assert f_measure(pred, gt, void) == 1.0
    # Without void the extra band counts: J = 40 / 70.
    assert jaccard(pred, gt) == pytest.approx(40 / 70, abs=1e-12)
    # Void also removes GT pixels: prediction without the void part of the GT is perfect.
    gt_with_void_part = columns_mask((10, 12), 2, 7)
    assert jaccard(gt, gt_with_void_part, void) == 1.0


def test_frame_scores_all_pairs_equal_single_pairs():
    rng = np.random.default_rng(7)
    preds = np.stack([random_blobs(rng, (30, 40), 2) for _ in range(3)] + [np.zeros((30, 40), bool)])
    gts = np.stack([random_blobs(rng, (30, 40), 2) for _ in range(2)])
    void = random_blobs(rng, (30, 40), 1)
    j, f = frame_scores(preds, gts, void)
    assert j.shape == f.shape == (4, 2)
    for p in range(4):
        for g in range(2):
            assert j[p, g] == pytest.approx(brute_jaccard(preds[p], gts[g], void), abs=1e-12)
            assert f[p, g] == pytest.approx(brute_f_measure(preds[p], gts[g], void), abs=1e-12)


# ---------------------------------------------------------------- Mean / Recall / Decay


@pytest.mark.parametrize(
    "n, edges",
    [
        (1, [0, 0, 0, 0, 0]),
        (3, [0, 1, 1, 2, 2]),  # linspace 1, 1.5, 2, 2.5, 3 → halves round up → 1, 2, 2, 3, 3
        (5, [0, 1, 2, 3, 4]),
        (10, [0, 2, 5, 7, 9]),  # 1, 3.25, 5.5, 7.75, 10 → 1, 3, 6, 8, 10
        (104, [0, 26, 52, 77, 103]),  # 1, 26.75, 52.5, 78.25, 104 → 1, 27, 53, 78, 104
        (300, [0, 75, 150, 224, 43]),  # 299 wraps to 43 in uint8
    ],
)
def test_decay_bin_edges(n, edges):
    assert decay_bin_edges(n).tolist() == edges


def test_decay_small_n():
    v3 = np.array([0.9, 0.3, 0.6])
    # bins v[0:2], v[1:2], v[1:3], v[2:3]
    assert mean_recall_decay(v3)[2] == pytest.approx((0.9 + 0.3) / 2 - 0.6, abs=1e-12)
    v5 = np.array([1.0, 0.8, 0.6, 0.4, 0.2])
    # bins v[0:2], …, v[3:5]
    assert mean_recall_decay(v5)[2] == pytest.approx(0.9 - 0.3, abs=1e-12)
    v10 = np.arange(10) / 10.0
    # bins v[0:3] and v[7:10]
    assert mean_recall_decay(v10)[2] == pytest.approx(0.1 - 0.8, abs=1e-12)
    assert mean_recall_decay(np.array([0.7]))[2] == 0.0


def test_decay_uint8_wraparound():
    # 256 frames: last edge 255 still fits a uint8 and edge + 1 = 256 does not wrap (NumPy 1.x
    # promotion, which the toolkit ran on) → last bin v[191:256].
    values = np.linspace(1, 0, 256)
    assert mean_recall_decay(values)[2] == pytest.approx(values[:65].mean() - values[191:].mean(), abs=1e-12)
    # 257 frames: last edge 256 wraps to 0 → last bin empty → Decay NaN, as in the toolkit.
    assert math.isnan(mean_recall_decay(np.linspace(1, 0, 257))[2])


def test_mean_and_recall_threshold_is_strict():
    values = np.array([0.5, 0.6, 0.4, 0.5000001])
    mean, recall, _ = mean_recall_decay(values)
    assert mean == pytest.approx(2.0000001 / 4, abs=1e-12)
    assert recall == 0.5  # 0.5 itself does not count
