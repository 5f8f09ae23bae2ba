"""Video-level matcher: golden indices, brute-force optimality, invariances and frame handling."""
from __future__ import annotations

import math

import pytest
import torch

from models.losses import focal_class_cost, pairwise_dice_coefficient, pairwise_sigmoid_focal_cost
from models.matcher import HungarianMatcher, sample_target_masks
from tests.golden import load_case

# The original's defaults (--set_cost_class/bbox/giou/mask/dice), also used by the golden case.
DEFAULT_COSTS = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0}


@pytest.fixture(scope="module")
def train_case() -> dict:
    return load_case("model_train_r50.pt")


def make_batch(clip_sizes=((64, 96), (50, 90)), num_frames=3, num_queries=4, num_classes=1, seed=0,
               dtype=torch.float64) -> tuple[dict, list[dict]]:
    """Random outputs and targets; every clip size rounds up to the same 32-multiple so any subset batches alike."""
    generator = torch.Generator().manual_seed(seed)
    num_clips = len(clip_sizes)
    padded_h = max(math.ceil(h / 32) * 32 for h, _ in clip_sizes)
    padded_w = max(math.ceil(w / 32) * 32 for _, w in clip_sizes)
    shape = (num_clips, num_frames, num_queries)
    outputs = {
        "pred_logits": torch.randn(*shape, num_classes, generator=generator, dtype=dtype) * 2,
        "pred_boxes": torch.rand(*shape, 4, generator=generator, dtype=dtype) * 0.5 + 0.25,
        "pred_masks": torch.randn(*shape, padded_h // 4, padded_w // 4, generator=generator, dtype=dtype) * 3,
    }
    targets = []
    for clip, (height, width) in enumerate(clip_sizes):
        valid = (torch.rand(num_frames, generator=generator) > 0.3).long()
        valid[clip % num_frames] = 1  # at least one valid frame, at varying positions
        masks = (torch.rand(num_frames, height, width, generator=generator) > 0.6) & valid.bool()[:, None, None]
        boxes = (torch.rand(num_frames, 4, generator=generator) * 0.5 + 0.25) * valid[:, None]
        labels = torch.randint(num_classes, (num_frames,), generator=generator)
        targets.append({"labels": labels, "boxes": boxes.float(), "masks": masks, "valid": valid})
    return outputs, targets


# ---- independent reference formulas (plain Python / float64, written without the code under test) ----

def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _giou_cxcywh(a: list[float], b: list[float], eps: float = 1e-6) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return (inter + eps) / (union + eps) - (enclosing - union + eps) / (enclosing + eps)


def _sampled_gt(mask: torch.Tensor, grid_h: int, grid_w: int) -> list[list[float]]:
    """Pixel (4i + 2, 4j + 2) of the mask, 0 where that lies in the padding."""
    height, width = mask.shape
    return [[float(mask[4 * i + 2, 4 * j + 2]) if 4 * i + 2 < height and 4 * j + 2 < width else 0.0
             for j in range(grid_w)] for i in range(grid_h)]


def brute_force_costs(outputs: dict, targets: list[dict], weights: dict, num_classes: int) -> torch.Tensor:
    """Each cost term of each (clip, query) from its textbook formula → ``[B, Q]`` float64."""
    logits, boxes, masks = (outputs[k].double() for k in ("pred_logits", "pred_boxes", "pred_masks"))
    num_clips, num_frames, num_queries = logits.shape[:3]
    grid_h, grid_w = masks.shape[-2:]
    costs = torch.zeros(num_clips, num_queries, dtype=torch.float64)
    for b, target in enumerate(targets):
        valid = target["valid"].tolist()
        gt = torch.tensor([_sampled_gt(target["masks"][t], grid_h, grid_w) for t in range(num_frames)]).flatten()
        gt_boxes = target["boxes"].double().tolist()
        for q in range(num_queries):
            class_terms = []
            for t in range(num_frames):
                if valid[t]:
                    p = _sigmoid(logits[b, t, q, 0 if num_classes == 1 else target["labels"][t]].item())
                    class_terms.append(0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
                                       - 0.75 * p ** 2 * -math.log(1 - p + 1e-8))
            class_cost = sum(class_terms) / len(class_terms) if class_terms else 0.0
            pred_boxes = boxes[b, :, q].tolist()
            l1_cost = sum(sum(abs(p - g) for p, g in zip(pred_boxes[t], gt_boxes[t])) for t in range(num_frames))
            l1_cost /= num_frames
            giou_cost = -sum(_giou_cxcywh(pred_boxes[t], gt_boxes[t]) for t in range(num_frames)) / num_frames
            x = masks[b, :, q].flatten()
            p = torch.sigmoid(x)
            bce = -(gt * torch.log(p) + (1 - gt) * torch.log(1 - p))
            p_t = torch.where(gt > 0, p, 1 - p)
            alpha_t = torch.where(gt > 0, 0.25, 0.75)
            focal_cost = (alpha_t * (1 - p_t) ** 2 * bce).mean().item()
            dice_cost = -((2 * (p * gt).sum() + 1) / (p.sum() + gt.sum() + 1)).item()
            costs[b, q] = (weights["cost_class"] * class_cost + weights["cost_bbox"] * l1_cost
                           + weights["cost_giou"] * giou_cost + weights["cost_mask"] * focal_cost
                           + weights["cost_dice"] * dice_cost)
    return costs


def matched_queries(indices: list) -> list[int]:
    return [int(src) for src, _ in indices]


# ---- golden ----

def test_golden_indices_every_layer(train_case):
    outputs = train_case["outputs"]
    model_outputs, targets = outputs["model_outputs"], train_case["inputs"]["targets"]
    matcher = HungarianMatcher(**DEFAULT_COSTS, num_classes=1)
    layers = [model_outputs] + list(model_outputs["aux_outputs"])
    assert len(layers) == len(outputs["matcher_indices"])
    for layer, expected in zip(layers, outputs["matcher_indices"]):
        got = matcher(layer, targets)
        assert len(got) == len(expected)
        for (src, tgt), (expected_src, expected_tgt) in zip(got, expected):
            assert src.dtype == tgt.dtype == torch.int64 and src.shape == tgt.shape == (1,)
            assert torch.equal(src, expected_src) and torch.equal(tgt, expected_tgt)


# ---- optimality against brute force, invariances ----

@pytest.mark.parametrize("num_classes, seed", [(1, 0), (1, 1), (3, 2), (3, 3)])
def test_matched_query_has_lowest_brute_force_cost(num_classes, seed):
    outputs, targets = make_batch(num_classes=num_classes, seed=seed)
    matcher = HungarianMatcher(**DEFAULT_COSTS, num_classes=num_classes)
    expected = brute_force_costs(outputs, targets, DEFAULT_COSTS, num_classes)
    torch.testing.assert_close(matcher.cost_matrix(outputs, targets), expected, rtol=1e-9, atol=1e-12)
    assert matched_queries(matcher(outputs, targets)) == expected.argmin(1).tolist()


def test_float32_costs_match_brute_force():
    outputs, targets = make_batch(dtype=torch.float32, seed=4)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    costs = matcher.cost_matrix(outputs, targets)
    assert costs.dtype == torch.float32
    torch.testing.assert_close(costs.double(), brute_force_costs(outputs, targets, DEFAULT_COSTS, 1),
                               rtol=1e-5, atol=1e-6)


def test_each_cost_term_alone_matches_brute_force():
    outputs, targets = make_batch(num_classes=2, seed=5)
    for term in DEFAULT_COSTS:
        weights = {name: (1.0 if name == term else 0.0) for name in DEFAULT_COSTS}
        matcher = HungarianMatcher(**weights, num_classes=2)
        torch.testing.assert_close(matcher.cost_matrix(outputs, targets),
                                   brute_force_costs(outputs, targets, weights, 2), rtol=1e-9, atol=1e-12)


def test_permuting_queries_permutes_the_match():
    outputs, targets = make_batch(num_queries=6, seed=6)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    before = matched_queries(matcher(outputs, targets))
    permutation = torch.randperm(6)
    permuted = {key: value[:, :, permutation] for key, value in outputs.items()}  # query axis is 2 everywhere
    after = matched_queries(matcher(permuted, targets))
    assert [int(permutation[q]) for q in after] == before


def test_batch_equals_per_clip():
    outputs, targets = make_batch(clip_sizes=((64, 96), (50, 90), (33, 70)), seed=7)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    batched_costs = matcher.cost_matrix(outputs, targets)
    batched = matched_queries(matcher(outputs, targets))
    for clip in range(3):
        clip_outputs = {key: value[clip:clip + 1] for key, value in outputs.items()}
        torch.testing.assert_close(matcher.cost_matrix(clip_outputs, targets[clip:clip + 1]),
                                   batched_costs[clip:clip + 1], rtol=1e-12, atol=0)
        assert matched_queries(matcher(clip_outputs, targets[clip:clip + 1])) == [batched[clip]]


def test_aux_outputs_key_is_ignored():
    outputs, targets = make_batch(seed=8)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    with_aux = dict(outputs, aux_outputs=[{key: value.flip(2) for key, value in outputs.items()}])
    assert matched_queries(matcher(with_aux, targets)) == matched_queries(matcher(outputs, targets))


# ---- frame handling ----

def _two_query_clip(logits: list[list[float]], boxes: list[list[list[float]]], valid: list[int],
                    labels: list[int] | None = None) -> tuple[dict, list[dict]]:
    """One clip of T frames, Q = 2, 32×32 frames (8×8 mask grid); ``logits[t][q]`` or ``[t][q][k]``."""
    logits_tensor = torch.tensor(logits, dtype=torch.float64)
    if logits_tensor.ndim == 2:
        logits_tensor = logits_tensor[..., None]
    num_frames = len(valid)
    outputs = {"pred_logits": logits_tensor[None], "pred_boxes": torch.tensor(boxes, dtype=torch.float64)[None],
               "pred_masks": torch.zeros(1, num_frames, 2, 8, 8, dtype=torch.float64)}
    target_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2] if v else [0.0] * 4 for v in valid])
    targets = [{"labels": torch.tensor(labels or [0] * num_frames), "boxes": target_boxes,
                "masks": torch.zeros(num_frames, 32, 32, dtype=torch.bool), "valid": torch.tensor(valid)}]
    return outputs, targets


def test_invalid_frames_are_left_out_of_the_class_cost():
    # frame 0: query 1 is the more confident; frame 1: query 0 is far more confident
    logits = [[0.0, 1.0], [5.0, -5.0]]
    boxes = [[[0.5, 0.5, 0.2, 0.2]] * 2] * 2
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0)
    assert matched_queries(matcher(*_two_query_clip(logits, boxes, valid=[1, 0]))) == [1]
    assert matched_queries(matcher(*_two_query_clip(logits, boxes, valid=[1, 1]))) == [0]


def test_invalid_frames_count_in_the_box_cost():
    boxes = [[[0.5, 0.5, 0.2, 0.2], [0.55, 0.5, 0.2, 0.2]],  # frame 0 (valid): query 0 exact
             [[0.5, 0.5, 0.4, 0.4], [0.01, 0.01, 0.01, 0.01]]]  # frame 1 (invalid): query 1 near the zero box
    logits = [[0.0, 0.0], [0.0, 0.0]]
    matcher = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0)
    outputs, targets = _two_query_clip(logits, boxes, valid=[1, 0])
    # L1 per query averaged over both frames: (0 + 1.8) / 2 and (0.05 + 0.04) / 2
    torch.testing.assert_close(matcher.cost_matrix(outputs, targets), torch.tensor([[0.9, 0.045]], dtype=torch.float64))
    assert matched_queries(matcher(outputs, targets)) == [1]


def test_multiclass_cost_uses_each_frames_label():
    logits = [[[-4.0, -4.0, 4.0], [-4.0, 4.0, -4.0]],  # frame 0: query 0 says class 2, query 1 says class 1
              [[4.0, -4.0, -4.0], [-4.0, 4.0, -4.0]]]  # frame 1: query 0 says class 0, query 1 says class 1
    boxes = [[[0.5, 0.5, 0.2, 0.2]] * 2] * 2
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0,
                               num_classes=3)
    assert matched_queries(matcher(*_two_query_clip(logits, boxes, [1, 1], labels=[2, 0]))) == [0]
    assert matched_queries(matcher(*_two_query_clip(logits, boxes, [1, 1], labels=[1, 1]))) == [1]
    # with K = 1 the label is ignored (binary "referred" class 0)
    binary = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0)
    outputs, targets = _two_query_clip([[0.0, 1.0], [0.0, 1.0]], boxes, [1, 1], labels=[7, 7])
    assert matched_queries(binary(outputs, targets)) == [1]


def test_clip_without_valid_frames_gets_zero_class_cost():
    outputs, targets = _two_query_clip([[0.0, 1.0], [3.0, -2.0]], [[[0.5, 0.5, 0.2, 0.2]] * 2] * 2, valid=[0, 0])
    matcher = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0, cost_mask=0.0, cost_dice=0.0)
    assert torch.equal(matcher.cost_matrix(outputs, targets), torch.zeros(1, 2, dtype=torch.float64))


# ---- target masks and pairwise losses ----

def test_target_masks_are_padded_then_point_sampled():
    small = torch.zeros(2, 40, 20, dtype=torch.bool)  # pads to 64 × 32 together with `large`
    small[0, 2, 6] = True  # on the sampling grid (4·0 + 2, 4·1 + 2)
    small[1, 3, 3] = True  # off the grid: dropped
    large = torch.ones(2, 64, 30, dtype=torch.bool)
    targets = [{"masks": small}, {"masks": large}]
    sampled = sample_target_masks(targets, (16, 8))
    assert sampled.shape == (2, 2, 16, 8) and sampled.dtype == torch.bool
    expected_small = torch.zeros(2, 16, 8, dtype=torch.bool)
    expected_small[0, 0, 1] = True
    assert torch.equal(sampled[0], expected_small)
    # columns 4·7 + 2 = 30 lie in the padding of the 30-wide mask
    assert sampled[1, :, :, :7].all() and not sampled[1, :, :, 7].any()
    with pytest.raises(ValueError, match="pred_masks"):
        sample_target_masks(targets, (16, 16))



def test_target_masks_at_the_finer_strides_of_upsampled_masks():
    mask = torch.zeros(1, 40, 20, dtype=torch.bool)  # pads to 64 × 32
    # the stride-4 grid samples pixels 4i + 2, the stride-2 grid the even ones (target_sample_offset)
    mask[0, 1, 3] = True  # odd: off both grids
    mask[0, 2, 2] = True  # on the stride-4 grid (4·0 + 2) and the stride-2 grid (2·1)
    mask[0, 4, 6] = True  # on the stride-2 grid (2·2, 2·3), off the stride-4 grid
    padded = torch.zeros(1, 1, 64, 32, dtype=torch.bool)
    padded[0, :, :40, :20] = mask
    assert torch.equal(sample_target_masks([{"masks": mask}], (64, 32)), padded)  # stride 1: every pixel
    stride_2 = sample_target_masks([{"masks": mask}], (32, 16))
    assert stride_2.shape == (1, 1, 32, 16) and stride_2.sum() == 2 and stride_2[0, 0, 1, 1] and stride_2[0, 0, 2, 3]
    stride_4 = sample_target_masks([{"masks": mask}], (16, 8))
    assert stride_4.sum() == 1 and stride_4[0, 0, 0, 0]
    for grid in ((48, 24), (21, 10), (32, 8)):  # stride 4/3, 3, and different strides along the two axes
        with pytest.raises(ValueError, match=r"do not map onto .* grid of pred_masks"):
            sample_target_masks([{"masks": mask}], grid)

def test_pairwise_focal_and_dice_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # probabilities 0.5, 0.75
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    # target row 0: element 0 is y=1, p=0.5 → 0.25·0.5²·ln 2; element 1 is y=0, p=0.75 → 0.75·0.75²·ln 4
    focal_row0 = (0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)) / 2
    # target row 1: element 0 is y=0, p=0.5 → 0.75·0.5²·ln 2
    focal_row1 = (0.75 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)) / 2
    torch.testing.assert_close(pairwise_sigmoid_focal_cost(logits, targets),
                               torch.tensor([[focal_row0, focal_row1]], dtype=torch.float64))
    # dice: (2·0.5 + 1) / (1.25 + 1 + 1) and (0 + 1) / (1.25 + 0 + 1)
    torch.testing.assert_close(pairwise_dice_coefficient(logits, targets),
                               torch.tensor([[2 / 3.25, 1 / 2.25]], dtype=torch.float64))


def test_focal_class_cost_hand_values():
    prob = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    expected = torch.tensor([
        0.25 * 0.25 * -math.log(0.5 + 1e-8) - 0.75 * 0.25 * -math.log(0.5 + 1e-8),
        0.25 * -math.log(1e-8),  # p = 0: only the positive term, kept finite by the eps
        -0.75 * -math.log(1e-8),  # p = 1: only the negative term
    ], dtype=torch.float64)
    torch.testing.assert_close(focal_class_cost(prob), expected)


# ---- errors ----

def test_one_query_is_matched_without_computing_costs(monkeypatch):
    outputs, targets = make_batch(num_queries=1, seed=10)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    assert torch.equal(matcher.cost_matrix(outputs, targets).argmin(1), torch.zeros(2, dtype=torch.int64))

    def fail(*args):
        raise AssertionError("costs computed for a single query")

    monkeypatch.setattr(matcher, "_weighted_costs", fail)
    assert [(q.tolist(), t.tolist()) for q, t in matcher(outputs, targets)] == [([0], [0]), ([0], [0])]


@pytest.mark.parametrize("num_queries", [4, 1])
def test_bad_input_raises_clear_errors(num_queries):
    outputs, targets = make_batch(num_queries=num_queries, seed=9)
    matcher = HungarianMatcher(**DEFAULT_COSTS)
    with pytest.raises(ValueError, match="1 target dicts for a batch of 2"):
        matcher(outputs, targets[:1])
    with pytest.raises(ValueError, match="lacks \\['valid'\\]"):
        matcher(outputs, [targets[0], {k: v for k, v in targets[1].items() if k != "valid"}])
    with pytest.raises(ValueError, match="T = 3"):
        matcher(outputs, [targets[0], {k: v[:2] for k, v in targets[1].items()}])
    with pytest.raises(ValueError, match="missing \\['pred_masks'\\]"):
        matcher({k: v for k, v in outputs.items() if k != "pred_masks"}, targets)
    with pytest.raises(ValueError, match="K = 1"):
        HungarianMatcher(**DEFAULT_COSTS, num_classes=3)(outputs, targets)
    multiclass_outputs, multiclass_targets = make_batch(num_queries=num_queries, num_classes=3, seed=9)
    multiclass_targets[1]["labels"][multiclass_targets[1]["valid"].bool()] = 3
    with pytest.raises(ValueError, match="target 1: labels .* outside \\[0, 3\\)"):
        HungarianMatcher(**DEFAULT_COSTS, num_classes=3)(multiclass_outputs, multiclass_targets)
    if num_queries == 1:
        return  # the mask grid is checked where the costs are computed (and by the criterion's mask loss)
    with pytest.raises(ValueError, match="pred_masks"):
        matcher(dict(outputs, pred_masks=outputs["pred_masks"][..., :-1]), targets)
