"""Ref-YouTube-VOS training set (``--dataset_file ytvos``, ``--ytvos_path``); layout in docs/data.md.

The synthetic Ref-Shapes dataset of the quick start (``--dataset_file ref_shapes``) has the same
layout and is read from ``--ytvos_path`` too; only its category table differs.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from datasets.categories import YTVOS_CATEGORIES
from datasets.ref_video import ReferringVideoDataset
from datasets.transforms import make_clip_transforms

SPLITS = ("train",)


def build(
    split: str, args: argparse.Namespace, *, categories: Sequence[str] = YTVOS_CATEGORIES
) -> ReferringVideoDataset:
    """The training clips of ``args.ytvos_path`` (the valid/test splits are read by ``inference_ytvos.py``);
    labels index ``categories``."""
    if split not in SPLITS:
        raise ValueError(f"Ref-YouTube-VOS has no {split!r} training data; use inference_ytvos.py for valid/test")
    return ReferringVideoDataset(
        args.ytvos_path, split, categories=categories, num_frames=args.num_frames,
        transforms=make_clip_transforms(split, max_size=args.max_size, caption_flip=args.caption_flip,
                                        photometric=args.photometric_distort),
        seed=args.seed, skip_bad_samples=args.skip_bad_samples,
        expressions_per_clip=args.expressions_per_clip,
    )
