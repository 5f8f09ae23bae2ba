"""SetCriterion: golden losses, hand-derived values, gradients, num_boxes and input checks."""
from __future__ import annotations

import math

import pytest
import torch

import models.criterion as criterion_module
from models.criterion import SetCriterion
from models.losses import dice_loss, sigmoid_focal_loss
from models.matcher import HungarianMatcher, sample_target_masks
from tests.golden import assert_close_to_scale, load_case

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
# The original's --*_loss_coef defaults; the golden case stores the same weight_dict.
LOSS_WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 2.0, "loss_dice": 5.0}
MATCHER_COSTS = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0, "cost_mask": 2.0, "cost_dice": 5.0}
# Golden tolerance (README: losses rtol 1e-5, atol 1e-6). Measured on CPU, 1 thread, torch 2.14.1:
# all 20 terms and the total are bit-identical (max |Δ| = 0.0), so this leaves room only for
# other kernels/summation orders, e.g. another CPU or library version.
GOLDEN_RTOL, GOLDEN_ATOL = 1e-5, 1e-6
# float64 on the same (float32) model outputs vs the float32 golden losses: measured worst
# relative difference 9.6e-8 over the 20 terms and 1.2e-7 (4.7e-6 absolute) on the total 38.07.
FLOAT64_RTOL = 1e-6


def build_criterion(num_classes: int = 1, losses: tuple[str, ...] = ("labels", "boxes", "masks"),
                    num_aux: int = 3, mask_out_stride: int = 4) -> SetCriterion:
    weight_dict = dict(LOSS_WEIGHTS)
    weight_dict.update({f"{k}_{i}": v for i in range(num_aux) for k, v in LOSS_WEIGHTS.items()})
    matcher = HungarianMatcher(**MATCHER_COSTS, num_classes=num_classes)
    return SetCriterion(num_classes, matcher, weight_dict, eos_coef=0.1, losses=list(losses), focal_alpha=0.25,
                        mask_out_stride=mask_out_stride)


def map_tensors(outputs: dict, fn) -> dict:
    """Apply ``fn`` to every tensor of a model-output dict, aux outputs included."""
    mapped = {key: fn(value) for key, value in outputs.items() if key != "aux_outputs"}
    if "aux_outputs" in outputs:
        mapped["aux_outputs"] = [{key: fn(value) for key, value in aux.items()} for aux in outputs["aux_outputs"]]
    return mapped


@pytest.fixture(scope="module")
def train_case() -> dict:
    return load_case("model_train_r50.pt")


# ---- golden ----

def test_golden_losses_and_total(train_case):
    expected = train_case["outputs"]
    criterion = build_criterion()
    losses = criterion(expected["model_outputs"], train_case["inputs"]["targets"])
    assert set(losses) == set(expected["losses"])
    assert criterion.weight_dict == expected["weight_dict"]
    for name, value in expected["losses"].items():
        torch.testing.assert_close(losses[name], value, rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL, msg=name)
    total = sum(losses[name] * expected["weight_dict"][name] for name in losses)
    torch.testing.assert_close(total, expected["total_loss"], rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL)


def test_golden_float64_agrees_with_float32(train_case):
    expected = train_case["outputs"]
    outputs64 = map_tensors(expected["model_outputs"], torch.Tensor.double)
    losses = build_criterion()(outputs64, train_case["inputs"]["targets"])
    for name, value in expected["losses"].items():
        assert losses[name].dtype == torch.float64
        assert_close_to_scale(losses[name], value, FLOAT64_RTOL, name)


def test_gradients_of_total_loss_are_finite(train_case):
    outputs = map_tensors(train_case["outputs"]["model_outputs"], lambda t: t.clone().requires_grad_(True))
    criterion = build_criterion()
    losses = criterion(outputs, train_case["inputs"]["targets"])
    total = sum(losses[name] * criterion.weight_dict[name] for name in losses)
    total.backward()
    leaves = [outputs[k] for k in ("pred_logits", "pred_boxes", "pred_masks")]
    leaves += [aux[k] for aux in outputs["aux_outputs"] for k in ("pred_logits", "pred_boxes", "pred_masks")]
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


# ---- hand-derived values ----

def test_focal_and_dice_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]], dtype=torch.float64)  # p = 0.5 / 0.75
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    # y=1, p=0.5: α(1-p)²·ln 2 | y=0, p=0.75: (1-α)p²·ln 4 | y=0, p=0.75 | y=0, p=0.5: (1-α)p²·ln 2
    row0 = (0.25 * 0.25 * math.log(2) + 0.75 * 0.5625 * math.log(4)) / 2
    row1 = (0.75 * 0.5625 * math.log(4) + 0.75 * 0.25 * math.log(2)) / 2
    num_boxes = 2.0
    assert sigmoid_focal_loss(logits, targets, num_boxes).item() == pytest.approx((row0 + row1) / num_boxes, rel=1e-14)
    # another alpha weights positives by alpha and negatives by 1 - alpha
    row0_alpha = (0.5 * 0.25 * math.log(2) + 0.5 * 0.5625 * math.log(4)) / 2
    row1_alpha = (0.5 * 0.5625 * math.log(4) + 0.5 * 0.25 * math.log(2)) / 2
    assert sigmoid_focal_loss(logits, targets, num_boxes, alpha=0.5).item() == pytest.approx(
        (row0_alpha + row1_alpha) / num_boxes, rel=1e-14)
    # dice row 0: 1 - (2·0.5 + 1)/(1.25 + 1 + 1) = 5/13; row 1: 1 - 1/(1.25 + 0 + 1) = 5/9
    assert dice_loss(logits, targets, num_boxes).item() == pytest.approx((5 / 13 + 5 / 9) / num_boxes, rel=1e-14)


def _giou_cxcywh(a: list[float], b: list[float], eps: float = 1e-6) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return (inter + eps) / (union + eps) - (enclosing - union + eps) / (enclosing + eps)


def tiny_clip(valid: list[int]) -> tuple[dict, list[dict]]:
    """One clip, T = 2, Q = 2, K = 1, 32×32 frames (8×8 mask grid); query 1 is built to be matched."""
    log3 = math.log(3.0)
    target_box = [0.5, 0.5, 0.2, 0.2]
    outputs = {
        "pred_logits": torch.tensor([[[[0.0], [log3]], [[log3], [0.0]]]], dtype=torch.float64),  # [1, 2, 2, 1]
        "pred_boxes": torch.tensor([[[[0.3, 0.3, 0.1, 0.1], target_box],
                                     [[0.3, 0.3, 0.1, 0.1], [0.1, 0.1, 0.05, 0.05]]]], dtype=torch.float64),
        "pred_masks": torch.zeros(1, 2, 2, 8, 8, dtype=torch.float64),  # p = 0.5 everywhere
    }
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = bool(valid[0])  # 4×4 = 16 of the 64 sampled points of frame 0
    boxes = torch.tensor([target_box if v else [0.0] * 4 for v in valid], dtype=torch.float64)
    targets = [{"labels": torch.zeros(2, dtype=torch.int64), "boxes": boxes, "masks": masks,
                "valid": torch.tensor(valid)}]
    return outputs, targets


def test_tiny_clip_hand_values():
    outputs, targets = tiny_clip(valid=[1, 0])
    criterion = build_criterion(num_aux=0)
    assert [int(q) for q, _ in criterion.matcher(outputs, targets)] == [1]
    losses = criterion(outputs, targets)
    num_boxes = 1.0  # one valid frame
    # class: positive only at (frame 0, query 1), p = 0.75; the other three are negatives
    expected_ce = (0.25 * 0.0625 * math.log(4 / 3)  # y=1, p=0.75
                   + 0.75 * 0.25 * math.log(2)  # (t0, q0): y=0, p=0.5
                   + 0.75 * 0.5625 * math.log(4)  # (t1, q0): y=0, p=0.75
                   + 0.75 * 0.25 * math.log(2))  # (t1, q1): matched query, but frame 1 is invalid
    # boxes: frame 0 exact; frame 1 (invalid) against the zero box
    expected_bbox = 0.1 + 0.1 + 0.05 + 0.05
    expected_giou = (1 - _giou_cxcywh([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2])) + (
        1 - _giou_cxcywh([0.1, 0.1, 0.05, 0.05], [0.0, 0.0, 0.0, 0.0]))
    # masks: p = 0.5 on all 128 points, 16 of them positive
    positives, points = 16, 128
    expected_mask = (positives * 0.25 * 0.25 + (points - positives) * 0.75 * 0.25) * math.log(2) / points
    expected_dice = 1 - (2 * 0.5 * positives + 1) / (0.5 * points + positives + 1)
    expected = {"loss_ce": expected_ce, "loss_bbox": expected_bbox, "loss_giou": expected_giou,
                "loss_mask": expected_mask, "loss_dice": expected_dice}
    assert set(losses) == set(LOSS_NAMES)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value / num_boxes, rel=1e-12), name


@pytest.mark.parametrize("stride", [2, 1])
def test_finer_mask_out_stride_hand_values(stride):
    outputs, targets = tiny_clip(valid=[1, 0])
    at_stride_4 = build_criterion(num_aux=0)(outputs, targets)
    losses = build_criterion(num_aux=0, mask_out_stride=stride)(outputs, targets)
    # the constant logit 0 upsamples to 0: p = 0.5 on all (32 / stride)² points of both frames, and the
    # 16 × 16-pixel object covers (16 / stride)² of them
    points, positives = 2 * (32 // stride) ** 2, (16 // stride) ** 2
    expected_mask = (positives * 0.25 * 0.25 + (points - positives) * 0.75 * 0.25) * math.log(2) / points
    expected_dice = 1 - (2 * 0.5 * positives + 1) / (0.5 * points + positives + 1)
    assert losses["loss_mask"].item() == pytest.approx(expected_mask, rel=1e-12)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-12)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert torch.equal(losses[name], at_stride_4[name]), name


def test_mask_out_stride_upsamples_with_aligned_bilinear():
    """The original's routine: a stride-4 logit sits at pixel 4i + 2 of the input; between two of them
    the value is linear, and beyond the last one it is held (replicate padding)."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.randn(2, 1, 3, 3, 4, generator=generator, dtype=torch.float64)  # [B, T, Q, h, w]
    upsampled = build_criterion(mask_out_stride=1).at_mask_out_stride({"pred_masks": masks})["pred_masks"]
    assert upsampled.shape == (2, 1, 3, 12, 16)

    def interpolate(line: torch.Tensor, pixel: int) -> torch.Tensor:
        position = min(max((pixel - 2) / 4, 0.0), line.shape[-1] - 1)
        low = min(int(position), line.shape[-1] - 2)
        weight = position - low
        return line[..., low] * (1 - weight) + line[..., low + 1] * weight

    for y in range(12):
        for x in range(16):
            columns = torch.stack([interpolate(masks[..., row, :], x) for row in range(3)], dim=-1)
            torch.testing.assert_close(upsampled[..., y, x], interpolate(columns, y), rtol=1e-12, atol=1e-12)
    # the default stride leaves the outputs as they are
    outputs = {"pred_masks": masks}
    assert build_criterion().at_mask_out_stride(outputs) is outputs
    with pytest.raises(ValueError, match="mask_out_stride must be one of"):
        build_criterion(mask_out_stride=3)

@pytest.mark.parametrize("stride", [4, 2, 1])
def test_upsampled_logits_meet_the_ground_truth_of_their_own_pixels(stride):
    """Logit i of the stride-4 grid stands for input pixel 4i + 2 (the original's sampling of the ground
    truth). At a finer --mask_out_stride, every point of the upsampled masks must still be compared with
    the ground truth of the pixel its interpolated logit stands for: with "masks" holding each pixel's own
    coordinates and logits holding those of their pixels, the two grids hold the same values."""
    height, width = 32, 64
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    targets = [{"masks": (xs + 1000 * ys)[None]}]  # one frame
    logit_ys, logit_xs = torch.meshgrid(4 * torch.arange(height // 4) + 2.0, 4 * torch.arange(width // 4) + 2.0,
                                        indexing="ij")
    logits = (logit_xs + 1000 * logit_ys).to(torch.float64)[None, None, None]  # [B, T, Q, h, w]
    upsampled = build_criterion(mask_out_stride=stride).at_mask_out_stride({"pred_masks": logits})["pred_masks"]
    sampled = sample_target_masks(targets, upsampled.shape[-2:])  # [B, T, H/stride, W/stride]
    assert upsampled.shape[-2:] == sampled.shape[-2:] == (height // stride, width // stride)
    # linear interpolation reproduces the coordinates between the first and the last logit (it holds the
    # last value beyond them)
    inside_y = (sampled[0, 0] // 1000 >= 2) & (sampled[0, 0] // 1000 <= height - 2)
    inside_x = (sampled[0, 0] % 1000 >= 2) & (sampled[0, 0] % 1000 <= width - 2)
    inside = inside_y & inside_x
    assert inside.float().mean() > 0.7
    torch.testing.assert_close(upsampled[0, 0, 0][inside], sampled[0, 0][inside], rtol=0, atol=1e-9)


def test_num_boxes_counts_valid_frames_and_is_at_least_one():
    _, targets = tiny_clip(valid=[1, 1])
    assert SetCriterion.num_boxes(targets + targets, torch.device("cpu")) == 4.0
    _, empty = tiny_clip(valid=[0, 0])
    assert SetCriterion.num_boxes(empty, torch.device("cpu")) == 1.0


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    def other_rank_has_three(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.add_(3)

    monkeypatch.setattr(criterion_module, "all_reduce_sum", other_rank_has_three)
    monkeypatch.setattr(criterion_module, "get_world_size", lambda: 2)
    _, targets = tiny_clip(valid=[1, 1])
    assert SetCriterion.num_boxes(targets, torch.device("cpu")) == 2.5  # (2 + 3) / 2


def test_clip_without_valid_frames():
    outputs, targets = tiny_clip(valid=[0, 0])
    losses = build_criterion(num_aux=0)(outputs, targets)
    # num_boxes clamps to 1; every class logit is a negative
    expected_ce = 0.75 * (2 * 0.25 * math.log(2) + 2 * 0.5625 * math.log(4))
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-12)
    # an empty GT mask: dice 1 - 1 / (0.5·128 + 1)
    assert losses["loss_dice"].item() == pytest.approx(1 - 1 / 65, rel=1e-12)
    assert all(torch.isfinite(value) for value in losses.values())


def test_multiclass_target_uses_each_frames_label():
    outputs, targets = tiny_clip(valid=[1, 1])
    outputs["pred_logits"] = torch.zeros(1, 2, 2, 3, dtype=torch.float64)  # p = 0.5 for every class
    targets[0]["labels"] = torch.tensor([2, 1])
    targets[0]["boxes"] = torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2, dtype=torch.float64)
    criterion = build_criterion(num_classes=3, losses=("labels",), num_aux=0)
    matched = int(criterion.matcher(outputs, targets)[0][0])
    loss = criterion(outputs, targets)["loss_ce"]
    # 12 logits, 2 positives (labels 2 and 1 at the matched query): each positive costs 0.25·0.25·ln 2,
    # each negative 0.75·0.25·ln 2; num_boxes = 2
    expected = (2 * 0.0625 + 10 * 0.1875) * math.log(2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # the positives sit at the labels: raising those two logits lowers the loss
    raised = outputs["pred_logits"].clone()
    raised[0, 0, matched, 2] = raised[0, 1, matched, 1] = 2.0
    assert criterion(dict(outputs, pred_logits=raised), targets)["loss_ce"] < loss


# ---- structure and invariances ----

def test_aux_keys_and_loss_subsets(train_case):
    outputs, targets = train_case["outputs"]["model_outputs"], train_case["inputs"]["targets"]
    boxes_only = build_criterion(losses=("boxes",))(outputs, targets)
    assert sorted(boxes_only) == sorted(f"{k}{s}" for k in ("loss_bbox", "loss_giou") for s in ("", "_0", "_1", "_2"))
    full = build_criterion()(outputs, targets)
    for name, value in boxes_only.items():
        assert torch.equal(value, full[name])
    no_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
    assert sorted(build_criterion()(no_aux, targets)) == sorted(LOSS_NAMES)


def test_permuting_queries_leaves_losses_unchanged(train_case):
    outputs, targets = train_case["outputs"]["model_outputs"], train_case["inputs"]["targets"]
    permutation = torch.tensor([3, 0, 4, 1, 2])
    permuted = map_tensors(outputs, lambda t: t[:, :, permutation])  # query axis is 2 in every output
    criterion = build_criterion()
    reference, shuffled = criterion(outputs, targets), criterion(permuted, targets)
    for name in reference:
        torch.testing.assert_close(shuffled[name], reference[name], rtol=1e-6, atol=0, msg=name)


def test_empty_weight_buffer_is_not_saved():
    criterion = build_criterion()
    assert torch.equal(criterion.empty_weight, torch.tensor([1.0, 0.1]))
    assert "empty_weight" not in criterion.state_dict()


def test_bad_input_raises_clear_errors(train_case):
    outputs, targets = train_case["outputs"]["model_outputs"], train_case["inputs"]["targets"]
    criterion = build_criterion()
    with pytest.raises(ValueError, match="unknown losses"):
        build_criterion(losses=("labels", "cardinality"))
    with pytest.raises(ValueError, match="1 target dicts for a batch of 2"):
        criterion(outputs, targets[:1])
    with pytest.raises(ValueError, match="lacks \\['boxes'\\]"):
        criterion(outputs, [targets[0], {k: v for k, v in targets[1].items() if k != "boxes"}])
    with pytest.raises(ValueError, match="T = 3"):
        criterion(outputs, [{k: v[:2] if k in ("labels", "boxes", "masks", "valid") else v
                             for k, v in target.items()} for target in targets])
