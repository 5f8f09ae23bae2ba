"""What ``inference_ytvos.py`` and ``inference_davis.py`` share: jobs, resumable writing, sharding.

The two benchmarks differ only in data (:class:`InferenceTask`): how long a clip is, and whether
each expression becomes a folder of binary PNGs (Ref-YouTube-VOS) or the objects of one annotator
are merged into palette label maps (Ref-DAVIS17). A video is a :class:`VideoJob` listing its
frames, its captions and its output folders (:class:`OutputGroup`).

Resumability: an output folder is first written under ``<output_root>/.partial/`` and renamed to
its final place once every frame is in it, so a final folder is always complete. A rerun skips
groups whose folder exists, deletes half-written ``.partial`` folders and redoes only those.

Sharding: ``--ngpu N`` spawns N processes (one per GPU, or CPU processes sharing the cores), or
``torchrun`` starts them; each takes a contiguous share of the videos.

The model comes from ``--resume``: a checkpoint file, a model folder or a Hugging Face Hub id, or
``auto`` for the newest complete checkpoint of ``--output_dir`` (:func:`inference_checkpoint`); its
model options are read from it (``models/pretrained.py``), so no model flag is needed.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from datasets.meta import read_frame
from models.postprocessors import binarize_mask_logits, merge_object_probs
from opts import validate_args
from models.predictor import ExpressionPrediction, VideoPredictor, frames_per_chunk, iter_upsampled_logits, load_predictor
from util.checkpoint import find_latest_checkpoint
from util.logger import setup_logging as logger_setup
from util.threads import cpu_budget, limit_threads_to_cpu_budget
from util.visualize import draw_prediction, expression_color, overlay_labels, palette_image, save_gif

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
LOG_FILE = "inference.log"
# Binary masks are written as 8-bit grayscale PNGs with foreground 255, as the original.
FOREGROUND_VALUE = 255


@dataclass(frozen=True)
class InferenceTask:
    """How a benchmark turns predictions into files.

    Attributes:
        clip_len: frames per forward pass; ``None`` = the whole video in one pass (Ref-YTVOS).
        merge_objects: ``False``: one folder of 0/255 PNGs per expression; ``True``: the objects of a
            group are merged into palette label maps (Ref-DAVIS17, background rule of
            :func:`merge_object_probs`).
        threshold: mask probability threshold of binary masks.
        palette: ``[256, 3]`` uint8 palette of label maps (``merge_objects`` only).
    """

    clip_len: int | None
    merge_objects: bool
    threshold: float = 0.5
    palette: np.ndarray | None = None


@dataclass(frozen=True)
class OutputGroup:
    """Expressions whose predictions make one output folder.

    Attributes:
        folder: output folder relative to the output root.
        expressions: indices into :attr:`VideoJob.captions` (one for binary masks; the objects in
            label order for merged maps).
        visual_folder: folder of ``--visualize`` images relative to the visualisation root.
        color_index: colour of a binary mask in the visualisation (the expression's index in its video).
    """

    folder: str
    expressions: tuple[int, ...]
    visual_folder: str
    color_index: int = 0


@dataclass(frozen=True)
class VideoJob:
    """One video: its frames, captions and output groups.

    Attributes:
        video: name. frame_paths: frames in order. output_names: PNG file stem of each frame.
    """

    video: str
    frame_paths: tuple[Path, ...]
    output_names: tuple[str, ...]
    captions: tuple[str, ...]
    groups: tuple[OutputGroup, ...]


@dataclass
class RunSummary:
    """Counts of a run: ``videos`` assigned, of which ``processed_videos`` had unfinished groups and
    ``skipped_videos`` were already complete; ``expressions`` predicted; wall-clock ``seconds``."""

    videos: int = 0
    processed_videos: int = 0
    skipped_videos: int = 0
    expressions: int = 0
    seconds: float = 0.0

    def merge(self, other: "RunSummary") -> "RunSummary":
        """Counts of two processes that ran side by side (the wall-clock time is the longer one)."""
        return RunSummary(
            videos=self.videos + other.videos,
            processed_videos=self.processed_videos + other.processed_videos,
            skipped_videos=self.skipped_videos + other.skipped_videos,
            expressions=self.expressions + other.expressions,
            seconds=max(self.seconds, other.seconds),
        )

    def describe(self) -> str:
        per_video = self.seconds / self.processed_videos if self.processed_videos else 0.0
        return (
            f"{self.videos} videos ({self.processed_videos} processed, {self.skipped_videos} already complete), "
            f"{self.expressions} expressions predicted in {self.seconds:.1f} s ({per_video:.2f} s per processed video)"
        )


def read_video_frames(paths: Sequence[Path], expected_size: tuple[int, int] | None) -> list[Image.Image]:
    """Read RGB frames; every frame must have ``expected_size`` (W, H) (or the first frame's size).

    Raises:
        FileNotFoundError / OSError: a frame is missing or unreadable (naming the file).
        ValueError: a frame's size differs from the video's, naming the file and both sizes.
    """
    frames = []
    for path in paths:
        frame = read_frame(path)
        if expected_size is None:
            expected_size = frame.size
        elif frame.size != expected_size:
            raise ValueError(
                f"frame {path} is {frame.size[0]}x{frame.size[1]} but the video's frames are "
                f"{expected_size[0]}x{expected_size[1]}; all frames of a video must have the same size"
            )
        frames.append(frame)
    return frames


class VideoInferenceRunner:
    """Predicts videos and writes their output groups atomically (see the module docstring).

    Args:
        predictor: the model wrapper.
        task: what to write.
        output_root: folders of :attr:`OutputGroup.folder` are created under it.
        visual_root: if given, ``--visualize`` images and GIFs are written under it.
        on_group_done: called with each finished group (tests use it to interrupt a run).
    """

    def __init__(
        self,
        predictor: VideoPredictor,
        task: InferenceTask,
        output_root: str | Path,
        visual_root: str | Path | None = None,
        on_group_done: Callable[[OutputGroup], None] | None = None,
    ):
        if task.merge_objects and task.palette is None:
            raise ValueError("merging objects into label maps needs a palette")
        self.predictor = predictor
        self.task = task
        self.output_root = Path(output_root)
        self.visual_root = Path(visual_root) if visual_root is not None else None
        self.on_group_done = on_group_done

    def is_done(self, group: OutputGroup) -> bool:
        return (self.output_root / group.folder).is_dir()

    def _partial(self, group: OutputGroup) -> Path:
        return self.output_root / PARTIAL_DIR / group.folder

    def run(self, jobs: Sequence[VideoJob], progress: bool = True, position: int = 0) -> RunSummary:
        """Predict every unfinished group of ``jobs``; returns the counts."""
        summary = RunSummary(videos=len(jobs))
        start = time.perf_counter()
        for job in tqdm(jobs, desc="videos", unit="video", disable=not progress, position=position, dynamic_ncols=True):
            done = self.run_video(job)
            if done is None:
                summary.skipped_videos += 1
            else:
                summary.processed_videos += 1
                summary.expressions += done
        summary.seconds = time.perf_counter() - start
        return summary

    def run_video(self, job: VideoJob) -> int | None:
        """Predict the unfinished groups of one video; returns the number of expressions run (None: all done)."""
        pending = [group for group in job.groups if not self.is_done(group)]
        if not pending:
            return None
        for group in pending:
            partial = self._partial(group)
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
        needed = sorted({e for group in pending for e in group.expressions})
        captions = [job.captions[e] for e in needed]
        num_frames = len(job.frame_paths)
        clip_len = self.task.clip_len or num_frames
        frame_size = None
        clip_starts = range(0, num_frames, clip_len)
        # a bar of its own for videos of several clips (long videos: Ref-DAVIS17, demo.py)
        for clip_start in tqdm(clip_starts, desc=job.video, unit="clip", leave=False, disable=len(clip_starts) < 2,
                               dynamic_ncols=True):
            clip_stop = min(clip_start + clip_len, num_frames)
            frames = read_video_frames(job.frame_paths[clip_start:clip_stop], frame_size)
            frame_size = frames[0].size
            clip = self.predictor.preprocess(frames)  # [T, 3, h, w]
            last_clip = clip_stop == num_frames
            predictions: dict[int, ExpressionPrediction] = {}
            waiting = list(pending)
            batches = self.predictor.predict_clip(clip, captions)
            for batch in batches:
                for prediction in batch:
                    predictions[needed[len(predictions)]] = prediction
                for group in [g for g in waiting if all(e in predictions for e in g.expressions)]:
                    waiting.remove(group)
                    self._write_clip(job, group, predictions, frames, clip_start)
                    if last_clip:
                        self._finish(job, group)
        return len(needed)

    def _write_clip(
        self, job: VideoJob, group: OutputGroup, predictions: dict[int, ExpressionPrediction],
        frames: list[Image.Image], clip_start: int,
    ) -> None:
        """Write the group's PNGs (and visualisation) for the frames of one clip."""
        width, height = frames[0].size
        logits = [predictions[e].mask_logits for e in group.expressions]
        partial = self._partial(group)
        visual_dir = None
        if self.visual_root is not None:
            visual_dir = self.visual_root / group.visual_folder
            visual_dir.mkdir(parents=True, exist_ok=True)
        for start, upsampled in iter_upsampled_logits(logits, (height, width), frames_per_chunk(len(logits))):
            # upsampled: [E, t, H, W] logits of the chunk's frames
            if self.task.merge_objects:
                planes = merge_object_probs(upsampled.sigmoid()).cpu().numpy()  # [t, H, W] labels
            else:
                planes = binarize_mask_logits(upsampled[0], self.task.threshold).cpu().numpy()  # [t, H, W] bool
            for offset, plane in enumerate(planes):
                index = clip_start + start + offset
                name = job.output_names[index]
                if self.task.merge_objects:
                    palette_image(plane, self.task.palette).save(partial / f"{name}.png")
                else:
                    Image.fromarray(plane.astype(np.uint8) * FOREGROUND_VALUE, mode="L").save(partial / f"{name}.png")
                if visual_dir is not None:
                    frame = np.asarray(frames[start + offset])
                    if self.task.merge_objects:
                        image = overlay_labels(frame, plane, self.task.palette)
                    else:
                        prediction = predictions[group.expressions[0]]
                        image = draw_prediction(
                            frame, plane, expression_color(group.color_index),
                            box=prediction.boxes[start + offset].tolist(),
                            reference_point=prediction.reference_points[start + offset].tolist(),
                        )
                    image.save(visual_dir / f"{name}.png")

    def _finish(self, job: VideoJob, group: OutputGroup) -> None:
        """Check the group's frames, write its GIF, and move it into place."""
        partial = self._partial(group)
        missing = [name for name in job.output_names if not (partial / f"{name}.png").is_file()]
        if missing:
            raise RuntimeError(f"{partial}: frames {missing[:5]} were not written")
        if self.visual_root is not None:
            visual_dir = self.visual_root / group.visual_folder
            save_gif([visual_dir / f"{name}.png" for name in job.output_names], visual_dir.with_suffix(".gif"))
        final = self.output_root / group.folder
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        if self.on_group_done is not None:
            self.on_group_done(group)


def missing_outputs(output_root: str | Path, jobs: Sequence[VideoJob]) -> list[str]:
    """Output files the jobs should have produced but that do not exist (relative paths)."""
    output_root = Path(output_root)
    missing = []
    for job in jobs:
        for group in job.groups:
            folder = output_root / group.folder
            missing += [f"{group.folder}/{n}.png" for n in job.output_names if not (folder / f"{n}.png").is_file()]
    return missing


def write_submission_zip(output_root: str | Path, jobs: Sequence[VideoJob], zip_path: str | Path) -> int:
    """Zip every expected PNG as ``<group folder>/<frame>.png`` (atomically); returns the count.

    The archive mirrors the folders under ``output_root``: ``Annotations/<video>/<exp_id>/<frame>.png``
    for Ref-YouTube-VOS, ``<video>/<exp_id>/<frame>.png`` at the root for MeViS.

    Raises:
        FileNotFoundError: some predictions are missing (listing the first ones).
    """
    output_root, zip_path = Path(output_root), Path(zip_path)
    missing = missing_outputs(output_root, jobs)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} predictions are missing under {output_root}, e.g. {missing[:5]}; rerun the same command"
        )
    partial = zip_path.with_name(zip_path.name + ".partial")
    count = 0
    # PNGs are already compressed: store them.
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for job in jobs:
            for group in job.groups:
                for name in job.output_names:
                    archive.write(output_root / group.folder / f"{name}.png", arcname=f"{group.folder}/{name}.png")
                    count += 1
    os.replace(partial, zip_path)
    return count


def remove_partial_root(output_root: str | Path) -> None:
    """Remove ``<output_root>/.partial`` once it holds no files (call after every process has finished)."""
    partial = Path(output_root) / PARTIAL_DIR
    if partial.is_dir() and not any(path.is_file() for path in partial.rglob("*")):
        shutil.rmtree(partial)


def shard(jobs: Sequence[VideoJob], rank: int, world_size: int) -> list[VideoJob]:
    """Contiguous share ``rank`` of ``world_size`` of the jobs (sizes differ by at most one)."""
    per_rank, extra = divmod(len(jobs), world_size)
    start = rank * per_rank + min(rank, extra)
    return list(jobs[start : start + per_rank + (1 if rank < extra else 0)])


def inference_checkpoint(args: argparse.Namespace) -> Path:
    """The local checkpoint file or model folder to predict with: ``--resume`` (a file, a folder, or a Hugging
    Face Hub id, which is fetched into the Hugging Face cache unless ``HF_HUB_OFFLINE=1``), or with
    ``--resume auto`` the newest complete checkpoint (``checkpoint.pth``, else the highest
    ``checkpointNNNN.pth``) in ``--output_dir``.

    Raises:
        ValueError: ``--resume`` is not given.
        FileNotFoundError: ``--resume`` names nothing that exists (:func:`models.pretrained.resolve_source`),
            or ``--resume auto`` and ``--output_dir`` holds no complete checkpoint.
    """
    from models.pretrained import resolve_source

    if not args.resume:
        raise ValueError("pass the model with --resume (a checkpoint file, a model folder or a Hugging Face Hub id; "
                         "--resume auto: the newest checkpoint in --output_dir)")
    if args.resume != "auto":
        return resolve_source(args.resume)
    path = find_latest_checkpoint(args.output_dir)
    if path is None:
        raise FileNotFoundError(f"--resume auto: no complete checkpoint (checkpoint.pth or checkpointNNNN.pth) in "
                                f"--output_dir {args.output_dir}; pass --resume FILE")
    return path


# ----------------------------------------------------------------------------- processes
def setup_logging(output_dir: str | Path, rank: int = 0) -> None:
    """Console logging, and ``<output_dir>/inference.log`` on rank 0 (other ranks log warnings only)."""
    logger_setup(output_dir, is_main=rank == 0, file_name=LOG_FILE)


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by ``torchrun`` with several processes, else ``None``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def num_processes(args: argparse.Namespace) -> int:
    """Processes to spawn for ``--ngpu``: at most the visible GPUs (CUDA) or CPU cores (CPU)."""
    if args.ngpu < 1:
        raise ValueError(f"--ngpu must be at least 1, got {args.ngpu}")
    if torch.device(args.device).type == "cuda":
        available = torch.cuda.device_count()
        if available == 0:
            raise RuntimeError("--device cuda was requested but no CUDA device is visible; pass --device cpu")
    else:
        available = cpu_budget()
    if args.ngpu > available:
        logger.warning("--ngpu %d but only %d %s available: using %d processes", args.ngpu, available,
                       "GPUs" if torch.device(args.device).type == "cuda" else "CPU cores", available)
    return min(args.ngpu, available)


def process_device(args: argparse.Namespace, local_rank: int, world_size: int) -> torch.device:
    """This process's device (``cuda:<local_rank>`` for CUDA); CPU processes split the cores."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    limit_threads_to_cpu_budget(world_size)
    return device


Worker = Callable[[int, int, argparse.Namespace], RunSummary]


def predict_videos(rank: int, world_size: int, args: argparse.Namespace, *,
                   jobs: Callable[[argparse.Namespace], Sequence[VideoJob]],
                   task: Callable[[argparse.Namespace], InferenceTask]) -> RunSummary:
    """The work of one process (a :data:`Worker` once ``jobs`` and ``task`` are bound, e.g. with
    ``functools.partial``): its share of ``jobs(args)``, predicted with the ``--resume`` model and
    written as ``task(args)`` says under ``<output_dir>/<split>`` (overlays under
    ``<output_dir>/<split>_images`` with ``--visualize``).

    ``jobs`` and ``task`` must be module-level functions: ``--ngpu`` processes receive them pickled.
    """
    setup_logging(args.output_dir, rank)
    device = process_device(args, int(os.environ.get("LOCAL_RANK", rank)), world_size)
    own_jobs = shard(jobs(args), rank, world_size)
    predictor = load_predictor(args, inference_checkpoint(args), device, args.expressions_per_batch)
    output_dir = Path(args.output_dir)
    runner = VideoInferenceRunner(
        predictor, task(args), output_dir / args.split,
        visual_root=output_dir / f"{args.split}_images" if args.visualize else None,
    )
    return runner.run(own_jobs, position=rank)


def run_inference(args: argparse.Namespace, benchmark: str, *,
                  jobs: Callable[[argparse.Namespace], Sequence[VideoJob]],
                  task: Callable[[argparse.Namespace], InferenceTask]) -> tuple[bool, Sequence[VideoJob]]:
    """What every inference script does before its own last step: check the arguments and find the
    checkpoint (failing before any work), log to ``<output_dir>/inference.log``, read the jobs once
    (metadata errors before any work), then :func:`predict_videos` in every process (:func:`launch`).

    Returns:
        ``(is_main, jobs(args))``: whether this process should finish the run (zip, evaluate), and the jobs.
    """
    validate_args(args)
    checkpoint = inference_checkpoint(args)
    setup_logging(args.output_dir)
    logger.info("checkpoint: %s", checkpoint)
    all_jobs = jobs(args)
    logger.info("%s %s: %d videos, %d expressions", benchmark, args.split, len(all_jobs),
                sum(len(job.captions) for job in all_jobs))
    is_main, summary = launch(partial(predict_videos, jobs=jobs, task=task), args)
    if summary is not None:
        logger.info("summary: %s", summary.describe())
    return is_main, all_jobs


def binary_mask_task(args: argparse.Namespace) -> InferenceTask:
    """The whole video in one pass and one folder of 0/255 PNGs per expression (Ref-YouTube-VOS, MeViS)."""
    return InferenceTask(clip_len=None, merge_objects=False, threshold=args.threshold)


def launch(worker: Worker, args: argparse.Namespace) -> tuple[bool, RunSummary | None]:
    """Run ``worker(rank, world_size, args)`` in every process.

    Returns ``(is_main, summary)``: ``is_main`` is true in the one process that should finish the
    job (write the zip, evaluate); ``summary`` is this process's counts (all processes' for
    ``--ngpu`` spawning, ``None`` if unknown).
    """
    started = torchrun_rank()
    if started is not None:
        rank, world_size, _ = started
        if not dist.is_initialized():
            backend = "nccl" if torch.device(args.device).type == "cuda" else "gloo"
            dist.init_process_group(backend)
        summary = worker(rank, world_size, args)
        dist.barrier()
        return rank == 0, summary
    world_size = num_processes(args)
    if world_size == 1:
        return True, worker(0, 1, args)
    context = torch.multiprocessing.get_context("spawn")
    with context.Pool(world_size) as pool:
        summaries = pool.starmap(worker, [(rank, world_size, args) for rank in range(world_size)])
    total = summaries[0]
    for other in summaries[1:]:
        total = total.merge(other)
    return True, total
