"""The MeViS offline metric (the MeViS authors' ``tools/eval_mevis.py``), on this toolkit's J and F.

For every expression of a split with masks (``valid_u``), and every frame of its video in the order
of the video's ``frames`` list:

* the prediction is ``<prediction_root>/<video>/<exp_id>/<frame>.png`` read as 8-bit grayscale
  (OpenCV's conversion, as the official script does); any non-zero pixel is foreground;
* the ground truth is the union of the masks of the expression's ``anno_id`` s (``null``: absent);
* J is their region IoU (1 when both are empty) and F their boundary F-measure (matching radius
  ``ceil(0.008 · diagonal)``): :func:`davis2017.metrics.frame_scores`, whose numbers equal the
  DAVIS toolkit's ``db_eval_iou`` / ``db_eval_boundary`` that the official script calls.

An expression's J and F are their means over its frames; the reported J and F are the means over
all expressions, and J&F is their average.

Missing predictions, as in the official script: a video without a folder under the prediction
root scores J = F = 0 for each of its expressions (the official script prints "<video> not found"
and goes on); a missing expression folder or frame PNG inside a video's folder, an unreadable PNG,
or one whose size differs from the ground truth's stops the evaluation with an error naming the
file (the official script crashes there). The frame size comes from the video's masks; for a video
in which no object ever appears it is the first predicted frame's, as the official script takes it
from ``00000.png``.

Expressions are scored in parallel by a bounded number of processes (:func:`evaluate_mevis`).
"""
from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from datasets.meta import DatasetFormatError
from datasets.mevis import MevisVideo, annotation_problems, read_expressions, read_mask_dict, rle_size, union_mask

from .metrics import frame_scores

logger = logging.getLogger(__name__)

PREDICTION_SUFFIX = ".png"
# Problems listed in one error message; the count says how many there are in all.
MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class ExpressionTask:
    """What a worker needs to score one expression.

    Attributes:
        video, exp_id: the expression.
        frames: the video's frame stems (file order).
        masks: per ``anno_id`` of the expression, its RLE (or ``None``) per frame.
        size: ``(H, W)`` of the video's ground truth; ``None`` when no object of the video ever appears.
        prediction_dir: ``<prediction_root>/<video>/<exp_id>``.
        mask_file: the ``mask_dict.json`` the masks come from (for messages).
    """

    video: str
    exp_id: str
    frames: tuple[str, ...]
    masks: tuple[tuple[dict | None, ...], ...]
    size: tuple[int, int] | None
    prediction_dir: Path
    mask_file: str


@dataclass
class MevisScores:
    """Per-expression scores of a split and their means.

    Attributes:
        per_expression: ``"<video>_<exp_id>"`` → ``(J, F)``, in the expression file's order.
        missing_videos: videos without a prediction folder (their expressions score 0).
    """

    per_expression: dict[str, tuple[float, float]] = field(default_factory=dict)
    missing_videos: list[str] = field(default_factory=list)

    @property
    def j(self) -> float:
        """Mean J over the expressions."""
        return float(np.mean([j for j, _ in self.per_expression.values()]))

    @property
    def f(self) -> float:
        """Mean F over the expressions."""
        return float(np.mean([f for _, f in self.per_expression.values()]))

    @property
    def j_and_f(self) -> float:
        """``(J + F) / 2``."""
        return (self.j + self.f) / 2


def read_prediction(path: Path) -> np.ndarray:
    """uint8 ``[H, W]``: a predicted PNG as OpenCV's 8-bit grayscale.

    Raises:
        FileNotFoundError: the file does not exist. ValueError: it cannot be read as an image.
    """
    if not path.is_file():
        raise FileNotFoundError(f"prediction {path} does not exist: every frame of the video needs a PNG in "
                                f"{path.parent}")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"prediction {path} cannot be read as an image")
    return image


def score_expression(task: ExpressionTask) -> tuple[float, float]:
    """``(J, F)`` of one expression: the means over its video's frames.

    Raises:
        FileNotFoundError: the expression's folder or a frame's PNG is missing.
        ValueError: a PNG is unreadable or not the ground truth's size, or a mask is not the video's size.
    """
    if not task.prediction_dir.is_dir():
        raise FileNotFoundError(f"{task.prediction_dir} does not exist: the folder of video {task.video} has no "
                                f"predictions for its expression {task.exp_id}")
    size = task.size
    j_values, f_values = [], []
    for index, frame in enumerate(task.frames):
        path = task.prediction_dir / f"{frame}{PREDICTION_SUFFIX}"
        prediction = read_prediction(path)
        if size is None:
            size = prediction.shape
        if prediction.shape != size:
            raise ValueError(f"prediction {path} is {prediction.shape[1]}x{prediction.shape[0]} (width x height) but "
                             f"the frames of video {task.video} are {size[1]}x{size[0]}")
        try:
            truth = union_mask((masks[index] for masks in task.masks), size)
        except ValueError as error:
            raise ValueError(f"{task.mask_file}: video {task.video}, frame {frame}: {error}") from error
        j, f = frame_scores(prediction[None] != 0, truth[None])  # [1, 1] each
        j_values.append(j[0, 0])
        f_values.append(f[0, 0])
    return float(np.mean(j_values)), float(np.mean(f_values))


def _video_size(entry: MevisVideo, mask_dict: dict[str, list]) -> tuple[int, int] | None:
    """``(H, W)`` of the first mask of any object of the video's expressions; ``None`` if none appears."""
    for expression in entry.expressions:
        for anno_id in expression.anno_ids:
            for rle in mask_dict[anno_id]:
                if rle is not None:
                    return rle_size(rle)
    return None


def _raise_problems(problems: Sequence[str], what: str) -> None:
    """Raise :class:`DatasetFormatError` listing the first of ``problems`` (if any) and their count."""
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise DatasetFormatError(f"{len(problems)} {what}:\n  {listed}{more}")


def _scored(tasks: Sequence[ExpressionTask], num_workers: int) -> Iterator[tuple[float, float]]:
    """``score_expression`` of every task, in order: in this process, or in at most ``num_workers`` processes."""
    processes = min(num_workers, len(tasks))
    if processes <= 1:
        yield from map(score_expression, tasks)
        return
    with multiprocessing.get_context().Pool(processes) as pool:
        yield from pool.imap(score_expression, tasks)


def evaluate_mevis(expressions_file: str | Path, mask_file: str | Path, prediction_root: str | Path, *,
                   num_workers: int = 1, progress: bool = True) -> MevisScores:
    """Score the predictions under ``prediction_root`` against a MeViS split's ground truth.

    Args:
        expressions_file: the split's ``meta_expressions.json`` (with ``anno_id`` lists).
        mask_file: the split's ``mask_dict.json``.
        prediction_root: holds ``<video>/<exp_id>/<frame>.png``.
        num_workers: processes scoring expressions in parallel (at most; 1: this process).
        progress: show a progress bar over the expressions.

    Raises:
        FileNotFoundError: ``prediction_root``, the expression or mask file, or (see the module docstring)
            a prediction inside a video's folder is missing.
        DatasetFormatError: an expression without ``anno_id``, an ``anno_id`` missing from the mask file, a
            mask list whose length is not its video's frame count, or a video without frames (all listed).
        ValueError: a PNG of the wrong size or an unreadable one.
    """
    prediction_root = Path(prediction_root)
    if not prediction_root.is_dir():
        raise FileNotFoundError(f"prediction folder {prediction_root} does not exist (it should hold "
                                "<video>/<exp_id>/<frame>.png, as inference_mevis.py writes under "
                                "<output_dir>/<split>)")
    videos = read_expressions(expressions_file)
    mask_dict = read_mask_dict(mask_file)
    problems = annotation_problems(videos, mask_dict, mask_file, expressions_file)
    problems.update({(video, e.exp_id): f"video {video}, expression {e.exp_id}: the video lists no frames in "
                                         f"{expressions_file}"
                     for video, entry in videos.items() if not entry.frames for e in entry.expressions})
    _raise_problems(list(problems.values()), "expressions without usable ground truth")
    if not any(entry.expressions for entry in videos.values()):
        raise DatasetFormatError(f"{expressions_file} lists no expressions")

    scores = MevisScores()
    tasks = []
    for video, entry in videos.items():
        if not (prediction_root / video).is_dir():
            scores.missing_videos.append(video)
            continue
        size = _video_size(entry, mask_dict)
        tasks += [
            ExpressionTask(video, expression.exp_id, entry.frames,
                           tuple(tuple(mask_dict[anno_id]) for anno_id in expression.anno_ids), size,
                           prediction_root / video / expression.exp_id, str(mask_file))
            for expression in entry.expressions
        ]
    if scores.missing_videos:
        logger.warning("%d of %d videos have no folder in %s; their expressions score J = F = 0 (as in the official "
                       "script): %s", len(scores.missing_videos), len(videos), prediction_root,
                       ", ".join(scores.missing_videos[:MAX_LISTED_PROBLEMS]))
    results = list(tqdm(_scored(tasks, num_workers), total=len(tasks), desc="MeViS expressions", unit="expression",
                        disable=not progress, dynamic_ncols=True))
    scored = {(task.video, task.exp_id): result for task, result in zip(tasks, results)}
    for video, entry in videos.items():
        for expression in entry.expressions:
            scores.per_expression[f"{video}_{expression.exp_id}"] = scored.get((video, expression.exp_id), (0.0, 0.0))
    return scores
