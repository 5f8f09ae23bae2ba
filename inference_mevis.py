"""MeViS inference: a mask for every expression of ``valid_u`` or ``valid``, then J&F or the submission zip.

    python inference_mevis.py --binary --with_box_refine --freeze_text_encoder \\
        --resume output/mevis_r50/checkpoint.pth --mevis_path data/mevis --split valid_u \\
        --output_dir output/mevis_r50 --text_encoder weights/roberta-base --ngpu 1 --device cuda

writes ``<output_dir>/<split>/<video>/<exp_id>/<frame>.png`` (0/255 grayscale, the original frame
size), as Ref-YouTube-VOS inference does (the whole video is one clip and one query is chosen per
expression for all its frames) but without the ``Annotations`` folder. Then, for ``valid_u`` (whose
masks are released) it scores them with ``eval_mevis.py`` (the official metric; per-expression
scores in ``<output_dir>/valid_u_results.json``), and for ``valid`` it zips them into
``<output_dir>/submission-valid.zip`` holding ``<video>/<exp_id>/<frame>.png`` at its root, the
layout the MeViS challenge server expects. A rerun of the same command skips finished expressions;
``--resume auto`` predicts with the newest complete checkpoint of ``--output_dir``. ``--visualize``
adds ``<output_dir>/<split>_images/<video>/<expression index>/<frame>.png`` and one GIF per expression.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from datasets.meta import frame_path
from datasets.mevis import expressions_path, mask_dict_path, read_expressions
from opts import inference_parser
from video_inference import (
    OutputGroup,
    VideoJob,
    binary_mask_task,
    missing_outputs,
    remove_partial_root,
    run_inference,
    write_submission_zip,
)

logger = logging.getLogger("inference_mevis")

# valid_u has released masks (scored here); valid is scored by the challenge server from the zip.
INFERENCE_SPLITS = ("valid_u", "valid")
SERVER_SPLITS = ("valid",)


@dataclass(frozen=True)
class MevisInference:
    """What a run produced: the prediction folder, the submission zip (``valid``) and the scores
    ``{"J", "F", "J&F"}`` (splits with masks); ``None`` where not made (or in a non-main process)."""

    predictions: Path
    zip_path: Path | None
    scores: dict[str, float] | None


def get_parser() -> argparse.ArgumentParser:
    parser = inference_parser(
        "inference_mevis.py",
        "MeViS inference: predict a mask for every expression of --split (valid_u or valid), then score valid_u "
        "with the official metric or zip valid for the challenge server. --resume: a checkpoint file, a model folder "
        "or a Hugging Face Hub id; the model options are read from it.",
    )
    parser.set_defaults(dataset_file="mevis")
    return parser


def mevis_jobs(mevis_path: str | Path, split: str) -> list[VideoJob]:
    """One job per video of the split (sorted by name), one output group ``<video>/<exp_id>`` per expression."""
    path = expressions_path(mevis_path, split)
    videos = dict(sorted(read_expressions(path).items()))
    if not videos:
        raise ValueError(f"{path} lists no videos")
    return [
        VideoJob(
            video=video,
            frame_paths=tuple(frame_path(mevis_path, split, video, frame) for frame in entry.frames),
            output_names=entry.frames,
            captions=tuple(expression.text for expression in entry.expressions),
            groups=tuple(
                OutputGroup(folder=f"{video}/{expression.exp_id}", expressions=(index,),
                            visual_folder=f"{video}/{index}", color_index=index)
                for index, expression in enumerate(entry.expressions)
            ),
        )
        for video, entry in videos.items()
    ]


def _jobs(args: argparse.Namespace) -> list[VideoJob]:
    """The jobs of ``--split`` (each process of ``--ngpu`` builds them from the arguments)."""
    return mevis_jobs(args.mevis_path, args.split)


def main(argv: Sequence[str] | None = None) -> MevisInference:
    """Predict every video of ``--split``, then score (``valid_u``) or zip (``valid``) the masks."""
    args = get_parser().parse_args(argv)
    if args.split not in INFERENCE_SPLITS:
        raise ValueError(f"MeViS has no {args.split!r} split to predict; pass --split valid_u (scored here) or valid "
                         "(zipped for the challenge server)")
    is_main, jobs = run_inference(args, "MeViS", jobs=_jobs, task=binary_mask_task)
    predictions = Path(args.output_dir) / args.split
    if not is_main:
        return MevisInference(predictions, None, None)
    remove_partial_root(predictions)
    missing = missing_outputs(predictions, jobs)
    if missing:  # checked here so that scoring never counts an unfinished video as missing (J = F = 0)
        raise FileNotFoundError(f"{len(missing)} masks are missing under {predictions}, e.g. {missing[:5]}; rerun the "
                                "same command")
    zip_path = scores = None
    if args.split in SERVER_SPLITS:
        zip_path = Path(args.output_dir) / f"submission-{args.split}.zip"
        count = write_submission_zip(predictions, jobs, zip_path)
        logger.info("wrote %s (%d masks)", zip_path, count)
    if mask_dict_path(args.mevis_path, args.split).is_file():
        import eval_mevis

        scores = eval_mevis.main(["--mevis_path", str(args.mevis_path), "--split", args.split,
                                  "--pred_path", str(predictions)])
    return MevisInference(predictions, zip_path, scores)


if __name__ == "__main__":
    main()
