"""Box conversions, IoU/GIoU with the original's 1e-6 epsilons, and tight mask boxes."""
from __future__ import annotations

import pytest
import torch

from util.box_ops import (box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou,
                          masks_to_boxes)

EPS = 1e-6  # written out here on purpose: the test states the original's constant


def test_conversions_round_trip():
    cxcywh = torch.rand(5, 3, 4, dtype=torch.float64)
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert xyxy.shape == (5, 3, 4)
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh, rtol=0, atol=1e-15)
    assert torch.equal(box_cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])), torch.tensor([0.4, 0.3, 0.6, 0.7]))
    assert torch.equal(box_xyxy_to_cxcywh(torch.tensor([1.0, 2.0, 4.0, 8.0])), torch.tensor([2.5, 5.0, 3.0, 6.0]))


@pytest.mark.parametrize(
    "box1, box2, inter, union, enclosing",
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 4, 4, 4),  # identical
        ([0, 0, 2, 2], [1, 1, 3, 3], 1, 7, 9),  # overlapping
        ([0, 0, 1, 1], [2, 0, 3, 1], 0, 2, 3),  # disjoint
        ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5], 0, 0, 0),  # two empty boxes at one point
        ([0, 0, 0, 0], [0, 0, 1, 1], 0, 1, 1),  # an empty (invalid-frame) box against a real one
    ],
)
def test_iou_and_giou_hand_values(box1, box2, inter, union, enclosing):
    boxes1 = torch.tensor([box1], dtype=torch.float64)
    boxes2 = torch.tensor([box2], dtype=torch.float64)
    expected_iou = (inter + EPS) / (union + EPS)
    expected_giou = expected_iou - ((enclosing - union) + EPS) / (enclosing + EPS)
    iou, got_union = box_iou(boxes1, boxes2)
    assert iou.shape == (1, 1)
    assert got_union.item() == pytest.approx(union, abs=1e-15)
    assert iou.item() == pytest.approx(expected_iou, rel=1e-14)
    assert generalized_box_iou(boxes1, boxes2).item() == pytest.approx(expected_giou, rel=1e-14, abs=1e-15)


def test_eps_makes_empty_boxes_finite():
    empty = torch.zeros(1, 4)
    iou, _ = box_iou(empty, empty)
    assert iou.item() == 1.0  # eps / eps, where DETR's version gives NaN
    assert generalized_box_iou(empty, empty).item() == 0.0  # 1 - eps / eps
    # identical real boxes: the eps keeps GIoU just below 1
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    assert generalized_box_iou(box, box).item() == pytest.approx(1 - EPS / (4 + EPS), rel=1e-15)


def test_pairwise_shapes_and_batch_broadcasting():
    boxes1 = box_cxcywh_to_xyxy(torch.rand(2, 3, 5, 4) * 0.5 + 0.25)
    boxes2 = box_cxcywh_to_xyxy(torch.rand(2, 3, 2, 4) * 0.5 + 0.25)
    batched = generalized_box_iou(boxes1, boxes2)
    assert batched.shape == (2, 3, 5, 2)
    for i in range(2):
        for j in range(3):
            assert torch.equal(batched[i, j], generalized_box_iou(boxes1[i, j], boxes2[i, j]))
    assert ((batched >= -1) & (batched <= 1)).all()


def test_degenerate_box_raises():
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    flipped = torch.tensor([[0.5, 0.0, 0.4, 1.0]])
    with pytest.raises(ValueError, match="boxes2"):
        generalized_box_iou(good, flipped)
    with pytest.raises(ValueError, match="boxes1"):
        generalized_box_iou(flipped, good)


def test_masks_to_boxes_inclusive_tight():
    masks = torch.zeros(4, 6, 7, dtype=torch.bool)
    masks[0, 2, 3] = True  # one pixel: zero width and height
    masks[1, 1:4, 2:6] = True  # rows 1..3, cols 2..5
    masks[2, 0, 0] = masks[2, 5, 6] = True  # opposite corners
    boxes = masks_to_boxes(masks)
    assert boxes.dtype == torch.float32
    expected = torch.tensor([[3, 2, 3, 2], [2, 1, 5, 3], [0, 0, 6, 5], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(boxes, expected)


def test_masks_to_boxes_matches_loop_and_empty_input():
    masks = torch.rand(6, 9, 11) > 0.9
    masks[0] = False
    for mask, box in zip(masks, masks_to_boxes(masks.to(torch.uint8))):
        ys, xs = mask.nonzero(as_tuple=True)
        expected = [0, 0, 0, 0] if len(ys) == 0 else [xs.min(), ys.min(), xs.max(), ys.max()]
        assert box.tolist() == [float(v) for v in expected]
    assert masks_to_boxes(torch.zeros(0, 4, 4)).shape == (0, 4)
    with pytest.raises(ValueError):
        masks_to_boxes(torch.zeros(4, 4))
