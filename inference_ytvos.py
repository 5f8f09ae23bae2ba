"""Ref-YouTube-VOS inference: masks for every expression in the CodaLab layout, and the submission zip.

    python inference_ytvos.py --resume weights/ytvos_r50.pth --ytvos_path data/ref-youtube-vos \\
        --output_dir output/ytvos_r50 --text_encoder weights/roberta-base --ngpu 1 --device cuda

writes ``<output_dir>/<split>/Annotations/<video>/<exp_id>/<frame>.png`` (0/255 grayscale, the
original frame size) and zips them into ``<output_dir>/submission-<split>.zip`` holding
``Annotations/<video>/<exp_id>/<frame>.png``, ready to upload. The videos of ``--split valid``
are the 202 of the valid expression file that are not in the test file. A rerun of the
same command skips finished expressions. ``--resume`` is a checkpoint file, a model folder or a
Hugging Face Hub id, whose stored options build the model (no model flag needed); ``--resume
auto`` predicts with the newest complete checkpoint of ``--output_dir`` (where ``main.py``
trained). ``--visualize`` adds
``<output_dir>/<split>_images/<video>/<expression index>/<frame>.png`` and one GIF per expression.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from datasets.meta import frame_path, meta_expressions_path, ytvos_split_videos
from opts import inference_parser
from video_inference import (
    OutputGroup,
    VideoJob,
    binary_mask_task,
    remove_partial_root,
    run_inference,
    write_submission_zip,
)

logger = logging.getLogger("inference_ytvos")

ANNOTATIONS_DIR = "Annotations"


def get_parser() -> argparse.ArgumentParser:
    return inference_parser(
        "inference_ytvos.py",
        "Ref-YouTube-VOS inference: predict a mask for every expression of --split and zip them for the "
        "competition server. --resume: a checkpoint file, a model folder or a Hugging Face Hub id; the model options "
        "are read from it.",
    )


def ytvos_jobs(ytvos_path: str | Path, split: str) -> list[VideoJob]:
    """One job per video of the split (sorted by name), one output group per expression (file order)."""
    videos = ytvos_split_videos(ytvos_path, split)
    if not videos:
        raise ValueError(f"{meta_expressions_path(ytvos_path, split)} lists no {split} videos")
    jobs = []
    for video, meta in videos.items():
        groups = tuple(
            OutputGroup(
                folder=f"{ANNOTATIONS_DIR}/{video}/{expression.exp_id}",
                expressions=(index,),
                visual_folder=f"{video}/{index}",
                color_index=index,
            )
            for index, expression in enumerate(meta.expressions)
        )
        jobs.append(VideoJob(
            video=video,
            frame_paths=tuple(frame_path(ytvos_path, split, video, frame) for frame in meta.frames),
            output_names=meta.frames,
            captions=tuple(expression.text for expression in meta.expressions),
            groups=groups,
        ))
    return jobs


def _jobs(args: argparse.Namespace) -> list[VideoJob]:
    """The jobs of ``--split`` (each process of ``--ngpu`` builds them from the arguments)."""
    return ytvos_jobs(args.ytvos_path, args.split)


def main(argv: Sequence[str] | None = None) -> Path:
    """Predict, then zip; returns the path of the submission zip."""
    args = get_parser().parse_args(argv)
    is_main, jobs = run_inference(args, "Ref-YouTube-VOS", jobs=_jobs, task=binary_mask_task)
    zip_path = Path(args.output_dir) / f"submission-{args.split}.zip"
    if is_main:
        remove_partial_root(Path(args.output_dir) / args.split)
        count = write_submission_zip(Path(args.output_dir) / args.split, jobs, zip_path)
        logger.info("wrote %s (%d masks)", zip_path, count)
    return zip_path


if __name__ == "__main__":
    main()
