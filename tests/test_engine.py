"""engine.train_one_epoch: gradient accumulation, gradient norm without clipping, non-finite losses,
and the optimizer's parameter groups (util/optim.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine import gradient_norm, train_one_epoch
from tests.models.test_referformer import build_tiny_model
from tools.run_reference_case import build_args
from util.nested_tensor import nested_tensor_from_videos_list
from util.optim import build_optimizer


class RecordingOptimizer(torch.optim.SGD):
    """SGD with lr 0 that records the gradients it is asked to apply."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.recorded: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.recorded.append([p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None])


def clip_and_target(seed: int, size=(64, 64), frames=2):
    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(frames, 3, *size, generator=generator)
    masks = torch.zeros(frames, *size, dtype=torch.bool)
    masks[:, 10 + seed:30 + seed, 20:50] = True
    cy = (20 + seed - 0.5) / size[0]
    target = {"size": torch.tensor(size), "labels": torch.zeros(frames, dtype=torch.long),
              "boxes": torch.tensor([[35 / 64, cy, 30 / 64, 20 / 64]] * frames), "masks": masks,
              "valid": torch.ones(frames, dtype=torch.int32), "caption": "a small box"}
    return clip, target


def batches(seeds, batch_size):
    items = [clip_and_target(s) for s in seeds]
    for i in range(0, len(items), batch_size):
        clips, targets = zip(*items[i:i + batch_size])
        yield nested_tensor_from_videos_list(clips, 32), list(targets)


@pytest.fixture(scope="module")
def tiny():
    model, criterion = build_tiny_model(dropout=0.0)
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0  # the resizer's dropout is hard-coded at 0.1
    return model, criterion


def test_accumulating_two_batches_of_one_equals_one_batch_of_two(tiny):
    model, criterion = tiny
    results = []
    for batch_size, accum_iter in ((2, 1), (1, 2)):
        optimizer = RecordingOptimizer([p for p in model.parameters() if p.requires_grad])
        train_one_epoch(model, criterion, list(batches([0, 1], batch_size)), optimizer, torch.device("cpu"), 0,
                        max_norm=0.0, num_iterations=2 // batch_size, accum_iter=accum_iter)
        assert len(optimizer.recorded) == 1
        results.append(optimizer.recorded[0])
    # Batched and single clips differ at float32 rounding level. Some tensors have gradients 1e-7
    # times the largest one (the tiny rule-filled model), so the absolute tolerance is relative to
    # the largest gradient of the model, not of each tensor.
    scale = max(g.abs().max().item() for g in results[0])
    for together, accumulated in zip(*results):
        torch.testing.assert_close(accumulated, together, rtol=1e-3, atol=1e-5 * scale)


def test_last_short_group_steps_and_callback_sees_steps(tiny):
    model, criterion = tiny
    optimizer = RecordingOptimizer([p for p in model.parameters() if p.requires_grad])
    steps = []
    stats = train_one_epoch(model, criterion, list(batches([0, 1, 2], 1)), optimizer, torch.device("cpu"), 0,
                            max_norm=0.1, num_iterations=3, accum_iter=2, on_step=lambda done, _: steps.append(done))
    assert steps == [2, 3] and len(optimizer.recorded) == 2
    assert {"loss", "loss_ce", "loss_mask_unscaled", "lr", "grad_norm", "skipped_samples"} <= stats.keys()


def test_gradient_norm_is_returned_without_clipping():
    parameters = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))]
    parameters[0].grad = torch.tensor([3.0, 0.0, 0.0])
    parameters[1].grad = torch.tensor([0.0, 4.0])
    assert gradient_norm(parameters, 0.0).item() == pytest.approx(5.0)
    assert parameters[0].grad[0] == 3.0  # untouched
    assert gradient_norm(parameters, 1.0).item() == pytest.approx(5.0)  # norm before clipping
    assert parameters[0].grad[0].item() == pytest.approx(0.6, rel=1e-5)


class NanCriterion(nn.Module):
    weight_dict = {"loss_ce": 1.0}

    def forward(self, outputs, targets):
        return {"loss_ce": outputs["pred_logits"].sum() * math.nan}


def test_non_finite_loss_stops_before_the_step(tiny):
    model, _ = tiny
    optimizer = RecordingOptimizer([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(FloatingPointError, match="epoch 3, iteration 0"):
        train_one_epoch(model, NanCriterion(), list(batches([0], 1)), optimizer, torch.device("cpu"), 3, max_norm=0.1,
                        num_iterations=1)
    assert optimizer.recorded == []


def test_param_groups_follow_the_original_order():
    model, _ = build_tiny_model(freeze_text_encoder=False)
    args = build_args({"lr": 1e-4, "lr_backbone": 5e-5, "lr_text_encoder": 1e-5, "lr_linear_proj_mult": 0.5,
                       "lr_drop": [3, 5]})
    optimizer, scheduler = build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 5e-5, 1e-5, 5e-5]
    assert all("backbone.0" in n for n in groups[1]) and groups[1]
    assert all("text_encoder" in n for n in groups[2]) and groups[2]
    assert all("reference_points" in n or "sampling_offsets" in n for n in groups[3]) and groups[3]
    assert not any("backbone.0" in n or "text_encoder" in n or "sampling_offsets" in n for n in groups[0])
    assert sum(map(len, groups)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert optimizer.defaults["weight_decay"] == args.weight_decay and sorted(scheduler.milestones) == [3, 5]


def test_skipped_samples_are_counted_and_logged(tiny, caplog):
    model, criterion = tiny
    optimizer = RecordingOptimizer([p for p in model.parameters() if p.requires_grad])
    samples, targets = next(batches([0], 1))
    targets[0]["skipped"] = ["video v, frame 00005: frame /x/00005.jpg cannot be read"]
    stats = train_one_epoch(model, criterion, [(samples, targets), next(batches([1], 1))], optimizer,
                            torch.device("cpu"), 0, max_norm=0.1, num_iterations=2)
    assert stats["skipped_samples"] == 1
    assert "skipped 1 bad samples" in caplog.text and "00005.jpg" in caplog.text


def test_bfloat16_autocast_step_runs_the_model_in_bfloat16_and_the_losses_in_float32(tiny):
    """--amp on the CPU (util/amp.py): the layers compute in bfloat16, the criterion gets float32 outputs,
    the gradients are float32 and point where float32's do."""
    model, criterion = tiny
    layer_dtypes, criterion_dtypes = set(), set()
    hooks = [
        model.transformer.encoder.layers[0].linear1.register_forward_hook(lambda m, i, o: layer_dtypes.add(o.dtype)),
        criterion.register_forward_pre_hook(lambda m, args: criterion_dtypes.add(args[0]["pred_masks"].dtype)),
    ]
    gradients = {}
    try:
        for amp_dtype in (None, torch.bfloat16):
            layer_dtypes.clear()
            criterion_dtypes.clear()
            optimizer = RecordingOptimizer([p for p in model.parameters() if p.requires_grad])
            stats = train_one_epoch(model, criterion, list(batches([0, 1], 2)), optimizer, torch.device("cpu"), 0,
                                    max_norm=0.0, num_iterations=1, amp_dtype=amp_dtype)
            assert math.isfinite(stats["loss"])
            assert layer_dtypes == {amp_dtype or torch.float32} and criterion_dtypes == {torch.float32}
            gradients[amp_dtype] = torch.cat([g.flatten() for g in optimizer.recorded[0]])
    finally:
        for hook in hooks:
            hook.remove()
    low, full = gradients[torch.bfloat16], gradients[None]
    assert low.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: cosine similarity measured 0.998 on this model and batch
    assert torch.nn.functional.cosine_similarity(low, full, dim=0) > 0.99
