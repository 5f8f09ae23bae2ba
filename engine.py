"""The loops: :func:`train_one_epoch` and the generic :func:`evaluate`.

Training follows the original: forward, criterion, weighted sum of the losses; the
losses are averaged over processes for logging and training stops if that average is not
finite; backward, gradient clipping, optimizer step. New here: gradient accumulation over
``accum_iter`` batches, mixed precision, starting part-way through an epoch, and a callback
after every optimizer step (used for mid-epoch checkpoints).
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.cpu_inference import cpu_inference
from util.amp import autocast
from util.dist import all_gather_object, get_world_size, is_main_process, reduce_dict
from util.logger import MetricLogger, append_json_line

logger = logging.getLogger(__name__)

# Meters shown in the periodic log line (log_iter.txt has them all).
SUMMARY_METERS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "lr", "grad_norm")


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """Move the tensors of every target dict to ``device`` (captions and names stay)."""
    return [{k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _to_float32(value: Any) -> Any:
    """Low-precision floating tensors (AMP outputs) → float32, so the losses are computed in float32."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def gradient_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Total L2 norm of the gradients, clipping them to ``max_norm`` first if ``max_norm > 0``.

    The norm is returned in both cases (the original returned nothing without clipping).
    """
    parameters = [p for p in parameters if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in parameters])


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    *,
    max_norm: float,
    num_iterations: int,
    start_iteration: int = 0,
    accum_iter: int = 1,
    amp_dtype: torch.dtype | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    metrics: MetricLogger | None = None,
    on_step: Callable[[int, MetricLogger], None] | None = None,
    print_freq: int = 10,
    iteration_log: str | Path | None = None,
) -> dict[str, float]:
    """Train one epoch (or its remainder) and return the epoch averages of the logged values.

    Args:
        data_loader: yields ``(NestedTensor [B, T, 3, H, W], targets)``; already positioned at
            ``start_iteration`` (see :func:`datasets.loader.set_loader_epoch`).
        num_iterations: batches in the whole epoch (for progress, accumulation groups and logs).
        start_iteration: batches of this epoch already trained (a resumed run); must be the
            start of an accumulation group.
        accum_iter: batches per optimizer step. The loss of each batch is divided by the size of
            its group (the last group of an epoch may be shorter), so a step sees the mean gradient.
        amp_dtype: autocast dtype for the forward pass (None: full precision); the losses are
            computed in float32. ``grad_scaler`` scales float16 losses.
        metrics: meters to continue (a resumed epoch); a new one by default.
        on_step: called after every optimizer step with the number of batches done in this epoch.
        iteration_log: JSON-lines file that gets the running values every ``print_freq`` batches.

    Logged values: ``loss``, every weighted loss, every ``<name>_unscaled``, ``lr`` (group 0),
    ``grad_norm`` (before clipping, once per step) and ``skipped_samples`` (bad samples replaced).

    Raises:
        FloatingPointError: the process-averaged loss is not finite; no step is taken.
    """
    if start_iteration % accum_iter:
        raise ValueError(f"start_iteration {start_iteration} is not a multiple of accum_iter {accum_iter}")
    model.train()
    criterion.train()
    metrics = metrics if metrics is not None else MetricLogger()
    weight_dict = criterion.weight_dict
    main_process = is_main_process()
    progress = tqdm(total=num_iterations, initial=start_iteration, desc=f"epoch {epoch}", disable=not main_process,
                    dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for iteration, (samples, targets) in enumerate(data_loader, start=start_iteration):
        group_start = iteration - iteration % accum_iter
        group_size = min(accum_iter, num_iterations - group_start)
        steps_now = iteration == group_start + group_size - 1
        samples = samples.to(device, non_blocking=True)
        captions = [t["caption"] for t in targets]
        targets = targets_to(targets, device)

        sync = contextlib.nullcontext()
        if isinstance(model, DistributedDataParallel) and not steps_now:
            sync = model.no_sync()  # gradients are all-reduced once per optimizer step
        with sync:
            with autocast(device, amp_dtype):
                outputs = model(samples, captions, targets)
            loss_dict = criterion(_to_float32(outputs), targets)
            losses = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

            num_skipped = sum(len(t.get("skipped", ())) for t in targets)
            reduced = reduce_dict({**{k: v.detach() for k, v in loss_dict.items()},
                                   "skipped": torch.tensor(float(num_skipped), device=device)})
            num_skipped_all = round(reduced.pop("skipped").item() * get_world_size())
            scaled = {k: v * weight_dict[k] for k, v in reduced.items() if k in weight_dict}
            loss_value = sum(scaled.values()).item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss is {loss_value} at epoch {epoch}, iteration {iteration}; stopping before the optimizer step "
                    f"(no checkpoint is written). Clips: {[(t.get('video'), t.get('exp_id')) for t in targets]}; "
                    f"losses: { {k: v.item() for k, v in reduced.items()} }"
                )
            loss = losses / group_size
            (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()

        if num_skipped_all:
            _log_skipped(targets, epoch, iteration)
        metrics.update(loss=loss_value, **{k: v.item() for k, v in scaled.items()},
                       **{f"{k}_unscaled": v.item() for k, v in reduced.items()},
                       lr=optimizer.param_groups[0]["lr"], skipped_samples=num_skipped_all)
        if steps_now:
            if grad_scaler is not None:
                grad_scaler.unscale_(optimizer)
            metrics.update(grad_norm=gradient_norm(model.parameters(), max_norm).item())
            if grad_scaler is not None:
                grad_scaler.step(optimizer)
                grad_scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        done = iteration + 1
        if done % print_freq == 0 or done == num_iterations:
            logger.info("epoch %d [%d/%d] %s", epoch, done, num_iterations, metrics.format(SUMMARY_METERS))
            if main_process and iteration_log is not None:
                append_json_line(iteration_log, {"epoch": epoch, "iteration": done, "iterations_per_epoch": num_iterations,
                                                 **metrics.latest()})
        if steps_now and on_step is not None:
            on_step(done, metrics)
    progress.close()
    stats = metrics.global_averages()
    if "skipped_samples" in metrics.meters:
        stats["skipped_samples"] = metrics.meters["skipped_samples"].total
    return stats


def _log_skipped(targets: list[dict], epoch: int, iteration: int) -> None:
    """Collect the descriptions of bad samples replaced in this batch on all ranks; rank 0 logs them."""
    local = [entry for t in targets for entry in t.get("skipped", ())]
    gathered = [entry for entries in all_gather_object(local) for entry in entries]
    if is_main_process():
        logger.warning("epoch %d iteration %d: skipped %d bad samples:\n  %s", epoch, iteration, len(gathered),
                       "\n  ".join(gathered))


class Evaluator(Protocol):
    """Accumulates predictions and turns them into metrics (reset → process per batch → evaluate)."""

    def reset(self) -> None: ...

    def process(self, outputs: Mapping[str, Any], targets: list[dict]) -> None: ...

    def evaluate(self) -> dict[str, float]: ...


@torch.no_grad()
def evaluate(model: nn.Module, data_loader: Iterable, evaluator: Evaluator, device: torch.device, *,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Run ``model`` over ``data_loader`` (``(samples, targets)`` batches) and score it with ``evaluator``.

    ``amp_dtype``: run the forward under autocast in this dtype (the evaluator gets float32 outputs). On the
    CPU the forward uses the faster float32 kernels of :func:`models.cpu_inference.cpu_inference`. The
    evaluator gathers across processes in its ``evaluate`` if it needs to.
    """
    model.eval()
    evaluator.reset()
    for samples, targets in tqdm(data_loader, desc="evaluate", disable=not is_main_process(), dynamic_ncols=True):
        captions = [t["caption"] for t in targets]
        targets = targets_to(targets, device)
        with autocast(device, amp_dtype), cpu_inference(model):
            outputs = model(samples.to(device), captions, targets)
        evaluator.process(_to_float32(outputs), targets)
    return evaluator.evaluate()
