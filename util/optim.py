"""Optimizer and learning-rate schedule of ReferFormer training.

AdamW over four parameter groups, in the original's order (the order is part of the checkpoint
format: optimizer state is matched by position):

0. everything else, ``--lr``;
1. names containing one of ``--lr_backbone_names``, ``--lr_backbone``;
2. names containing one of ``--lr_text_encoder_names``, ``--lr_text_encoder`` (empty when frozen);
3. names containing one of ``--lr_linear_proj_names``, ``--lr × --lr_linear_proj_mult``.

Weight decay applies to all parameters; the lr drops ×0.1 after each epoch in ``--lr_drop``.

The update is the same as the original's; where every parameter lives on a device with PyTorch's
fused AdamW kernel (CPU, CUDA), that kernel computes it: one pass over all parameters instead of
about ten small operations per parameter (on the CPU quick start's model the optimizer step took
58 ms of a 728 ms iteration, 17 ms fused: ``benchmarks/quickstart_train.py``; parameters agree with
the per-parameter loop to float rounding, ``tests/util/test_optim.py``).
"""
from __future__ import annotations

import argparse
from typing import Iterable, Sequence

import torch
from torch import nn

LR_DROP_FACTOR = 0.1
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(keyword in name for keyword in keywords)


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    lr_backbone: float,
    lr_text_encoder: float,
    lr_linear_proj_mult: float,
    backbone_names: Sequence[str],
    text_encoder_names: Sequence[str],
    linear_proj_names: Sequence[str],
) -> list[dict]:
    """The four groups above over the trainable parameters (``requires_grad``), in iteration order.

    A parameter matching several keyword lists appears in several groups, as in the original
    (``torch.optim`` then refuses it): choose the name lists so that they do not overlap.
    """
    trainable = [(name, p) for name, p in named_parameters if p.requires_grad]
    special = (backbone_names, text_encoder_names, linear_proj_names)
    return [
        {"params": [p for n, p in trainable if not any(_matches(n, keys) for keys in special)], "lr": lr},
        {"params": [p for n, p in trainable if _matches(n, backbone_names)], "lr": lr_backbone},
        {"params": [p for n, p in trainable if _matches(n, text_encoder_names)], "lr": lr_text_encoder},
        {"params": [p for n, p in trainable if _matches(n, linear_proj_names)], "lr": lr * lr_linear_proj_mult},
    ]


def fused_adamw_applies(parameters: Iterable[nn.Parameter]) -> bool:
    """Whether PyTorch's fused AdamW can update ``parameters``: floating point, all on one device type that has it."""
    parameters = [p for p in parameters if p.requires_grad]
    device_types = {p.device.type for p in parameters}
    return (len(device_types) == 1 and device_types <= set(FUSED_ADAMW_DEVICES)
            and all(p.is_floating_point() for p in parameters))


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.MultiStepLR]:
    """AdamW (betas 0.9/0.999, eps 1e-8) over :func:`param_groups` and its MultiStepLR schedule."""
    groups = param_groups(
        model.named_parameters(),
        lr=args.lr, lr_backbone=args.lr_backbone, lr_text_encoder=args.lr_text_encoder,
        lr_linear_proj_mult=args.lr_linear_proj_mult, backbone_names=args.lr_backbone_names,
        text_encoder_names=args.lr_text_encoder_names, linear_proj_names=args.lr_linear_proj_names,
    )
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay,
                                  fused=fused_adamw_applies(model.parameters()) or None)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_drop, gamma=LR_DROP_FACTOR)
    return optimizer, scheduler
