"""Train ReferFormer on Ref-YouTube-VOS, Ref-DAVIS17 or the synthetic Ref-Shapes of the quick start
(one process, or ``torchrun --nproc_per_node N``).

    python main.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \\
        --output_dir output/ytvos_r50 --pretrained_weights r50_pretrained.pth --epochs 6 --lr_drop 3 5

The recipe: seed → build the model → parameter groups → data → resume → epochs → logs.
Each epoch writes ``checkpoint.pth`` and ``checkpointNNNN.pth`` (``--save_every_iters`` also
saves ``checkpoint.pth`` during an epoch) and appends a line to ``log.txt``; ``--resume auto``
continues from the newest complete checkpoint of ``--output_dir``. See docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from datasets import build_dataset
from datasets.loader import build_train_loader, set_loader_epoch
from engine import train_one_epoch
from models import build_model
from opts import get_args_parser, validate_args
from util.checkpoint import (LATEST_CHECKPOINT, epoch_checkpoint_name, find_latest_checkpoint, load_checkpoint,
                             load_pretrained_weights, save_checkpoint)
from util.dist import DistributedInfo, barrier, init_distributed_mode
from util.logger import MetricLogger, append_json_line, setup_logging
from util.optim import build_optimizer
from util.random_state import seed_everything
from util.resume import TrainingProgress, restore_training_state, training_checkpoint

logger = logging.getLogger("main")

EPOCH_LOG = "log.txt"
ITERATION_LOG = "log_iter.txt"
ARGS_FILE = "args.json"
TRAINABLE_DATASETS = ("ytvos", "davis", "ref_shapes")


def resolve_device(name: str, dist_info: DistributedInfo) -> torch.device:
    """``--device``, with the local GPU of this process under torchrun; a clear error without CUDA."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was requested but CUDA is not available; pass --device cpu")
        if dist_info.distributed:
            device = torch.device("cuda", dist_info.local_rank)
    return device


def amp_settings(enabled: bool, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``--amp``: bfloat16 autocast on GPUs that support it, else float16 with a gradient scaler; off on the CPU."""
    if not enabled:
        return None, None
    if device.type != "cuda":
        logger.warning("--amp is ignored on %s: mixed precision is only used on CUDA", device)
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def main(args: argparse.Namespace) -> None:
    validate_args(args)
    if args.dataset_file not in TRAINABLE_DATASETS:
        raise ValueError(f"main.py trains {TRAINABLE_DATASETS}; --dataset_file {args.dataset_file} "
                         "(A2D, JHMDB, RefCOCO, joint) cannot be trained by this version")
    dist_info = init_distributed_mode(args.device, args.dist_url)
    main_process = dist_info.rank == 0
    output_dir = Path(args.output_dir)
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, is_main=main_process)
    logger.info("command: %s", " ".join(sys.argv))
    device = resolve_device(args.device, dist_info)
    seed_everything(args.seed + dist_info.rank)

    # model, loss and optimizer
    model, criterion, _ = build_model(args)
    if args.pretrained_weights:
        load_pretrained_weights(model, args.pretrained_weights, weights_only=not args.unsafe_load)
        logger.info("loaded pretrained weights (without the class head) from %s", args.pretrained_weights)
    model.to(device)
    model_without_ddp = model
    if dist_info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer, lr_scheduler = build_optimizer(model_without_ddp, args)
    amp_dtype, grad_scaler = amp_settings(args.amp, device)
    n_parameters = sum(p.numel() for p in model_without_ddp.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d", n_parameters)

    # data
    dataset = build_dataset(args.dataset_file, "train", args)
    loader = build_train_loader(dataset, batch_size=args.batch_size, num_workers=args.num_workers, seed=args.seed,
                                rank=dist_info.rank, world_size=dist_info.world_size, pin_memory=device.type == "cuda")
    iterations_per_epoch = len(loader.batch_sampler)
    if iterations_per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples make no full batch of {args.batch_size} per process on "
                         f"{dist_info.world_size} processes; lower --batch_size")
    logger.info("%d training samples, %d iterations per epoch per process", len(dataset), iterations_per_epoch)

    # resume
    progress = TrainingProgress(start_epoch=args.start_epoch)
    resume_path = find_latest_checkpoint(output_dir) if args.resume == "auto" else (args.resume or None)
    if args.resume == "auto" and resume_path is None:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", output_dir)
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path, weights_only=not args.unsafe_load)
        progress = restore_training_state(
            checkpoint, model_without_ddp, optimizer, lr_scheduler, rank=dist_info.rank,
            world_size=dist_info.world_size, batch_size=args.batch_size, source=str(resume_path), grad_scaler=grad_scaler,
        )
        del checkpoint
        logger.info("resumed from %s: epoch %d, iteration %d", resume_path, progress.start_epoch, progress.start_iteration)
    if main_process:
        (output_dir / ARGS_FILE).write_text(json.dumps(vars(args), indent=2, default=str) + "\n")

    def save(epoch: int, iteration: int | None, metrics: MetricLogger | None = None) -> None:
        checkpoint = training_checkpoint(model_without_ddp, optimizer, lr_scheduler, args, epoch=epoch,
                                         iteration=iteration, metrics=metrics.state_dict() if metrics else None,
                                         grad_scaler=grad_scaler)
        if main_process:
            names = [LATEST_CHECKPOINT] if iteration is not None else [LATEST_CHECKPOINT, epoch_checkpoint_name(epoch)]
            for name in names:
                save_checkpoint(checkpoint, output_dir / name)
            logger.info("saved %s (epoch %d%s)", ", ".join(names), epoch,
                        "" if iteration is None else f", iteration {iteration}")
        barrier()

    # training
    logger.info("training epochs %d..%d", progress.start_epoch, args.epochs - 1)
    for epoch in range(progress.start_epoch, args.epochs):
        start_iteration = progress.start_iteration if epoch == progress.start_epoch else 0
        metrics = MetricLogger()
        if start_iteration:
            metrics.load_state_dict(progress.metrics)
        set_loader_epoch(loader, epoch, start_iteration)

        def on_step(done: int, step_metrics: MetricLogger, epoch: int = epoch) -> None:
            if args.save_every_iters and done % args.save_every_iters == 0 and done < iterations_per_epoch:
                save(epoch, done, step_metrics)

        train_stats = train_one_epoch(
            model, criterion, loader, optimizer, device, epoch, max_norm=args.clip_max_norm,
            num_iterations=iterations_per_epoch, start_iteration=start_iteration, accum_iter=args.accum_iter,
            amp_dtype=amp_dtype, grad_scaler=grad_scaler, metrics=metrics, on_step=on_step,
            print_freq=args.print_freq, iteration_log=output_dir / ITERATION_LOG if main_process else None,
        )
        lr_scheduler.step()
        save(epoch, None)
        if main_process:
            append_json_line(output_dir / EPOCH_LOG, {**{f"train_{k}": v for k, v in train_stats.items()},
                                                      "epoch": epoch, "n_parameters": n_parameters})
    logger.info("training finished")
    if dist_info.distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
