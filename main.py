"""Train and evaluate ReferFormer on every dataset (one process, or ``torchrun --nproc_per_node N``).

    python main.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \\
        --output_dir output/ytvos_r50 --pretrained_weights pretrained_weights/r50_pretrained.pth --epochs 6 --lr_drop 3 5
    python main.py --dataset_file a2d --with_box_refine --freeze_text_encoder --batch_size 2 \\
        --backbone video_swin_t_p4w7 --output_dir output/a2d_video_swin_tiny \\
        --pretrained_weights pretrained_weights/video_swin_tiny_pretrained.pth --epochs 6 --lr_drop 3 5
    python main.py --dataset_file jhmdb --resume a2d_video_swin_tiny.pth --eval

``--dataset_file``: ``ytvos``, ``davis``, ``ref_shapes`` (the quick start), ``a2d``, ``refcoco``,
``refcoco+``, ``refcocog``, ``all`` (RefCOCO/+/g pretraining on their concatenation), ``joint``
(RefCOCO/+/g as pseudo-videos with Ref-YouTube-VOS), ``mevis`` (MeViS), ``mevis_ytvos`` (MeViS with
Ref-YouTube-VOS); ``jhmdb`` is evaluated only.

The recipe: seed → build the model → its starting weights → parameter groups → data → resume →
epochs → logs. A ResNet backbone trained afresh starts from torchvision's ImageNet weights, as in
the original (:func:`imagenet_start_weights`).
Each epoch writes ``checkpoint.pth`` and ``checkpointNNNN.pth`` (``--save_every_iters`` also
saves ``checkpoint.pth`` during an epoch) and appends a line to ``log.txt``; ``--resume auto``
continues from the newest complete checkpoint of ``--output_dir``. A2D and RefCOCO runs are
evaluated after every epoch (``eval_epochNNNN.json``, and ``test_*`` keys in ``log.txt``);
``--eval`` only evaluates the ``--resume`` weights (``eval.json``), building the model with the options
stored with them where the command line does not give them. See docs/training.md (recipes,
outputs, evaluation metrics) and docs/model_zoo.md (the released models).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from datasets import build_dataset, build_evaluations
from datasets.loader import build_eval_loader, build_train_loader, set_loader_epoch
from engine import Evaluator, evaluate, train_one_epoch
from models import build_model
from models.backbone import RESNET_CHANNELS, resnet_imagenet_weights
from opts import EVALUATION_DATASETS, get_args_parser, validate_args
from models.pretrained import load_trained_model
from util.checkpoint import (LATEST_CHECKPOINT, epoch_checkpoint_name, find_latest_checkpoint, load_checkpoint,
                             load_pretrained_weights, load_resnet_imagenet_weights, save_checkpoint,
                             torchvision_weights_file)
from util.dist import DistributedInfo, barrier, broadcast_buffers, init_distributed_mode, wrap_data_parallel
from util.amp import amp_settings
from util.logger import MetricLogger, append_json_line, format_metrics, setup_logging
from util.memory import reuse_freed_memory
from util.optim import build_optimizer
from util.random_state import seed_everything
from util.resume import TrainingProgress, restore_training_state, training_checkpoint
from util.threads import limit_threads_to_cpu_budget

logger = logging.getLogger("main")

EPOCH_LOG = "log.txt"
ITERATION_LOG = "log_iter.txt"
ARGS_FILE = "args.json"
EVAL_FILE = "eval.json"
# jhmdb has no training set: the A2D model is evaluated on it (as in the original's papers and scripts).
EVALUATION_ONLY_DATASETS = ("jhmdb",)


def resolve_device(name: str, dist_info: DistributedInfo) -> torch.device:
    """``--device``, with the local GPU of this process under torchrun; a clear error without CUDA."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was requested but CUDA is not available; pass --device cpu")
        if dist_info.distributed:
            device = torch.device("cuda", dist_info.local_rank)
    return device


@dataclass(frozen=True)
class Evaluation:
    """The validation data of one dataset: its loader over this process's share, and its evaluator."""

    name: str
    loader: DataLoader
    evaluator: Evaluator


def build_evaluation_loaders(args: argparse.Namespace, device: torch.device,
                             dist_info: DistributedInfo) -> list[Evaluation]:
    """The validation data of ``--dataset_file`` (each RefCOCO dataset of ``all`` separately), read once."""
    return [
        Evaluation(name, build_eval_loader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                                           rank=dist_info.rank, world_size=dist_info.world_size,
                                           pin_memory=device.type == "cuda"), evaluator)
        for name, (dataset, evaluator) in build_evaluations(args.dataset_file, args).items()
    ]


def run_evaluations(model: torch.nn.Module, evaluations: list[Evaluation], device: torch.device,
                    amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Evaluate ``model`` on every dataset of ``evaluations`` (under autocast in ``amp_dtype`` if given); their
    metrics in one dict, logged as tables."""
    results: dict[str, float] = {}
    for evaluation in evaluations:
        logger.info("evaluating on %s: %d samples", evaluation.name, len(evaluation.loader.dataset))
        metrics = evaluate(model, evaluation.loader, evaluation.evaluator, device, amp_dtype=amp_dtype)
        logger.info("%s results:\n%s", evaluation.name, format_metrics(metrics))
        results.update(metrics)
    return results


def write_results(path: Path, results: dict[str, float]) -> None:
    """The evaluation results as a JSON object (rank 0 only)."""
    path.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", path)


def evaluate_only(args: argparse.Namespace, device: torch.device, dist_info: DistributedInfo,
                  output_dir: Path) -> dict[str, float]:
    """``--eval``: the model of the ``--resume`` weights (a checkpoint file, a model folder or a Hugging Face Hub
    id), built with the options stored with them where the command line does not give them, evaluated."""
    checkpoint_path = find_latest_checkpoint(output_dir) if args.resume == "auto" else args.resume
    if not checkpoint_path:
        raise ValueError("--eval needs the weights to evaluate: --resume PATH (or 'auto' with a checkpoint in "
                         f"{output_dir})")
    model, args = load_trained_model(args, checkpoint_path)
    logger.info("evaluating the weights of %s", checkpoint_path)
    amp_dtype, _ = amp_settings(args.amp, device)
    results = run_evaluations(model.to(device), build_evaluation_loaders(args, device, dist_info), device, amp_dtype)
    if dist_info.rank == 0:
        write_results(output_dir / EVAL_FILE, results)
    return results


def imagenet_start_weights(args: argparse.Namespace, resume_path: str | Path | None,
                           dist_info: DistributedInfo) -> Path | None:
    """The torchvision ImageNet file a ResNet backbone starts training from, or None (training only).

    As in the original (``resnet50(pretrained=True)``), a ResNet starts from ``IMAGENET1K_V1``,
    unless ``--backbone_from_scratch`` asks for random weights, ``--backbone_pretrained`` names its own
    file, or ``--pretrained_weights`` / a resumed checkpoint (``resume_path``) replaces every weight
    anyway. The file comes from the torch hub cache; the first process of each machine downloads it
    when it is missing while the others wait.

    Raises:
        FileNotFoundError: the file is neither cached nor downloadable (naming where to put it).
    """
    if (args.backbone not in RESNET_CHANNELS or args.backbone_from_scratch or args.backbone_pretrained
            or args.pretrained_weights or resume_path is not None):
        return None
    weights = resnet_imagenet_weights(args.backbone)
    if dist_info.local_rank == 0:
        torchvision_weights_file(weights, download=True)
    barrier()
    return torchvision_weights_file(weights, download=False)


def main(args: argparse.Namespace) -> dict[str, float] | None:
    """Train (returns None) or, with ``--eval``, evaluate (returns the metrics)."""
    validate_args(args)
    if args.dataset_file in EVALUATION_ONLY_DATASETS and not args.eval:
        raise ValueError(f"--dataset_file {args.dataset_file} has no training set; evaluate an A2D model on it "
                         "with --eval --resume A2D_CHECKPOINT")
    dist_info = init_distributed_mode(args.device, args.dist_url, args.local_rank)
    main_process = dist_info.rank == 0
    output_dir = Path(args.output_dir)
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, is_main=main_process)
    logger.info("command: %s", " ".join(sys.argv))
    device = resolve_device(args.device, dist_info)
    if device.type == "cpu":
        reuse_freed_memory()
        limit_threads_to_cpu_budget(processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    seed_everything(args.seed + dist_info.rank)

    if args.eval:
        results = evaluate_only(args, device, dist_info, output_dir)
        if dist_info.distributed:
            torch.distributed.destroy_process_group()
        return results

    # model, loss and optimizer
    model, criterion, _ = build_model(args)
    resume_path = find_latest_checkpoint(output_dir) if args.resume == "auto" else (args.resume or None)
    if args.resume == "auto" and resume_path is None:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", output_dir)
    imagenet_file = imagenet_start_weights(args, resume_path, dist_info)
    if imagenet_file is not None:
        load_resnet_imagenet_weights(model.backbone[0].body, imagenet_file)  # checkpoint prefix backbone.0.body
        logger.info("the %s backbone starts from torchvision's ImageNet weights %s", args.backbone, imagenet_file)
    if args.pretrained_weights:
        load_pretrained_weights(model, args.pretrained_weights, weights_only=not args.unsafe_load)
        logger.info("loaded pretrained weights (without the class head) from %s", args.pretrained_weights)
    model.to(device)
    model_without_ddp = model
    if dist_info.distributed:
        model = wrap_data_parallel(model, device)
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
    logger.info("%d training %s, %d iterations per epoch per process", len(dataset),
                "samples" if args.expressions_per_clip == 1 else "clips (each shared by several expressions)",
                iterations_per_epoch)
    evaluations = (build_evaluation_loaders(args, device, dist_info) if args.dataset_file in EVALUATION_DATASETS
                   else [])

    # resume
    progress = TrainingProgress(start_epoch=args.start_epoch)
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path, weights_only=not args.unsafe_load)
        progress = restore_training_state(
            checkpoint, model_without_ddp, optimizer, lr_scheduler, rank=dist_info.rank,
            world_size=dist_info.world_size, batch_size=args.batch_size, source=str(resume_path),
            expressions_per_clip=args.expressions_per_clip, grad_scaler=grad_scaler,
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
        test_stats = {}
        if evaluations:
            broadcast_buffers(model_without_ddp)
            test_stats = run_evaluations(model_without_ddp, evaluations, device, amp_dtype)
            if main_process:
                write_results(output_dir / f"eval_epoch{epoch:04}.json", test_stats)
        if main_process:
            append_json_line(output_dir / EPOCH_LOG, {**{f"train_{k}": v for k, v in train_stats.items()},
                                                      **{f"test_{k}": v for k, v in test_stats.items()},
                                                      "epoch": epoch, "n_parameters": n_parameters})
    logger.info("training finished")
    if dist_info.distributed:
        torch.distributed.destroy_process_group()
    return None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
