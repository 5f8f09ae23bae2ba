"""A2D/JHMDB and RefCOCO evaluators on hand-checked toy predictions.

Toy images are 16x16 and model inputs are unpadded 16x16 frames, so ``pred_masks`` are 4x4
logits (stride 4). Predicted masks are sets of whole rows of that grid (logit +10 on the rows, -10
elsewhere): along one axis the bilinear x4 upsampling followed by ``> 0.5`` turns each logit row
into exactly four pixel rows (the zero crossing falls between output pixels), so one grid row is
a 4x16 stripe of 64 pixels. (Cells would not do: bilinear upsampling rounds off their corners.)
"""
from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from datasets import ref_eval
from datasets.meta import DatasetFormatError
from datasets.ref_eval import A2DEvaluator, RefExpEvaluator, precision_and_iou, top_prediction_index

SIZE = 16  # image side
STRIPE = 4  # pixel rows per mask logit row (the mask stride)
GRID = SIZE // STRIPE
LOGIT = 10.0
# Floats below come from float32 scores and IoUs.
TOLERANCE = 1e-6


def rows_mask(rows) -> np.ndarray:
    """``[SIZE, SIZE]`` uint8 mask of the 4-pixel stripes of grid ``rows``."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for row in rows:
        mask[row * STRIPE:(row + 1) * STRIPE] = 1
    return mask


def rows_logits(rows) -> torch.Tensor:
    """``[GRID, GRID]`` mask logits, positive on grid ``rows``."""
    logits = torch.full((GRID, GRID), -LOGIT)
    logits[list(rows)] = LOGIT
    return logits


def rle(mask: np.ndarray) -> dict:
    encoded = mask_util.encode(np.asfortranarray(mask))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def write_gt(path, masks: dict) -> str:
    """A COCO ground truth with one RLE-mask annotation per image id."""
    images = [{"id": image_id, "height": SIZE, "width": SIZE} for image_id in masks]
    annotations = [{"id": k + 1, "image_id": image_id, "category_id": 1, "segmentation": rle(mask), "iscrowd": 0,
                    "area": float(mask.sum()), "bbox": [float(v) for v in mask_util.toBbox(rle(mask))]}
                   for k, (image_id, mask) in enumerate(masks.items())]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return str(path)


def a2d_batch(samples: dict) -> tuple[dict, list[dict]]:
    """Model outputs and targets of one batch: ``{image_id: [(score, rows) per query]}``."""
    scores = torch.tensor([[score for score, _ in queries] for queries in samples.values()])  # [B, Q]
    masks = torch.stack([torch.stack([rows_logits(rows) for _, rows in queries]) for queries in samples.values()])
    outputs = {
        "pred_logits": torch.logit(scores)[:, None, :, None],  # [B, T=1, Q, K=1]
        "pred_boxes": torch.full((*scores.shape, 4), 0.5)[:, None],  # [B, 1, Q, 4], unused
        "pred_masks": masks[:, None],  # [B, 1, Q, 4, 4]
    }
    targets = [{"image_id": image_id, "orig_size": torch.tensor([SIZE, SIZE]), "size": torch.tensor([SIZE, SIZE])}
               for image_id in samples]
    return outputs, targets


# ----------------------------------------------------------------------------- metric functions
def test_precision_and_iou_by_hand():
    # IoUs 1, 0.5 (exactly: not > 0.5) and 1/3; overall 112/176, mean 11/18
    metrics = precision_and_iou([64, 32, 16], [64, 64, 48])
    assert metrics["P@0.5"] == metrics["P@0.9"] == pytest.approx(1 / 3)
    assert metrics["overall_iou"] == pytest.approx(112 / 176)
    assert metrics["mean_iou"] == pytest.approx(11 / 18, abs=TOLERANCE)
    # float32 rounding as the original: 48/80 rounds up above 0.6, 56/80 rounds down below 0.7
    assert precision_and_iou([48, 56], [80, 80])["P@0.6"] == 1.0
    assert precision_and_iou([56], [80])["P@0.7"] == 0.0
    assert precision_and_iou([0], [0])["mean_iou"] == 1.0  # both empty: the eps makes it a match


def test_ties_go_to_the_later_query():
    assert top_prediction_index([0.5, 0.9, 0.9, 0.1]) == 2


# ----------------------------------------------------------------------------- A2D / JHMDB
TOY_GT = {"v_a_f_1_i_1": [0, 1], "v_b_f_1_i_1": [2, 3], "v_c_f_1_i_1": [0]}
# the top query of a matches (IoU 1); of b covers half its GT (64/128: IoU 0.5); of c covers its GT
# plus two more rows (64/192: IoU 1/3). The lower-scoring query of b is exact, which only the
# all-queries COCO protocol rewards.
TOY_PREDICTIONS = {"v_a_f_1_i_1": [(0.9, TOY_GT["v_a_f_1_i_1"]), (0.2, [3])],
                   "v_b_f_1_i_1": [(0.3, TOY_GT["v_b_f_1_i_1"]), (0.8, [2])],
                   "v_c_f_1_i_1": [(0.7, [0, 1, 2]), (0.6, [3])]}


@pytest.fixture()
def toy_gt(tmp_path):
    return write_gt(tmp_path / "gt.json", {image_id: rows_mask(rows) for image_id, rows in TOY_GT.items()})


def test_a2d_precision_and_iou_of_the_top_query(toy_gt):
    evaluator = A2DEvaluator(toy_gt)
    evaluator.process(*a2d_batch(TOY_PREDICTIONS))
    metrics = evaluator.evaluate()
    for k in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert metrics[f"P@{k}"] == pytest.approx(1 / 3)
    assert metrics["overall_iou"] == pytest.approx((128 + 64 + 64) / (128 + 128 + 192))
    assert metrics["mean_iou"] == pytest.approx((1 + 0.5 + 1 / 3) / 3, abs=TOLERANCE)
    assert metrics["overall_iou"] != pytest.approx(metrics["mean_iou"])
    assert set(metrics) >= {f"{p} {name}" for p in ("original", "top1") for name in ref_eval.COCO_AP_NAMES}


def test_perfect_predictions_have_map_one(toy_gt):
    evaluator = A2DEvaluator(toy_gt)
    evaluator.process(*a2d_batch({image_id: [(0.9, rows)] for image_id, rows in TOY_GT.items()}))
    metrics = evaluator.evaluate()
    for protocol in ("original", "top1"):
        assert metrics[f"{protocol} mAP 0.5:0.95"] == pytest.approx(1.0)
        assert metrics[f"{protocol} AP 0.5"] == pytest.approx(1.0)
        assert metrics[f"{protocol} AP 0.5:0.95 L"] == -1  # no large objects in 16x16 images
    assert metrics["P@0.9"] == 1.0 and metrics["mean_iou"] == pytest.approx(1.0)


def test_all_queries_protocol_rewards_a_right_query_the_model_did_not_choose(tmp_path):
    # A: the top query is wrong and the second right; B: the top query is right, the second wrong.
    gt = write_gt(tmp_path / "gt.json", {"A": rows_mask([0]), "B": rows_mask([3])})
    evaluator = A2DEvaluator(gt)
    evaluator.process(*a2d_batch({"A": [(0.9, [2]), (0.7, [0])], "B": [(0.8, [3]), (0.6, [1])]}))
    metrics = evaluator.evaluate()
    # all queries, by score: miss, hit, hit, miss → precision 2/3 at every recall (COCO's envelope)
    assert metrics["original mAP 0.5:0.95"] == pytest.approx(2 / 3, abs=1e-4)
    # top query only: miss, hit → precision 1/2 up to recall 1/2 (51 of COCO's 101 recall points)
    assert metrics["top1 mAP 0.5:0.95"] == pytest.approx(0.5 * 51 / 101, abs=1e-4)
    assert metrics["P@0.5"] == 0.5


def test_all_queries_protocol_counts_unchosen_queries_as_false_positives(tmp_path):
    # both top queries are right; A's second query is wrong but outscores B's right one
    gt = write_gt(tmp_path / "gt.json", {"A": rows_mask([0]), "B": rows_mask([3])})
    evaluator = A2DEvaluator(gt)
    evaluator.process(*a2d_batch({"A": [(0.9, [0]), (0.85, [2])], "B": [(0.8, [3]), (0.1, [1])]}))
    metrics = evaluator.evaluate()
    assert metrics["top1 mAP 0.5:0.95"] == pytest.approx(1.0)
    # hit, miss, hit, miss → precision 1 up to recall 1/2 (51 points), then 2/3 (50 points)
    assert metrics["original mAP 0.5:0.95"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-4)


def test_duplicated_predictions_count_once(toy_gt, monkeypatch):
    single = A2DEvaluator(toy_gt)
    single.process(*a2d_batch(TOY_PREDICTIONS))
    expected = single.evaluate()
    # a sample evaluated twice (as padding in a distributed sampler does), gathered from two "ranks"
    doubled = A2DEvaluator(toy_gt)
    doubled.process(*a2d_batch(TOY_PREDICTIONS))
    doubled.process(*a2d_batch({"v_a_f_1_i_1": TOY_PREDICTIONS["v_a_f_1_i_1"]}))
    monkeypatch.setattr(ref_eval, "all_gather_object", lambda records: [records, list(records)])
    assert doubled.evaluate() == expected
    doubled.reset()
    with pytest.raises(ValueError, match="no prediction for the ground-truth images"):
        doubled.evaluate()


def test_prediction_for_an_unknown_image_is_named(toy_gt):
    evaluator = A2DEvaluator(toy_gt)
    evaluator.process(*a2d_batch({**TOY_PREDICTIONS, "v_z_f_9_i_1": TOY_PREDICTIONS["v_a_f_1_i_1"]}))
    with pytest.raises(ValueError, match="v_z_f_9_i_1.*gt.json"):
        evaluator.evaluate()


def test_missing_or_malformed_ground_truth_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        A2DEvaluator(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DatasetFormatError, match="bad.json.*'images'"):
        A2DEvaluator(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetFormatError, match="broken.json"):
        RefExpEvaluator(tmp_path / "broken.json", "refcoco")


# ----------------------------------------------------------------------------- RefCOCO
def test_refexp_box_and_mask_precision_by_hand(tmp_path):
    # polygon GTs with integer corners cover the pixels [x0, x1) x [y0, y1)
    images = [{"id": 1, "height": SIZE, "width": SIZE}, {"id": 2, "height": SIZE, "width": SIZE}]
    annotations = [  # an 8x8 square at the top left; a full-width stripe over pixel rows 4..11 (grid rows 1, 2)
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64.0, "bbox": [0, 0, 8, 8],
         "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]]},
        {"id": 2, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 128.0, "bbox": [0, 4, 16, 8],
         "segmentation": [[0, 4, 16, 4, 16, 12, 0, 12]]},
    ]
    gt = tmp_path / "instances_refcoco_val.json"
    gt.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    # image 1, best query 1: box xyxy (4, 0, 12, 8) → IoU 32/96; grid rows 0, 1 → mask IoU 64/128 (not > 0.5)
    # image 2, best query 0: box (0, 4, 16, 12) exact → IoU 1; grid rows 1..3 → mask IoU 128/192
    scores = torch.tensor([[0.3, 0.9], [0.8, 0.1]])
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.5, 0.25, 0.5, 0.5]],
                          [[0.5, 0.5, 1.0, 0.5], [0.1, 0.1, 0.1, 0.1]]])  # normalised cxcywh
    masks = torch.stack([torch.stack([rows_logits([3]), rows_logits([0, 1])]),
                         torch.stack([rows_logits([1, 2, 3]), rows_logits([0])])])
    outputs = {"pred_logits": torch.logit(scores)[:, None, :, None], "pred_boxes": boxes[:, None],
               "pred_masks": masks[:, None]}
    targets = [{"image_id": torch.tensor([1]), "orig_size": torch.tensor([SIZE, SIZE]),
                "size": torch.tensor([SIZE, SIZE])},
               {"image_id": 2, "orig_size": torch.tensor([SIZE, SIZE]), "size": torch.tensor([SIZE, SIZE])}]
    evaluator = RefExpEvaluator(gt, "refcoco")
    evaluator.process(outputs, targets)
    evaluator.process(outputs, targets)  # duplicates count once
    metrics = evaluator.evaluate()
    expected = {
        "bbox P@0.5": 0.5, "bbox P@0.9": 0.5, "bbox overall_iou": (32 + 128) / (96 + 128),
        "bbox mean_iou": (1 / 3 + 1) / 2,
        "segm P@0.5": 0.5, "segm P@0.6": 0.5, "segm P@0.7": 0.0, "segm overall_iou": (64 + 128) / (128 + 192),
        "segm mean_iou": (0.5 + 2 / 3) / 2,
    }
    for key, value in expected.items():
        assert math.isclose(metrics[f"refcoco {key}"], value, abs_tol=TOLERANCE), key
    assert len(metrics) == 2 * 7
