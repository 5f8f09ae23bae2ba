"""The optimizer: PyTorch's fused AdamW where it applies, the same updates as the per-parameter AdamW, kept on resume."""
import argparse

import pytest
import torch
from torch import nn

from util.optim import build_optimizer, fused_adamw_applies
from util.resume import restore_training_state


def optimizer_args() -> argparse.Namespace:
    return argparse.Namespace(lr=1e-3, lr_backbone=1e-4, lr_text_encoder=0.0, lr_linear_proj_mult=1.0, weight_decay=5e-4,
                              lr_backbone_names=["backbone"], lr_text_encoder_names=["text_encoder"],
                              lr_linear_proj_names=["sampling_offsets"], lr_drop=[6, 8])


class TwoPartModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(37, 19)
        self.head = nn.Linear(19, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_cpu_parameters_use_the_fused_kernel_and_get_the_per_parameter_updates():
    torch.manual_seed(0)
    model = TwoPartModel()
    reference_model = TwoPartModel()
    reference_model.load_state_dict(model.state_dict())
    optimizer, _ = build_optimizer(model, optimizer_args())
    assert all(group["fused"] for group in optimizer.param_groups)
    reference, _ = build_optimizer(reference_model, optimizer_args())
    reference = torch.optim.AdamW([{k: v for k, v in g.items() if k != "fused"} for g in reference.param_groups],
                                  weight_decay=5e-4, fused=False)  # the original's per-parameter loop
    start = [p.detach().clone() for p in model.parameters()]
    for step in range(20):
        for params in (model.parameters(), reference_model.parameters()):
            for index, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * step + index))
        optimizer.step()
        reference.step()
    for p, q, p0 in zip(model.parameters(), reference_model.parameters(), start):
        assert (p - p0).abs().max() > 1e-3  # the parameters moved
        # measured: 2.4e-7 at most (float32 rounding of the two evaluation orders)
        torch.testing.assert_close(p, q, rtol=0, atol=2e-6)


def test_fused_only_where_every_parameter_can_take_it():
    on_cpu = [nn.Parameter(torch.zeros(3))]
    assert fused_adamw_applies(on_cpu)
    assert not fused_adamw_applies(on_cpu + [nn.Parameter(torch.zeros(3, device="meta"))])
    assert not fused_adamw_applies([nn.Parameter(torch.zeros(3, device="meta"))])
    frozen_elsewhere = nn.Parameter(torch.zeros(3, device="meta"), requires_grad=False)
    assert fused_adamw_applies(on_cpu + [frozen_elsewhere])


def test_resuming_a_per_parameter_adamw_checkpoint_keeps_the_fused_kernel(caplog):
    torch.manual_seed(0)
    args = optimizer_args()
    old_model = TwoPartModel()
    old_optimizer = torch.optim.AdamW(old_model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    old_model(torch.randn(2, 37)).sum().backward()
    old_optimizer.step()
    model = TwoPartModel()
    optimizer, scheduler = build_optimizer(model, args)
    saved_groups = [{**g, "params": list(range(len(g["params"])))} for g in optimizer.state_dict()["param_groups"]]
    state = {  # the four groups of build_optimizer, written by an optimizer without the fused kernel
        "state": {i: s for i, s in enumerate(old_optimizer.state_dict()["state"].values())},
        "param_groups": [{**g, "fused": None, "foreach": None} for g in saved_groups],
    }
    checkpoint = {"model": old_model.state_dict(), "optimizer": state, "lr_scheduler": scheduler.state_dict(), "epoch": 0}
    restore_training_state(checkpoint, model, optimizer, scheduler, rank=0, world_size=1, batch_size=1, source="old.pth")
    assert "old.pth: the checkpoint has no random states" in caplog.text  # the original's checkpoints have none
    assert all(group["fused"] for group in optimizer.param_groups)
    assert optimizer.state[model.backbone.weight]["step"] == 1
    model(torch.randn(2, 37)).sum().backward()
    optimizer.step()  # the fused kernel takes the loaded state
    assert optimizer.state[model.backbone.weight]["step"] == 2



@pytest.mark.parametrize("saved, current, fails", [
    ({"batch_size": 2, "expressions_per_clip": 3}, {"batch_size": 2, "expressions_per_clip": 3}, False),
    ({"batch_size": 2, "expressions_per_clip": 3}, {"batch_size": 2, "expressions_per_clip": 1}, True),
    ({"batch_size": 2}, {"batch_size": 2, "expressions_per_clip": 2}, True),  # written before the option: 1
    ({"batch_size": 2, "expressions_per_clip": 3}, {"batch_size": 4, "expressions_per_clip": 3}, True),
])
def test_mid_epoch_resume_needs_the_same_batches(saved, current, fails):
    model = TwoPartModel()
    optimizer, scheduler = build_optimizer(model, optimizer_args())
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": scheduler.state_dict(), "epoch": 0, "iteration": 4, "world_size": 1,
                  "args": argparse.Namespace(**saved)}
    if not fails:
        progress = restore_training_state(checkpoint, model, optimizer, scheduler, rank=0, world_size=1,
                                          source="mid.pth", **current)
        assert progress.start_iteration == 4
        return
    with pytest.raises(ValueError, match=r"mid.pth was written in the middle of epoch 0 .*--expressions_per_clip "
                                         r"\d; this run .*--batch_size \d --expressions_per_clip \d"):
        restore_training_state(checkpoint, model, optimizer, scheduler, rank=0, world_size=1, source="mid.pth",
                               **current)
