"""Datasets: readers of the referring-segmentation benchmarks.

:func:`build_dataset` is the one place that maps ``--dataset_file`` to a reader; everything
shared by the video datasets lives once (``ref_video.py``, ``sampling.py``, ``transforms.py``,
``loader.py``) and each dataset file states only what is special about it.
"""
from __future__ import annotations

import argparse
from functools import partial
from typing import Callable

from torch.utils.data import Dataset

from datasets import a2d, davis, jhmdb, joint, mevis, refexp, ytvos
from datasets.categories import REF_SHAPES_CATEGORIES
from datasets.ref_eval import A2DEvaluator, RefExpEvaluator

# --dataset_file → builder(split, args).
BUILDERS: dict[str, Callable[[str, argparse.Namespace], Dataset]] = {
    "ytvos": ytvos.build,
    "davis": davis.build,
    # the synthetic quick-start dataset: Ref-YouTube-VOS layout, shapes as categories
    "ref_shapes": partial(ytvos.build, categories=REF_SHAPES_CATEGORIES),
    "a2d": a2d.build,
    "jhmdb": jhmdb.build,  # evaluation only; its "train" split reads the same samples
    "refcoco": partial(refexp.build, name="refcoco"),
    "refcoco+": partial(refexp.build, name="refcoco+"),
    "refcocog": partial(refexp.build, name="refcocog"),
    # pretraining on the three; its evaluation split is {name: dataset}, each evaluated on its own
    "all": refexp.build_all,
    "joint": joint.build,
    "mevis": mevis.build,
    # MeViS and Ref-YouTube-VOS concatenated, as "joint" concatenates RefCOCO/+/g and Ref-YouTube-VOS
    "mevis_ytvos": mevis.build_with_ytvos,
}


def build_dataset(name: str, split: str, args: argparse.Namespace) -> Dataset:
    """The ``split`` of dataset ``name`` (a ``--dataset_file`` value) configured by ``args``."""
    if name not in BUILDERS:
        raise ValueError(f"--dataset_file {name} has no reader; available: {sorted(BUILDERS)}")
    return BUILDERS[name](split, args)


def build_evaluations(name: str, args: argparse.Namespace) -> dict[str, tuple[Dataset, object]]:
    """The validation data of ``--dataset_file name`` and their evaluators, by dataset name.

    A2D-Sentences (its test split) and JHMDB-Sentences: mAP, precision@k, overall and mean IoU
    against the COCO-format ground truth; RefCOCO/+/g: REC and RIS metrics on each val split
    (``all`` evaluates the three). The evaluators follow ``engine.Evaluator``.
    """
    if name == "a2d":
        return {"a2d": (a2d.build("val", args), A2DEvaluator(a2d.coco_gt_path(args.a2d_path)))}
    if name == "jhmdb":
        return {"jhmdb": (jhmdb.build("val", args), A2DEvaluator(jhmdb.coco_gt_path(args.jhmdb_path)))}
    if name in ("all", *refexp.NAMES):
        names = refexp.NAMES if name == "all" else (name,)
        return {
            dataset_name: (
                refexp.build("val", args, dataset_name),
                RefExpEvaluator(refexp.instances_path(args.coco_path, dataset_name, "val"), prefix=dataset_name,
                                threshold=args.threshold),
            )
            for dataset_name in names
        }
    raise ValueError(f"--dataset_file {name} is not evaluated by main.py (inference_ytvos.py, inference_davis.py "
                     "and inference_mevis.py evaluate the video datasets)")
