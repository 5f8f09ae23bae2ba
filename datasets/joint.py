"""Joint training on Ref-YouTube-VOS and RefCOCO/+/g pseudo-videos (``--dataset_file joint``).

One dataset of, in this order, the pseudo-video clips (:mod:`datasets.refexp2seq`) of RefCOCO,
RefCOCO+ and RefCOCOg and the Ref-YouTube-VOS training clips. All parts make T-frame clips with
the same video transforms; the model is binary (K = 1), as the two label spaces differ.
"""
from __future__ import annotations

import argparse

from datasets import refexp2seq, ytvos
from datasets.refexp import NAMES, EpochConcatDataset


def build(split: str, args: argparse.Namespace) -> EpochConcatDataset:
    """The joint training set: ``args.coco_path`` pseudo-videos then ``args.ytvos_path`` clips."""
    if split != "train":
        raise ValueError(f"--dataset_file joint has no {split!r} split: it is training data only "
                         "(evaluate with inference_ytvos.py)")
    if not args.binary:
        raise ValueError("--dataset_file joint trains a binary model (RefCOCO's COCO categories and "
                         "Ref-YouTube-VOS's categories differ): pass --binary")
    return EpochConcatDataset([refexp2seq.build(split, args, name) for name in NAMES] + [ytvos.build(split, args)])
