"""DAVIS-2017 evaluation of a results folder: reading, per-sequence scoring and statistics.

Ground truth: ``<davis_path>/<Annotations|Annotations_unsupervised>/480p/<seq>/<frame>.png``
label maps (255 = void) for the sequences listed in ``<davis_path>/ImageSets/2017/<set>.txt``.
Predictions: ``<results_path>/<seq>/<frame>.png`` label maps (palette or grayscale), one per
ground-truth frame, object k = pixels of value k.

The semi-supervised task scores each ground-truth object against the predicted object of the
same id, on all frames but the first and the last, without void; the unsupervised task scores
every (prediction, ground truth) pair on all frames with void left out and keeps the
assignment that maximises the mean (J + F) / 2 (Hungarian). Both give, per ground-truth
object, the Mean/Recall/Decay of J and F; the global numbers average them over all objects of
all sequences. Numbers equal the official DAVIS-2017 toolkit's.

``DavisEvaluator`` follows the reset / process / evaluate protocol; ``evaluate_results_folder``
runs it over a whole results folder and ``load_or_evaluate`` adds the CSV cache of
``eval_davis.py``. ``annotator_folders`` / ``annotator_rows`` serve Ref-DAVIS17, whose reported
number is the mean over the four annotators' folders ``anno_<a>``.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from .metrics import frame_scores, mean_recall_decay

logger = logging.getLogger(__name__)

TASKS = ("semi-supervised", "unsupervised")
SUBSETS = ("train", "val", "test-dev", "test-challenge")
RESOLUTION = "480p"
VOID_LABEL = 255
"""Ground-truth pixels with this label belong to no object and, in the unsupervised task, to no measure."""
MAX_PROPOSALS = 20
"""The unsupervised task accepts at most this many predicted objects per sequence."""

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
FLOAT_FORMAT = "%.5f"
"""Floats in the CSVs and printed tables, as the original writes them."""
ANNOTATOR_COLUMNS = ("Annotator",) + GLOBAL_COLUMNS

ANNOTATOR_PREFIX = "anno_"
"""Ref-DAVIS17 predictions of annotator a live in ``<output>/anno_<a>`` (``inference_davis.py``)."""


def annotation_folder(davis_path: str, task: str) -> str:
    """Ground-truth folder of ``task``: ``Annotations`` (semi-supervised) or ``Annotations_unsupervised``."""
    name = "Annotations" if task == "semi-supervised" else "Annotations_unsupervised"
    return os.path.join(davis_path, name, RESOLUTION)


def read_sequence_list(davis_path: str, subset: str) -> list[str]:
    """Sequence names of ``<davis_path>/ImageSets/2017/<subset>.txt``, in file order."""
    if subset not in SUBSETS:
        raise ValueError(f"--set {subset!r} is not a DAVIS-2017 subset; choose one of {SUBSETS}")
    path = os.path.join(davis_path, "ImageSets", "2017", f"{subset}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"sequence list {path} not found: point --davis_path at the DAVIS folder that contains "
            "ImageSets/, Annotations/ and Annotations_unsupervised/"
        )
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def read_label_map(path: str) -> np.ndarray:
    """A PNG label map (palette indices or grayscale values) as an integer ``[H, W]`` array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label map {path} not found")
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"cannot read label map {path}: {error}") from error
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{path} is an image of mode {mode}; expected a palette or grayscale label map")
    return labels.astype(np.uint8) if labels.dtype == bool else labels


@dataclass
class SequenceGroundTruth:
    """Ground truth of one sequence.

    Attributes:
        name: sequence name.
        frames: frame stems (``00000`` …), sorted.
        labels: int ``[T, H, W]`` object ids with void set to 0.
        void: bool ``[T, H, W]``, pixels labelled ``VOID_LABEL``.
        num_objects: objects 1..n, n = the largest label of the first frame (as the toolkit counts).
    """

    name: str
    frames: list[str]
    labels: np.ndarray
    void: np.ndarray
    num_objects: int

    @classmethod
    def from_label_maps(cls, name: str, frames: list[str], label_maps: np.ndarray) -> "SequenceGroundTruth":
        """Split raw annotations (integer ``[T, H, W]``, ``VOID_LABEL`` = void) into objects and void."""
        labels = np.array(label_maps)
        void = labels == VOID_LABEL
        labels[void] = 0
        return cls(name, list(frames), labels, void, int(labels[0].max()))

    def object_masks(self, t: int) -> np.ndarray:
        """bool ``[num_objects, H, W]``: the objects' masks in frame ``t``."""
        return self.labels[t][None] == np.arange(1, self.num_objects + 1)[:, None, None]


def read_ground_truth(davis_path: str, task: str, sequence: str) -> SequenceGroundTruth:
    """Read the annotations of ``sequence`` for ``task``; all frames must have the same size."""
    folder = os.path.join(annotation_folder(davis_path, task), sequence)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    frames = sorted(name[: -len(".png")] for name in names if name.endswith(".png"))
    if not frames:
        raise FileNotFoundError(f"no ground-truth annotations (*.png) for sequence {sequence!r} in {folder}")
    labels = []
    for frame in frames:
        path = os.path.join(folder, f"{frame}.png")
        label_map = read_label_map(path)
        if labels and label_map.shape != labels[0].shape:
            raise ValueError(f"{path} is {label_map.shape}, the sequence's first annotation is {labels[0].shape}")
        labels.append(label_map)
    return SequenceGroundTruth.from_label_maps(sequence, frames, np.stack(labels))


def evaluated_frames(gt: SequenceGroundTruth, task: str) -> list[str]:
    """Frames scored for ``task``: all of them (unsupervised) or all but the first and last (semi-supervised)."""
    return gt.frames[1:-1] if task == "semi-supervised" else list(gt.frames)


def check_predictions(results_path: str, expected: dict[str, list[str]]) -> None:
    """Raise ``FileNotFoundError`` listing every missing sequence folder and frame PNG.

    Args:
        results_path: folder with one sub-folder of PNGs per sequence.
        expected: sequence name → frame stems that must exist.
    """
    missing = []
    for sequence, frames in expected.items():
        folder = os.path.join(results_path, sequence)
        if not os.path.isdir(folder):
            missing.append(f"  sequence {sequence}: folder {folder} not found")
            continue
        present = set(os.listdir(folder))
        absent = [frame for frame in frames if f"{frame}.png" not in present]
        if absent:
            listed = ", ".join(f"{frame}.png" for frame in absent)
            missing.append(f"  sequence {sequence}: {len(absent)} of {len(frames)} frames not found: {listed}")
    if missing:
        raise FileNotFoundError(
            f"results folder {results_path} is incomplete:\n" + "\n".join(missing) + "\n"
            "The frames have to be indexed PNG files placed inside the corresponding sequence folder, "
            "named like the ground-truth frames."
        )


def read_predictions(results_path: str, gt: SequenceGroundTruth, frames: list[str]) -> np.ndarray:
    """Predicted label maps of ``frames`` of ``gt``'s sequence: int ``[T, H, W]`` at the ground truth's size."""
    height, width = gt.labels.shape[1:]
    labels = []
    for frame in frames:
        path = os.path.join(results_path, gt.name, f"{frame}.png")
        label_map = read_label_map(path)
        if label_map.shape != (height, width):
            raise ValueError(
                f"{path} is {label_map.shape[0]}x{label_map.shape[1]} pixels, the ground truth is {height}x{width}"
            )
        labels.append(label_map)
    return np.stack(labels)


def score_sequence(
    gt: SequenceGroundTruth, pred_labels: np.ndarray, task: str, source: str = "predictions"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of each ground-truth object of one sequence.

    Args:
        gt: the sequence's ground truth.
        pred_labels: int ``[T, H, W]`` predicted label maps of ``evaluated_frames(gt, task)``;
            predicted objects are 1..max label over all frames, missing ones count as empty.
        task: ``"semi-supervised"`` (object k against predicted object k, void counted as
            background) or ``"unsupervised"`` (Hungarian assignment, void left out).
        source: names the predictions in error messages.

    Returns:
        ``(J, F)``, float64 ``[N, T]`` with N = ``gt.num_objects``. In the unsupervised task
        row i belongs to the i-th assigned pair in increasing order of predicted object id.
    """
    if len(pred_labels) != len(evaluated_frames(gt, task)):
        raise ValueError(
            f"{source} of sequence {gt.name} have {len(pred_labels)} frames, "
            f"the {task} task scores {len(evaluated_frames(gt, task))}"
        )
    num_pred = int(pred_labels.max()) if pred_labels.size else 0
    num_gt = gt.num_objects
    if task == "semi-supervised":
        if num_pred > num_gt:
            raise ValueError(
                f"{source} of sequence {gt.name} contain object index {num_pred}, "
                f"higher than the number of objects in the sequence ({num_gt})"
            )
        gt_frames = range(1, len(gt.frames) - 1)
    else:
        if num_pred > MAX_PROPOSALS:
            raise ValueError(
                f"{source} of sequence {gt.name} contain object index {num_pred}, "
                f"higher than the maximum number ({MAX_PROPOSALS}) of proposals allowed"
            )
        gt_frames = range(len(gt.frames))
    num_pred = max(num_pred, num_gt)
    pred_ids = np.arange(1, num_pred + 1)[:, None, None]

    num_frames = len(gt_frames)
    jaccard = np.zeros((num_pred, num_gt, num_frames))
    boundary = np.zeros((num_pred, num_gt, num_frames))
    for i, t in enumerate(gt_frames):
        void = gt.void[t] if task == "unsupervised" else None
        jaccard[:, :, i], boundary[:, :, i] = frame_scores(pred_labels[i][None] == pred_ids, gt.object_masks(t), void)

    if task == "semi-supervised":
        same_id = np.arange(num_gt)
        return jaccard[same_id, same_id], boundary[same_id, same_id]
    score = (jaccard.mean(axis=2) + boundary.mean(axis=2)) / 2  # [Np, Ng]
    # Minimising the negated score (rather than maximize=True) keeps the toolkit's tie-breaking;
    # the pairs come back in increasing prediction index.
    pred_index, gt_index = linear_sum_assignment(-score)
    return jaccard[pred_index, gt_index], boundary[pred_index, gt_index]


@dataclass
class DavisScores:
    """Evaluation result.

    Attributes:
        global_scores: ``GLOBAL_COLUMNS`` → value.
        per_object: rows ``(<seq>_<k>, J-Mean, F-Mean)``, one per ground-truth object.
    """

    global_scores: dict[str, float]
    per_object: list[tuple[str, float, float]] = field(default_factory=list)

    def write_csv(self, folder: str, subset: str) -> tuple[str, str]:
        """Write ``global_results-<subset>.csv`` and ``per-sequence_results-<subset>.csv`` into ``folder``.

        Returns the two paths.
        """
        global_path, per_sequence_path = csv_paths(folder, subset)
        write_csv_table(global_path, GLOBAL_COLUMNS, [[self.global_scores[c] for c in GLOBAL_COLUMNS]])
        write_csv_table(per_sequence_path, PER_SEQUENCE_COLUMNS, [list(row) for row in self.per_object])
        return global_path, per_sequence_path

    @classmethod
    def read_csv(cls, folder: str, subset: str) -> "DavisScores":
        """Read the two CSVs written by ``write_csv``."""
        global_path, per_sequence_path = csv_paths(folder, subset)
        header, rows = _read_csv(global_path)
        if tuple(header) != GLOBAL_COLUMNS or len(rows) != 1:
            raise ValueError(f"{global_path} is not a DAVIS global results table (columns {GLOBAL_COLUMNS}, one row)")
        global_scores = dict(zip(GLOBAL_COLUMNS, (_parse_float(v) for v in rows[0])))
        header, rows = _read_csv(per_sequence_path)
        if tuple(header) != PER_SEQUENCE_COLUMNS:
            raise ValueError(f"{per_sequence_path} is not a DAVIS per-sequence table (columns {PER_SEQUENCE_COLUMNS})")
        if any(len(row) != len(PER_SEQUENCE_COLUMNS) for row in rows):
            raise ValueError(f"{per_sequence_path} has rows without {len(PER_SEQUENCE_COLUMNS)} fields")
        per_object = [(name, _parse_float(j), _parse_float(f)) for name, j, f in rows]
        return cls(global_scores, per_object)

    def global_table(self) -> str:
        """The global scores as an aligned text table."""
        return format_table(GLOBAL_COLUMNS, [[self.global_scores[c] for c in GLOBAL_COLUMNS]])

    def per_sequence_table(self) -> str:
        """The per-object scores as an aligned text table."""
        return format_table(PER_SEQUENCE_COLUMNS, self.per_object)


def csv_paths(folder: str, subset: str) -> tuple[str, str]:
    """Paths of the global and per-sequence CSVs of ``subset`` in ``folder``."""
    return (
        os.path.join(folder, f"global_results-{subset}.csv"),
        os.path.join(folder, f"per-sequence_results-{subset}.csv"),
    )


class DavisEvaluator:
    """Accumulates per-object statistics sequence by sequence (reset / process / evaluate)."""

    def __init__(self, task: str) -> None:
        if task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        self.task = task
        self.reset()

    def reset(self) -> None:
        """Forget all processed sequences."""
        self._names: list[str] = []
        self._j_stats: list[tuple[float, float, float]] = []
        self._f_stats: list[tuple[float, float, float]] = []

    def process(self, gt: SequenceGroundTruth, pred_labels: np.ndarray, source: str = "predictions") -> None:
        """Score one sequence; see ``score_sequence`` for the arguments."""
        jaccard, boundary = score_sequence(gt, pred_labels, self.task, source)
        for k in range(gt.num_objects):
            self._names.append(f"{gt.name}_{k + 1}")
            self._j_stats.append(mean_recall_decay(jaccard[k]))
            self._f_stats.append(mean_recall_decay(boundary[k]))

    def evaluate(self) -> DavisScores:
        """Average the per-object Mean/Recall/Decay over all processed objects."""
        j_mean, j_recall, j_decay = _column_means(self._j_stats)
        f_mean, f_recall, f_decay = _column_means(self._f_stats)
        values = ((j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
        per_object = [(name, j[0], f[0]) for name, j, f in zip(self._names, self._j_stats, self._f_stats)]
        return DavisScores(dict(zip(GLOBAL_COLUMNS, values)), per_object)


def _column_means(stats: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Mean over objects of each of (mean, recall, decay); NaN when there are no objects."""
    if not stats:
        return math.nan, math.nan, math.nan
    mean, recall, decay = (float(np.mean(column)) for column in zip(*stats))
    return mean, recall, decay


def evaluate_results_folder(
    davis_path: str, results_path: str, task: str = "unsupervised", subset: str = "val"
) -> DavisScores:
    """Score every sequence of ``subset`` in ``results_path`` against the DAVIS ground truth.

    All prediction files are checked to exist before scoring starts; a missing sequence or
    frame raises ``FileNotFoundError`` listing all of them.
    """
    evaluator = DavisEvaluator(task)
    if not os.path.isdir(results_path):
        raise FileNotFoundError(f"results folder {results_path} not found")
    sequences = read_sequence_list(davis_path, subset)
    ground_truth = [read_ground_truth(davis_path, task, sequence) for sequence in sequences]
    check_predictions(results_path, {gt.name: evaluated_frames(gt, task) for gt in ground_truth})
    for gt in tqdm(ground_truth, desc=f"DAVIS {subset} {task}", unit="sequence"):
        pred_labels = read_predictions(results_path, gt, evaluated_frames(gt, task))
        evaluator.process(gt, pred_labels, source=f"predictions in {os.path.join(results_path, gt.name)}")
    return evaluator.evaluate()


def load_or_evaluate(
    davis_path: str, results_path: str, task: str = "unsupervised", subset: str = "val", recompute: bool = False
) -> DavisScores:
    """Scores of one results folder, cached as its two CSVs.

    If both CSVs of ``subset`` exist in ``results_path`` they are read back (as the original
    ``eval_davis.py`` does) unless ``recompute``; otherwise the folder is evaluated and the CSVs
    are (re)written.
    """
    global_path, per_sequence_path = csv_paths(results_path, subset)
    if not recompute and os.path.isfile(global_path) and os.path.isfile(per_sequence_path):
        logger.info("Using precomputed results from %s (pass --recompute to evaluate again)", results_path)
        return DavisScores.read_csv(results_path, subset)
    logger.info("Evaluating %s for the %s task...", results_path, task)
    scores = evaluate_results_folder(davis_path, results_path, task, subset)
    global_path, per_sequence_path = scores.write_csv(results_path, subset)
    logger.info("Global results saved in %s", global_path)
    logger.info("Per-sequence results saved in %s", per_sequence_path)
    return scores


def annotator_folders(results_path: str) -> list[str]:
    """The ``anno_<a>`` sub-folders of ``results_path`` in increasing ``a``; empty if there are none."""
    if not os.path.isdir(results_path):
        return []
    names = [
        name
        for name in os.listdir(results_path)
        if name.startswith(ANNOTATOR_PREFIX)
        and name[len(ANNOTATOR_PREFIX) :].isdigit()
        and os.path.isdir(os.path.join(results_path, name))
    ]
    return [os.path.join(results_path, name) for name in sorted(names, key=lambda n: int(n[len(ANNOTATOR_PREFIX) :]))]


def average_global_scores(scores: list[DavisScores]) -> dict[str, float]:
    """Column-wise mean of several global results (the reported Ref-DAVIS17 number averages the four annotators)."""
    return {column: float(np.mean([s.global_scores[column] for s in scores])) for column in GLOBAL_COLUMNS}


def annotator_rows(names: list[str], scores: list[DavisScores]) -> list[list]:
    """Rows for ``ANNOTATOR_COLUMNS``: one per annotator folder, then their ``mean``."""
    mean = average_global_scores(scores)
    rows = [[name] + [s.global_scores[c] for c in GLOBAL_COLUMNS] for name, s in zip(names, scores)]
    return rows + [["mean"] + [mean[c] for c in GLOBAL_COLUMNS]]


def format_table(columns: tuple[str, ...], rows: list) -> str:
    """Right-aligned text table; floats as in the CSVs."""
    cells = [list(columns)] + [[_format_value(v) for v in row] for row in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    return "\n".join(" ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in cells)


def _format_value(value: object) -> str:
    """CSV cell text: floats with ``FLOAT_FORMAT``, NaN as an empty cell (as pandas writes it)."""
    if isinstance(value, float):
        return "" if math.isnan(value) else FLOAT_FORMAT % value
    return str(value)


def _parse_float(text: str) -> float:
    return math.nan if text == "" else float(text)


def write_csv_table(path: str, columns: tuple[str, ...], rows: list[list]) -> None:
    """Write a table with a header row; floats with ``FLOAT_FORMAT``, NaN as an empty cell."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_format_value(v) for v in row] for row in rows])


def _read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path} is empty; delete it or pass --recompute")
    return rows[0], rows[1:]
