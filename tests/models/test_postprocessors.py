"""Postprocessors and video-inference helpers: hand-checked cases and parity with the original.

Golden data: ``postprocess_r50.pt`` (see ``tests/golden/README.md``). Tolerances follow
that README: scores ``atol=1e-6``; binary masks, RLEs and label maps exact, except pixels whose
probability lies within ``THRESHOLD_MARGIN`` of the 0.5 threshold (float rounding in a different
interpolation kernel could flip them), of which at most ``MAX_NEAR_THRESHOLD_FLIPS`` may differ.
"""
from __future__ import annotations

import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models.postprocessors import (
    A2D_MASK_THRESHOLD,
    DAVIS_BACKGROUND_SCORE,
    A2DSentencesPostProcess,
    PostProcess,
    PostProcessSegm,
    binarize_mask_logits,
    build_postprocessors,
    encode_rle,
    merge_object_probs,
    select_best_query,
    upsample_query_masks,
)
from tests.golden import load_case

SCORE_ATOL = 1e-6
PROB_ATOL = 1e-6
THRESHOLD_MARGIN = 1e-5
MAX_NEAR_THRESHOLD_FLIPS = 10

# pycocotools' decode trips a NumPy 2 DeprecationWarning inside its Cython code; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ---------------------------------------------------------------------------------------------
# helpers


def assert_binary_close(actual: Tensor, expected: Tensor, probs: Tensor, threshold: float, name: str) -> None:
    """Masks/label maps must match except where ``probs`` is within THRESHOLD_MARGIN of the threshold."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    differ = actual != expected
    near_threshold = (probs - threshold).abs() <= THRESHOLD_MARGIN
    assert differ.shape == near_threshold.shape
    far_flips = int((differ & ~near_threshold).sum())
    assert far_flips == 0, f"{name}: {far_flips} pixels differ that are not near the threshold"
    assert int(differ.sum()) <= MAX_NEAR_THRESHOLD_FLIPS, f"{name}: {int(differ.sum())} near-threshold flips"


def assert_rles_close(actual: list[dict], expected: list[dict], expected_masks: Tensor, probs: Tensor, name: str):
    """RLEs equal exactly when the masks are equal; otherwise decode and use the pixel allowance."""
    assert len(actual) == len(expected), name
    for i, (rle, rle_ref) in enumerate(zip(actual, expected)):
        assert isinstance(rle["counts"], str)
        assert list(rle["size"]) == list(rle_ref["size"]), f"{name}[{i}] size"
        decoded = torch.from_numpy(mask_util.decode(dict(rle, counts=rle["counts"].encode("ascii"))))
        decoded_ref = torch.from_numpy(mask_util.decode(dict(rle_ref, counts=rle_ref["counts"].encode("ascii"))))
        assert torch.equal(decoded_ref, expected_masks[i, 0]), "golden RLE and golden mask disagree"
        if torch.equal(decoded, decoded_ref):
            assert rle["counts"] == rle_ref["counts"], f"{name}[{i}]: same mask, different RLE"
        else:
            assert_binary_close(decoded, decoded_ref, probs[i, 0], 0.5, f"{name}[{i}] decoded")


def probs_at_original_size(mask_logits: Tensor, size: Tensor, orig_size: Tensor) -> Tensor:
    """The probabilities behind the evaluation masks: ``[M, h, w]`` logits → ``[M, 1, H, W]``.

    Computed in the same order as the postprocessor (×4 bilinear, sigmoid, crop, nearest) to tell
    which output pixels sit near the threshold.
    """
    up = F.interpolate(mask_logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0].sigmoid()
    h, w = size.tolist()
    return F.interpolate(up[:, None, :h, :w], size=tuple(orig_size.tolist()), mode="nearest")


def test_near_threshold_allowance_is_limited_to_near_threshold_pixels():
    expected = torch.tensor([1, 0, 1, 0], dtype=torch.uint8)
    probs = torch.tensor([0.9, 0.500004, 0.499996, 0.2])
    assert_binary_close(torch.tensor([1, 1, 0, 0], dtype=torch.uint8), expected, probs, 0.5, "near")
    with pytest.raises(AssertionError, match="not near the threshold"):
        assert_binary_close(torch.tensor([0, 0, 1, 0], dtype=torch.uint8), expected, probs, 0.5, "far")


@pytest.fixture(scope="module")
def case() -> dict:
    return load_case("postprocess_r50.pt")


@pytest.fixture(scope="module")
def outputs(case) -> dict:
    inputs = case["inputs"]
    return {key: inputs[key] for key in ("pred_logits", "pred_boxes", "pred_masks")}


# ---------------------------------------------------------------------------------------------
# parity with the original


@pytest.mark.parametrize("clip", [0, 1])
def test_a2d_matches_golden(case, outputs, clip):
    inputs = case["inputs"]
    expected = case["outputs"]["a2d"][clip]
    result = A2DSentencesPostProcess()(outputs, inputs["orig_sizes"], inputs["sizes"])[clip]
    torch.testing.assert_close(result["scores"], expected["scores"], atol=SCORE_ATOL, rtol=0)
    probs = probs_at_original_size(inputs["pred_masks"][clip, 0], inputs["sizes"][clip], inputs["orig_sizes"][clip])
    assert_binary_close(result["masks"], expected["masks"], probs, A2D_MASK_THRESHOLD, "a2d masks")
    assert_rles_close(result["rle_masks"], expected["rle_masks"], expected["masks"], probs, "a2d rle")


@pytest.mark.parametrize("clip", [0, 1])
def test_refcoco_matches_golden(case, outputs, clip):
    inputs = case["inputs"]
    expected = case["outputs"]["refcoco"][clip]
    threshold = float(inputs["threshold"])
    results = PostProcess()(outputs, inputs["orig_sizes"])
    results = PostProcessSegm(threshold)(results, outputs, inputs["orig_sizes"], inputs["sizes"])
    result = results[clip]
    torch.testing.assert_close(result["scores"], expected["scores"], atol=SCORE_ATOL, rtol=0)
    assert torch.equal(result["labels"], expected["labels"])
    # Boxes are products of the same float32 values; allow float32 rounding at pixel scale.
    torch.testing.assert_close(result["boxes"], expected["boxes"], atol=1e-4, rtol=1e-6)

    # Rebuild the probabilities in the golden top-k order to locate near-threshold pixels.
    num_classes = inputs["pred_logits"].shape[-1]
    flat_probs = inputs["pred_logits"][clip].sigmoid().reshape(-1)
    order = flat_probs.topk(len(expected["scores"])).indices // num_classes
    mask_logits = inputs["pred_masks"][clip].flatten(0, 1)[order]  # [T*Q, h, w]
    probs = probs_at_original_size(mask_logits, inputs["sizes"][clip], inputs["orig_sizes"][clip])
    assert_binary_close(result["masks"], expected["masks"], probs, threshold, "refcoco masks")
    assert_rles_close(result["rle_masks"], expected["rle_masks"], expected["masks"], probs, "refcoco rle")


@pytest.mark.parametrize("clip", [0, 1])
def test_ytvos_inference_matches_golden(case, clip):
    inputs = case["inputs"]
    expected = case["outputs"]["ytvos"][clip]
    query_index, query_scores = select_best_query(inputs["pred_logits"][clip])
    assert query_index == expected["query_index"]
    torch.testing.assert_close(query_scores, expected["query_scores"], atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(inputs["pred_logits"][clip][:, query_index], expected["logits_chosen"], atol=0, rtol=0)
    torch.testing.assert_close(inputs["pred_boxes"][clip][:, query_index], expected["boxes_chosen"], atol=0, rtol=0)

    logits = upsample_query_masks(inputs["pred_masks"][clip], query_index, inputs["orig_sizes"][clip].tolist())
    torch.testing.assert_close(logits.sigmoid(), expected["probs"], atol=PROB_ATOL, rtol=0)
    masks = binarize_mask_logits(logits, float(inputs["threshold"])).to(torch.uint8)
    assert_binary_close(masks, expected["masks"], expected["probs"], float(inputs["threshold"]), "ytvos masks")


def test_davis_merge_matches_golden(case):
    inputs = case["inputs"]
    expected = case["outputs"]["davis"]
    orig_size = inputs["orig_sizes"][0].tolist()
    object_probs = []
    for logits, masks in zip(inputs["pred_logits"], inputs["pred_masks"]):
        query_index, _ = select_best_query(logits)
        object_probs.append(upsample_query_masks(masks, query_index, orig_size).sigmoid())
    object_probs = torch.stack(object_probs)  # [n_obj, T, H, W]
    torch.testing.assert_close(object_probs, expected["object_probs"], atol=PROB_ATOL, rtol=0)

    label_map = merge_object_probs(expected["object_probs"])
    assert torch.equal(label_map, expected["label_map"])
    # From our own probabilities: flips only where an object's probability is near the cut-off.
    near_cutoff_probs = expected["object_probs"].max(0).values
    assert_binary_close(merge_object_probs(object_probs), expected["label_map"], near_cutoff_probs, 0.5, "davis")


# ---------------------------------------------------------------------------------------------
# hand-checked cases


def test_upsample_query_masks_bilinear_by_hand():
    # 2x2 map f(y, x) = 2y + x upsampled to 4x4 with align_corners=False: source coordinates
    # (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 are clamped to [0, 1] → weights 0, .25, .75, 1.
    logit_map = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    pred_masks = torch.stack([torch.full((2, 2), -7.0), logit_map, torch.full((2, 2), 9.0)])[None]  # [1, 3, 2, 2]
    expected = torch.tensor(
        [
            [0.00, 0.25, 0.75, 1.00],
            [0.50, 0.75, 1.25, 1.50],
            [1.50, 1.75, 2.25, 2.50],
            [2.00, 2.25, 2.75, 3.00],
        ]
    )
    result = upsample_query_masks(pred_masks, query_index=1, orig_size=(4, 4))
    assert result.shape == (1, 4, 4)
    torch.testing.assert_close(result[0], expected, atol=1e-6, rtol=0)


def test_select_best_query_means_over_frames_before_max_over_classes():
    probs = torch.tensor(
        [  # [T=2, Q=3, K=2]
            [[0.2, 0.3], [0.9, 0.1], [0.7, 0.7]],
            [[0.2, 0.3], [0.1, 0.9], [0.7, 0.7]],
        ]
    )
    # Mean over T then max over K: q0 0.3, q1 0.5, q2 0.7 → 2. (Max over K first would pick q1: 0.9.)
    query_index, query_scores = select_best_query(torch.logit(probs))
    assert query_index == 2
    torch.testing.assert_close(query_scores, torch.tensor([0.3, 0.5, 0.7]), atol=1e-6, rtol=0)


def test_select_best_query_ties_take_the_first():
    query_index, _ = select_best_query(torch.tensor([[[1.0], [3.0], [3.0]]]))
    assert query_index == 1


def test_binarize_thresholds_the_probability_not_the_logit():
    logits = torch.tensor([-1.0, 1e-9, 1e-3, 2.0])
    # sigmoid(1e-9) rounds to exactly 0.5 in float32, so it is background although the logit is > 0.
    assert binarize_mask_logits(logits, 0.5).tolist() == [False, False, True, True]
    assert binarize_mask_logits(logits, 0.8).tolist() == [False, False, False, True]


def test_merge_object_probs_overlap_cutoff_and_background():
    object_probs = torch.tensor(
        [  # [n_obj=2, T=1, H=1, W=6]
            [[[0.9, 0.6, 0.4, 0.3, 0.55, 0.5]]],
            [[[0.7, 0.8, 0.45, 0.6, 0.55, 0.0]]],
        ]
    )
    original = object_probs.clone()
    label_map = merge_object_probs(object_probs)
    # overlap → most probable; both below the cut-off → background although 0.45 > 0.1;
    # a tie → the first object; exactly the cut-off counts as the object.
    assert label_map.dtype == torch.uint8
    assert label_map.tolist() == [[[1, 2, 0, 2, 1, 1]]]
    assert torch.equal(object_probs, original), "the input must not be modified"


def test_merge_object_probs_background_score_beats_zeroed_objects():
    assert DAVIS_BACKGROUND_SCORE > 0  # otherwise argmax would tie background with zeroed objects
    assert merge_object_probs(torch.zeros(3, 2, 2, 2)).eq(0).all()
    assert merge_object_probs(torch.zeros(0, 2, 3, 4)).shape == (2, 3, 4)


def test_a2d_hand_case_crop_resize_and_first_frame_only():
    # Frame 0, query 0: left column positive, right column negative. After ×4 bilinear to 8x8 the
    # columns are 5, 5, 3.75, 1.25, -1.25, -3.75, -5, -5 → foreground in columns 0..3.
    frame0 = torch.tensor([[5.0, -5.0], [5.0, -5.0]])
    frame1 = -frame0  # must be ignored
    pred_masks = torch.stack([frame0, frame1])[None, :, None]  # [B=1, T=2, Q=1, 2, 2]
    pred_logits = torch.tensor([0.0, 3.0])[None, :, None, None]  # [B=1, T=2, Q=1, K=1]
    sizes = torch.tensor([[6, 5]])  # crop rows 0..5, columns 0..4
    orig_sizes = torch.tensor([[12, 10]])  # nearest ×2
    (result,) = A2DSentencesPostProcess()({"pred_logits": pred_logits, "pred_masks": pred_masks}, orig_sizes, sizes)
    expected = torch.zeros(12, 10, dtype=torch.uint8)
    expected[:, :8] = 1
    assert result["masks"].shape == (1, 1, 12, 10)
    assert torch.equal(result["masks"][0, 0], expected)
    torch.testing.assert_close(result["scores"], torch.tensor([0.5]))
    decoded = mask_util.decode(dict(result["rle_masks"][0], counts=result["rle_masks"][0]["counts"].encode()))
    np.testing.assert_array_equal(decoded, expected.numpy())


def test_refcoco_top_k_boxes_labels_and_masks_follow_score_order():
    # B=1, T=1, Q=2, K=2: both classes of query 1 outscore query 0, so the top-2 are query 1 twice.
    pred_logits = torch.tensor([[[[-2.0, -1.0], [2.0, 1.0]]]])  # [1, 1, 2, 2]
    pred_boxes = torch.tensor([[[[0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.2, 0.4]]]])  # [1, 1, 2, 4]
    pred_masks = torch.stack([torch.full((2, 2), -4.0), torch.full((2, 2), 4.0)])[None, None]  # [1, 1, 2, 2, 2]
    outputs = {"pred_logits": pred_logits, "pred_boxes": pred_boxes, "pred_masks": pred_masks}
    orig_sizes = torch.tensor([[100, 200]])  # (H, W)
    results = PostProcess()(outputs, orig_sizes)
    results = PostProcessSegm(0.5)(results, outputs, orig_sizes, torch.tensor([[8, 8]]))
    (result,) = results
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([2.0, 1.0])))
    assert result["labels"].tolist() == [1, 1]
    expected_box = torch.tensor([80.0, 30.0, 120.0, 70.0])  # cxcywh (.5,.5,.2,.4) × (W, H, W, H)
    torch.testing.assert_close(result["boxes"], torch.stack([expected_box, expected_box]))
    assert result["masks"].shape == (2, 1, 100, 200)
    assert result["masks"].dtype == torch.uint8 and bool(result["masks"].eq(1).all())
    assert len(result["rle_masks"]) == 2


def test_postprocess_segm_uses_its_threshold():
    outputs = {
        "pred_logits": torch.zeros(1, 1, 1, 1),
        "pred_masks": torch.full((1, 1, 1, 1, 1), float(torch.logit(torch.tensor(0.6)))),
    }
    sizes = torch.tensor([[4, 4]])
    low = PostProcessSegm(0.5)([{}], outputs, sizes, sizes)[0]["masks"]
    high = PostProcessSegm(0.7)([{}], outputs, sizes, sizes)[0]["masks"]
    assert bool(low.eq(1).all()) and bool(high.eq(0).all())


def test_encode_rle_round_trip():
    masks = (torch.rand(3, 1, 7, 5) > 0.5).to(torch.uint8)
    for rle, mask in zip(encode_rle(masks), masks):
        assert isinstance(rle["counts"], str) and list(rle["size"]) == [7, 5]
        np.testing.assert_array_equal(mask_util.decode(dict(rle, counts=rle["counts"].encode())), mask[0].numpy())


def test_size_mismatch_is_reported():
    outputs = {"pred_logits": torch.zeros(2, 1, 1, 1), "pred_masks": torch.zeros(2, 1, 1, 2, 2)}
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        A2DSentencesPostProcess()(outputs, torch.ones(1, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long))


@pytest.mark.parametrize(
    ("dataset_file", "keys"),
    [
        ("a2d", {"segm"}),
        ("jhmdb", {"segm"}),
        ("refcoco", {"bbox", "segm"}),
        ("refcoco+", {"bbox", "segm"}),
        ("refcocog", {"bbox", "segm"}),
        ("all", {"bbox", "segm"}),
        ("ytvos", set()),
        ("davis", set()),
        ("joint", set()),
    ],
)
def test_build_postprocessors(dataset_file, keys):
    postprocessors = build_postprocessors(dataset_file, threshold=0.4)
    assert set(postprocessors) == keys
    if dataset_file in ("a2d", "jhmdb"):
        assert isinstance(postprocessors["segm"], A2DSentencesPostProcess)
    elif keys:
        assert isinstance(postprocessors["bbox"], PostProcess)
        assert isinstance(postprocessors["segm"], PostProcessSegm) and postprocessors["segm"].threshold == 0.4


def test_build_postprocessors_warns_that_a2d_ignores_threshold(caplog):
    with caplog.at_level(logging.WARNING, logger="models.postprocessors"):
        build_postprocessors("a2d", threshold=0.3)
    assert "ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="models.postprocessors"):
        build_postprocessors("a2d", threshold=A2D_MASK_THRESHOLD)
    assert caplog.text == ""


def test_build_postprocessors_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="'coco'"):
        build_postprocessors("coco", threshold=0.5)
