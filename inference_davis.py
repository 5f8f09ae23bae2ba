"""Ref-DAVIS17 inference: one palette label map per frame and annotator, then J&F per annotator and their mean.

    python inference_davis.py --resume weights/ytvos_r50.pth --davis_path data/ref-davis \\
        --output_dir output/davis_r50 --text_encoder weights/roberta-base --ngpu 1 --device cuda

Expression ``4k + a`` of a video is object k as described by annotator a. For each
annotator the video runs in clips of 36 frames with the query chosen per clip, the objects'
probabilities are merged with the original's background rule, and
``<output_dir>/<split>/anno_<a>/<video>/<frame index:05d>.png`` is written. If the DAVIS
ground truth is at ``<davis_path>/DAVIS``, ``eval_davis.py`` then scores every annotator and
their mean (the reported Ref-DAVIS17 number). A rerun of the same command skips finished
(video, annotator) folders. ``--resume`` is a checkpoint file, a model folder or a Hugging Face
Hub id, whose stored options build the model; ``--resume auto`` predicts with the newest complete
checkpoint of ``--output_dir``. ``--visualize`` adds label overlays and a GIF per annotator and video.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from datasets.meta import ANNOTATIONS_DIR, frame_path, meta_expressions_path, read_meta_expressions
from opts import inference_parser
from util.visualize import load_palette
from video_inference import (
    InferenceTask,
    OutputGroup,
    VideoJob,
    missing_outputs,
    remove_partial_root,
    run_inference,
)

logger = logging.getLogger("inference_davis")

# Ref-DAVIS17 has four annotators (first-frame and full-video descriptions by two people).
NUM_ANNOTATORS = 4
# Frames per forward pass; the original stays below the CUDA deformable-attention kernel's batch limit of 64.
DAVIS_CLIP_LEN = 36
# The original reads the label-map palette from this annotation of the converted dataset.
PALETTE_SOURCE = ("blackswan", "00000.png")
# Where the DAVIS-2017 ground truth for evaluation lives, relative to --davis_path (the original's default).
DAVIS_GROUND_TRUTH_DIR = "DAVIS"


def get_parser() -> argparse.ArgumentParser:
    parser = inference_parser(
        "inference_davis.py",
        "Ref-DAVIS17 inference: palette label maps for every annotator's expressions, then J&F per annotator and "
        "their mean when the DAVIS ground truth is present. --resume: a checkpoint file, a model folder or a Hugging "
        "Face Hub id; the model options are read from it.",
    )
    parser.set_defaults(dataset_file="davis")
    return parser


def davis_jobs(davis_path: str | Path, split: str) -> list[VideoJob]:
    """One job per video (file order); one output group per annotator, its objects in order.

    Raises:
        ValueError: a video's expression count is not a multiple of the annotator count.
    """
    meta_path = meta_expressions_path(davis_path, split)
    jobs = []
    for video, meta in read_meta_expressions(meta_path).items():
        if len(meta.expressions) % NUM_ANNOTATORS:
            raise ValueError(
                f"{meta_path}: video {video!r} has {len(meta.expressions)} expressions, not a multiple of the "
                f"{NUM_ANNOTATORS} annotators (expression 4k+a must describe object k for annotator a)"
            )
        num_objects = len(meta.expressions) // NUM_ANNOTATORS
        groups = tuple(
            OutputGroup(
                folder=f"anno_{annotator}/{video}",
                expressions=tuple(NUM_ANNOTATORS * k + annotator for k in range(num_objects)),
                visual_folder=f"anno_{annotator}/{video}",
            )
            for annotator in range(NUM_ANNOTATORS)
        )
        jobs.append(VideoJob(
            video=video,
            frame_paths=tuple(frame_path(davis_path, split, video, frame) for frame in meta.frames),
            output_names=tuple(f"{index:05d}" for index in range(len(meta.frames))),
            captions=tuple(expression.text for expression in meta.expressions),
            groups=groups,
        ))
    if not jobs:
        raise ValueError(f"{meta_path} lists no videos")
    return jobs


def _jobs(args: argparse.Namespace) -> list[VideoJob]:
    """The jobs of ``--split`` (each process of ``--ngpu`` builds them from the arguments)."""
    return davis_jobs(args.davis_path, args.split)


def _task(args: argparse.Namespace) -> InferenceTask:
    palette = load_palette(Path(args.davis_path, args.split, ANNOTATIONS_DIR, *PALETTE_SOURCE))
    return InferenceTask(clip_len=DAVIS_CLIP_LEN, merge_objects=True, palette=palette)


def evaluate(args: argparse.Namespace, results_path: Path) -> dict[str, float] | None:
    """J&F of every annotator and their mean with ``eval_davis.py``, if the DAVIS ground truth is present."""
    ground_truth = Path(args.davis_path) / DAVIS_GROUND_TRUTH_DIR
    if not ground_truth.is_dir():
        logger.warning("no DAVIS ground truth at %s: skipping evaluation (run eval_davis.py --results_path %s "
                       "--davis_path <DAVIS folder>)", ground_truth, results_path)
        return None
    import eval_davis

    return eval_davis.main(["--davis_path", str(ground_truth), "--results_path", str(results_path)])


def main(argv: Sequence[str] | None = None) -> dict[str, float] | None:
    """Predict every video, then evaluate; returns the mean global scores (None without ground truth)."""
    args = get_parser().parse_args(argv)
    is_main, jobs = run_inference(args, "Ref-DAVIS17", jobs=_jobs, task=_task)
    if not is_main:
        return None
    results_path = Path(args.output_dir) / args.split
    remove_partial_root(results_path)
    missing = missing_outputs(results_path, jobs)
    if missing:
        raise FileNotFoundError(f"{len(missing)} label maps are missing under {results_path}, e.g. {missing[:5]}")
    return evaluate(args, results_path)


if __name__ == "__main__":
    main()
