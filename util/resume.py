"""What a resumable training checkpoint holds, and how a run continues from one.

A checkpoint has the original's keys — ``model``, ``optimizer``, ``lr_scheduler``, ``epoch``,
``args`` — plus what exact resumption needs:

* ``rng``: the global random states of every rank (python, NumPy, torch, CUDA), list index = rank;
* ``world_size``: to check that those states and the sampler position still apply;
* mid-epoch checkpoints only: ``iteration`` (batches of epoch ``epoch`` already trained) and
  ``metrics`` (the epoch's meter totals so far). Without ``iteration``, ``epoch`` is finished and
  training continues with ``epoch + 1``, as in the original;
* ``grad_scaler`` with float16 AMP.

Data order and augmentation are functions of (seed, epoch, index) (:mod:`datasets.loader`), so
restoring these states and skipping ``iteration`` batches continues the interrupted run exactly.
"""
from __future__ import annotations

import argparse
import bisect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from util.checkpoint import load_model_state, model_state_from_checkpoint
from util.dist import all_gather_object
from util.random_state import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)

OPTIMIZER_IMPLEMENTATION_KEYS = ("fused", "foreach")


@dataclass
class TrainingProgress:
    """Where training (re)starts: epoch, batches of it already done, and the meter totals of those batches."""

    start_epoch: int = 0
    start_iteration: int = 0
    metrics: dict[str, tuple[float, int]] = field(default_factory=dict)


def training_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, args: argparse.Namespace, *, epoch: int,
                        iteration: int | None = None, metrics: dict | None = None,
                        grad_scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring). Collective: every rank must call it."""
    rng = all_gather_object(capture_rng_state())
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "args": args,
        "rng": rng,
        "world_size": len(rng),
    }
    if iteration is not None:
        checkpoint["iteration"] = iteration
        checkpoint["metrics"] = dict(metrics or {})
    if grad_scaler is not None and grad_scaler.is_enabled():
        checkpoint["grad_scaler"] = grad_scaler.state_dict()
    return checkpoint


def restore_training_state(checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.MultiStepLR, *, rank: int, world_size: int,
                           batch_size: int, source: str, expressions_per_clip: int = 1,
                           grad_scaler: torch.amp.GradScaler | None = None) -> TrainingProgress:
    """Load ``checkpoint`` into the training objects (``--resume``) and say where to continue.

    The model loads non-strictly (missing and unexpected keys are logged), as in the original.
    A checkpoint without optimizer/scheduler/epoch (a released model) only sets the weights.
    Learning rates follow the original's resume logic: the current options'
    initial lrs become the schedule's base lrs and the milestones come from the checkpoint; when
    the initial lrs are unchanged, the checkpoint's lrs are kept bit for bit. How the optimizer
    computes its update (fused AdamW or not) is this run's choice, not restored.

    Raises:
        ValueError: a mid-epoch checkpoint written with another world size, batch size or
            ``--expressions_per_clip`` (its sampler position would not apply); resume from an
            end-of-epoch checkpoint instead.
    """
    report = load_model_state(model, model_state_from_checkpoint(checkpoint, source=source), strict=False, source=source)
    if not report.complete:
        logger.warning("resume %s: missing keys %s; unexpected keys %s", source, list(report.missing_keys),
                       list(report.unexpected_keys))
    if not all(key in checkpoint for key in ("optimizer", "lr_scheduler", "epoch")):
        logger.info("resume %s: no optimizer/scheduler/epoch, loaded the weights only", source)
        return TrainingProgress()

    mid_epoch = "iteration" in checkpoint
    saved_world_size = checkpoint.get("world_size")
    saved_args = checkpoint.get("args")
    saved_batch_size = getattr(saved_args, "batch_size", batch_size)
    saved_sharing = getattr(saved_args, "expressions_per_clip", 1)
    if mid_epoch and (saved_world_size != world_size or saved_batch_size != batch_size
                      or saved_sharing != expressions_per_clip):
        raise ValueError(
            f"{source} was written in the middle of epoch {checkpoint['epoch']} by {saved_world_size} processes with "
            f"--batch_size {saved_batch_size} --expressions_per_clip {saved_sharing}; this run has {world_size} "
            f"processes with --batch_size {batch_size} --expressions_per_clip {expressions_per_clip}, so its "
            "position in the epoch does not apply. Resume from an end-of-epoch checkpoint (checkpointNNNN.pth) or "
            "with the same settings"
        )

    initial_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    implementation = [{key: group.get(key) for key in OPTIMIZER_IMPLEMENTATION_KEYS} for group in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint["optimizer"])
    for group, chosen in zip(optimizer.param_groups, implementation):
        group.update(chosen)  # how this run computes the update (e.g. fused AdamW) is not state to restore
    scheduler.load_state_dict(checkpoint["lr_scheduler"])
    saved_initial_lrs = [group.get("initial_lr") for group in optimizer.param_groups]
    for group, initial_lr in zip(optimizer.param_groups, initial_lrs):
        group["initial_lr"] = initial_lr
    scheduler.base_lrs = list(initial_lrs)
    if saved_initial_lrs != initial_lrs:
        # the original's scheduler.step(last_epoch): closed form with the checkpoint's milestones
        drops = bisect.bisect_right(sorted(scheduler.milestones.elements()), scheduler.last_epoch)
        for group, initial_lr in zip(optimizer.param_groups, initial_lrs):
            group["lr"] = initial_lr * scheduler.gamma ** drops
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        logger.info("resume %s: initial lrs changed from %s to %s; lrs are now %s", source, saved_initial_lrs,
                    initial_lrs, scheduler._last_lr)
    if grad_scaler is not None and "grad_scaler" in checkpoint:
        grad_scaler.load_state_dict(checkpoint["grad_scaler"])

    rng = checkpoint.get("rng")
    if rng is None:
        logger.warning("resume %s: the checkpoint has no random states; the random stream restarts", source)
    elif saved_world_size == world_size:
        restore_rng_state(rng[rank])
    else:
        logger.warning("resume %s: random states were saved for %s processes, not %d; the random stream restarts",
                       source, saved_world_size, world_size)
    if mid_epoch:
        return TrainingProgress(checkpoint["epoch"], checkpoint["iteration"], checkpoint.get("metrics", {}))
    return TrainingProgress(checkpoint["epoch"] + 1)
