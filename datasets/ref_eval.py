"""Evaluators of the referring benchmarks, with the engine's protocol: ``reset()``, ``process(outputs,
targets)`` per batch, ``evaluate() -> dict[str, float]``.

Both gather the predictions of all processes (:func:`util.dist.all_gather_object`), drop
duplicates (a sample evaluated by two processes counts once) and compute the metrics on every
process, against a COCO-format ground truth with one referred object per image id. Nothing is
written to disk; pycocotools' printing goes to the log.

:class:`A2DEvaluator` (A2D-Sentences and JHMDB-Sentences). Every query of a sample is a
prediction (:class:`~models.postprocessors.A2DSentencesPostProcess`). Keys:

* ``original mAP 0.5:0.95``, ``original AP 0.5``, ``original AP 0.75``, ``original AP 0.5:0.95 S``,
  ``original AP 0.5:0.95 M``, ``original AP 0.5:0.95 L``: COCO segmentation AP (``useCats = 0``)
  over the masks of **all** queries, the original's protocol and the published numbers;
* ``top1 mAP 0.5:0.95`` … ``top1 AP 0.5:0.95 L``: the same over the highest-scoring query of each
  sample only, the one answer a referring model gives. The original protocol differs both ways:
  it credits a right query the model did not choose (higher than ``top1`` when the choice is
  wrong) and counts the other queries as false positives (lower when they outrank hits);
* ``P@0.5`` … ``P@0.9``, ``overall_iou``, ``mean_iou``: the highest-scoring query of each sample
  against its ground truth (:func:`precision_and_iou`).

COCO reports -1 for an area range without ground truth (e.g. ``AP 0.5:0.95 L`` on small frames).

:class:`RefExpEvaluator` (RefCOCO/+/g val): the highest-scoring prediction of each image
(:class:`~models.postprocessors.PostProcess` and :class:`~models.postprocessors.PostProcessSegm`);
keys ``<prefix> bbox P@0.5`` … ``<prefix> bbox P@0.9``, ``<prefix> bbox overall_iou``,
``<prefix> bbox mean_iou`` and the same with ``segm``. REC precision = ``bbox P@0.5``; RIS =
``segm overall_iou`` / ``segm mean_iou``.

"Highest-scoring" is the original's rule: the last of the predictions in query order after a
stable sort by score, i.e. ties go to the later query (:func:`top_prediction_index`).
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from datasets.meta import DatasetFormatError, load_json
from models.postprocessors import REFERRED_OBJECT_LABEL, A2DSentencesPostProcess, PostProcess, PostProcessSegm
from util.box_ops import IOU_EPS
from util.dist import all_gather_object, is_main_process

logger = logging.getLogger(__name__)

# P@k counts samples whose IoU is strictly greater than k.
PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Names of COCOeval.stats[:6]: AP at IoU 0.5:0.95, 0.5, 0.75, and 0.5:0.95 for small/medium/large areas.
COCO_AP_NAMES = ("mAP 0.5:0.95", "AP 0.5", "AP 0.75", "AP 0.5:0.95 S", "AP 0.5:0.95 M", "AP 0.5:0.95 L")
ALL_QUERIES_PREFIX = "original"
TOP_QUERY_PREFIX = "top1"
# Missing ground-truth images named in an error message before "and N more".
MAX_NAMED_IDS = 5


# ----------------------------------------------------------------------------- metrics
def iou_float32(intersection: float, union: float) -> float:
    """``(I + eps) / (U + eps)`` computed in float32, as the original (torch's default dtype).

    The rounding matters at the thresholds: 32/64 stays exactly 0.5 (the eps vanishes in float32),
    so it does not count for P@0.5, while 48/80 becomes 0.6000000238 and counts for P@0.6.
    """
    eps = np.float32(IOU_EPS)
    return float((np.float32(intersection) + eps) / (np.float32(union) + eps))


def precision_and_iou(intersections: Sequence[float], unions: Sequence[float]) -> dict[str, float]:
    """P@k, overall and mean IoU of per-sample intersection and union areas.

    Returns:
        ``P@k`` for k in :data:`PRECISION_THRESHOLDS` (fraction of samples with IoU > k),
        ``overall_iou`` = ΣI / ΣU (1 if every union is empty) and ``mean_iou`` = mean of the
        per-sample IoU (:func:`iou_float32`).
    """
    if len(intersections) != len(unions) or not unions:
        raise ValueError(f"need as many intersections as unions, at least one; got {len(intersections)} and "
                         f"{len(unions)}")
    ious = [iou_float32(i, u) for i, u in zip(intersections, unions)]
    metrics = {f"P@{k}": sum(iou > k for iou in ious) / len(ious) for k in PRECISION_THRESHOLDS}
    # accumulated in float64 from float32 values, as the original's Python sums of .item()s
    total_intersection = sum(float(np.float32(i)) for i in intersections)
    total_union = sum(float(np.float32(u)) for u in unions)
    metrics["overall_iou"] = total_intersection / total_union if total_union > 0 else 1.0
    metrics["mean_iou"] = float(np.mean(ious))
    return metrics


def mask_intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Intersection and union areas (pixels) of two binary ``[H, W]`` masks of the same size."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def box_intersection_union(pred: Sequence[float], gt: Sequence[float]) -> tuple[float, float]:
    """Intersection and union areas of two xyxy boxes, in float32 as the original."""
    a, b = np.asarray(pred, dtype=np.float32), np.asarray(gt, dtype=np.float32)
    width, height = np.maximum(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), np.float32(0))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return float(intersection), float(union)


def top_prediction_index(scores: Sequence[float]) -> int:
    """Index of the highest score, the last one on ties (the original takes the last element after a
    stable ascending sort)."""
    if not scores:
        raise ValueError("no scores to choose from")
    best = max(scores)
    return max(i for i, score in enumerate(scores) if score == best)


# ----------------------------------------------------------------------------- ground truth and gathering
@contextlib.contextmanager
def _pycocotools_output_to_log(level: int = logging.DEBUG, title: str = "pycocotools") -> Iterator[None]:
    """Capture what pycocotools prints and log it (on the main process) under ``title`` instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip() and is_main_process():
        logger.log(level, "%s:\n%s", title, buffer.getvalue().rstrip())


def load_coco_gt(path: str | Path) -> COCO:
    """A COCO ground truth with one referred object per image (the first annotation of an image is used).

    Raises:
        FileNotFoundError, DatasetFormatError: naming ``path`` and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground truth {path} does not exist; see docs/data.md for how to prepare it")
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f"{path} is not a COCO ground truth: it needs 'images' and 'annotations' lists")
    sizes = {}
    for image in data["images"]:
        if not isinstance(image, dict) or not {"id", "height", "width"} <= image.keys():
            raise DatasetFormatError(f"{path}: image entry {image!r} needs 'id', 'height' and 'width'")
        sizes[image["id"]] = image
    annotated = set()
    for annotation in data["annotations"]:
        if not isinstance(annotation, dict) or "segmentation" not in annotation or "bbox" not in annotation \
                or annotation.get("image_id") not in sizes:
            raise DatasetFormatError(f"{path}: annotation {str(annotation)[:200]} needs 'segmentation', 'bbox' and the "
                                     "'image_id' of a listed image")
        annotated.add(annotation["image_id"])
    if not sizes:
        raise DatasetFormatError(f"{path} lists no images")
    unannotated = [image_id for image_id in sizes if image_id not in annotated]
    if unannotated:
        raise DatasetFormatError(f"{path}: image {unannotated[0]!r} (and {len(unannotated) - 1} more) has no "
                                 "annotation")
    data.setdefault("categories", [{"id": REFERRED_OBJECT_LABEL}])  # loadRes copies them
    coco = COCO()
    coco.dataset = data
    with _pycocotools_output_to_log():
        coco.createIndex()
    return coco


def _gather_unique(records: list, key: Callable[[Any], Hashable]) -> list:
    """The records of all processes in rank order, each ``key`` once (its first occurrence)."""
    merged, seen = [], set()
    for rank_records in all_gather_object(records):
        for record in rank_records:
            if key(record) not in seen:
                seen.add(key(record))
                merged.append(record)
    return merged


def _image_id(value: Any) -> Hashable:
    """A target's ``image_id``: a string (A2D, JHMDB) or an int, possibly as a one-element tensor (RefCOCO)."""
    return value.item() if isinstance(value, Tensor) else value


def _check_coverage(image_ids: set, coco_gt: COCO, gt_path: Path) -> None:
    """Every prediction's image is in the ground truth and every ground-truth image has a prediction."""
    unknown = [i for i in image_ids if i not in coco_gt.imgs]
    if unknown:
        raise ValueError(f"predictions for image id {unknown[0]!r} ({len(unknown)} unknown ids in all), which is not "
                         f"in the ground truth {gt_path}: is it the ground truth of the evaluated split?")
    missing = [i for i in coco_gt.imgs if i not in image_ids]
    if missing:
        named = ", ".join(repr(i) for i in missing[:MAX_NAMED_IDS])
        more = f" and {len(missing) - MAX_NAMED_IDS} more" if len(missing) > MAX_NAMED_IDS else ""
        raise ValueError(f"no prediction for the ground-truth images {named}{more} of {gt_path}: the evaluated "
                         "dataset must cover every image of the ground truth")


def _gt_mask(coco_gt: COCO, image_id: Hashable, rle: dict) -> np.ndarray:
    """``[H, W]`` ground-truth mask of an image (polygons or RLE), checked against a predicted RLE's size."""
    image = coco_gt.imgs[image_id]
    if list(rle["size"]) != [image["height"], image["width"]]:
        raise ValueError(f"the predicted mask of image {image_id!r} is {rle['size'][0]}x{rle['size'][1]}, the ground "
                         f"truth is {image['height']}x{image['width']}: is target['orig_size'] the original size?")
    return coco_gt.annToMask(coco_gt.imgToAnns[image_id][0])


def _target_sizes(targets: Sequence[Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
    """``orig_size`` and ``size`` of the targets, each stacked to ``[B, 2]``."""
    return torch.stack([t["orig_size"] for t in targets]), torch.stack([t["size"] for t in targets])


# ----------------------------------------------------------------------------- A2D / JHMDB
@dataclass(frozen=True)
class QueryPrediction:
    """The mask of one query of one sample, at the original frame size."""

    image_id: str
    query: int
    score: float
    rle: dict  # COCO RLE, counts as str


class A2DEvaluator:
    """A2D-Sentences / JHMDB-Sentences metrics (keys in the module doc).

    Args:
        coco_gt_path: the COCO ground truth of the evaluated samples (``datasets.a2d.coco_gt_path`` or
            ``datasets.jhmdb.coco_gt_path``); read when the evaluator is built.
    """

    def __init__(self, coco_gt_path: str | Path):
        self.coco_gt_path = Path(coco_gt_path)
        self.coco_gt = load_coco_gt(self.coco_gt_path)
        self.postprocess = A2DSentencesPostProcess()
        self.predictions: list[QueryPrediction] = []

    def reset(self) -> None:
        self.predictions = []

    def process(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Any]]) -> None:
        """Keep every query's mask of a batch.

        Args:
            outputs: ``pred_logits [B, T, Q, K]`` and ``pred_masks [B, T, Q, h, w]``; frame 0 and class 0
                are used (T = 1 after the model's ``valid_indices`` selection).
            targets: B dicts with ``image_id`` (str), ``orig_size`` and ``size`` ``(h, w)``.
        """
        orig_sizes, sizes = _target_sizes(targets)
        for result, target in zip(self.postprocess(outputs, orig_sizes, sizes), targets):
            image_id = _image_id(target["image_id"])
            self.predictions += [QueryPrediction(image_id, query, score, rle) for query, (score, rle)
                                 in enumerate(zip(result["scores"].tolist(), result["rle_masks"]))]

    def evaluate(self) -> dict[str, float]:
        predictions = _gather_unique(self.predictions, key=lambda p: (p.image_id, p.query))
        by_image: dict[Hashable, list[QueryPrediction]] = defaultdict(list)
        for prediction in predictions:
            by_image[prediction.image_id].append(prediction)
        _check_coverage(set(by_image), self.coco_gt, self.coco_gt_path)
        for preds in by_image.values():
            preds.sort(key=lambda p: p.query)
        top = {image_id: preds[top_prediction_index([p.score for p in preds])] for image_id, preds in by_image.items()}

        metrics = self._coco_segm_ap(predictions, ALL_QUERIES_PREFIX)
        metrics.update(self._coco_segm_ap(list(top.values()), TOP_QUERY_PREFIX))
        intersections, unions = [], []
        for image_id in self.coco_gt.imgs:
            rle = top[image_id].rle
            intersection, union = mask_intersection_union(mask_util.decode(rle), _gt_mask(self.coco_gt, image_id, rle))
            intersections.append(intersection)
            unions.append(union)
        metrics.update(precision_and_iou(intersections, unions))
        return metrics

    def _coco_segm_ap(self, predictions: Sequence[QueryPrediction], prefix: str) -> dict[str, float]:
        """COCOeval ``segm`` with ``useCats = 0`` → ``{"<prefix> <name>": stat}`` for :data:`COCO_AP_NAMES`."""
        results = [{"image_id": p.image_id, "category_id": REFERRED_OBJECT_LABEL, "segmentation": p.rle,
                    "score": p.score} for p in predictions]
        with _pycocotools_output_to_log(logging.INFO, f"COCO segmentation AP, {prefix} protocol"):
            coco_eval = COCOeval(self.coco_gt, self.coco_gt.loadRes(results), iouType="segm")
            coco_eval.params.useCats = 0  # referring: categories are not predicted
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return {f"{prefix} {name}": float(stat) for name, stat in zip(COCO_AP_NAMES, coco_eval.stats)}


# ----------------------------------------------------------------------------- RefCOCO / RefCOCO+ / RefCOCOg
@dataclass(frozen=True)
class TopPrediction:
    """The highest-scoring box and mask of one image, at the original image size."""

    image_id: int
    score: float
    box: tuple[float, float, float, float]  # xyxy pixels
    rle: dict  # COCO RLE, counts as str


class RefExpEvaluator:
    """RefCOCO/+/g box and mask precision and IoU of the top prediction (keys in the module doc).

    Args:
        coco_gt_path: the split's COCO file (``instances_<name>_val.json``), one image per referring
            expression; read when the evaluator is built.
        prefix: start of every key, normally the dataset name (``refcoco``); empty for none.
        threshold: mask probability threshold (``--threshold``).
    """

    def __init__(self, coco_gt_path: str | Path, prefix: str, threshold: float = 0.5):
        self.coco_gt_path = Path(coco_gt_path)
        self.coco_gt = load_coco_gt(self.coco_gt_path)
        self.prefix = prefix
        self.box_postprocess = PostProcess()
        self.mask_postprocess = PostProcessSegm(threshold)
        self.predictions: list[TopPrediction] = []

    def reset(self) -> None:
        self.predictions = []

    def process(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Any]]) -> None:
        """Keep the top prediction of each image of a batch.

        Args:
            outputs: ``pred_logits [B, T, Q, K]``, ``pred_boxes [B, T, Q, 4]``, ``pred_masks [B, T, Q, h, w]``.
            targets: B dicts with ``image_id`` (int or one-element tensor), ``orig_size`` and ``size``.
        """
        orig_sizes, sizes = _target_sizes(targets)
        results = self.mask_postprocess(self.box_postprocess(outputs, orig_sizes), outputs, orig_sizes, sizes)
        for result, target in zip(results, targets):
            best = top_prediction_index(result["scores"].tolist())
            self.predictions.append(TopPrediction(_image_id(target["image_id"]), float(result["scores"][best]),
                                                  tuple(result["boxes"][best].tolist()), result["rle_masks"][best]))

    def evaluate(self) -> dict[str, float]:
        predictions = {p.image_id: p for p in _gather_unique(self.predictions, key=lambda p: p.image_id)}
        _check_coverage(set(predictions), self.coco_gt, self.coco_gt_path)
        box_areas, mask_areas = ([], []), ([], [])  # (intersections, unions)
        for image_id in self.coco_gt.imgs:
            prediction = predictions[image_id]
            x, y, w, h = self.coco_gt.imgToAnns[image_id][0]["bbox"]
            for areas, (intersection, union) in (
                (box_areas, box_intersection_union(prediction.box, (x, y, x + w, y + h))),
                (mask_areas, mask_intersection_union(mask_util.decode(prediction.rle),
                                                     _gt_mask(self.coco_gt, image_id, prediction.rle))),
            ):
                areas[0].append(intersection)
                areas[1].append(union)
        metrics = {}
        for kind, (intersections, unions) in (("bbox", box_areas), ("segm", mask_areas)):
            for name, value in precision_and_iou(intersections, unions).items():
                metrics[" ".join(filter(None, (self.prefix, kind, name)))] = value
        return metrics
