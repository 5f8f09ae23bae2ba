"""Ref-DAVIS17 training set (``--dataset_file davis``, ``--davis_path``); layout in docs/data.md.

The data must first be converted to the Ref-YouTube-VOS layout with
``tools/data/convert_davis_to_ytvos.py``. Unlike Ref-YouTube-VOS, the local frames around the
anchor are drawn even for one-frame clips.
"""
from __future__ import annotations

import argparse

from datasets.categories import DAVIS_CATEGORIES
from datasets.ref_video import ReferringVideoDataset
from datasets.transforms import make_clip_transforms

SPLITS = ("train",)


def build(split: str, args: argparse.Namespace) -> ReferringVideoDataset:
    """The training clips of ``args.davis_path`` (the valid split is read by ``inference_davis.py``)."""
    if split not in SPLITS:
        raise ValueError(f"Ref-DAVIS17 has no {split!r} training data; use inference_davis.py for valid")
    return ReferringVideoDataset(
        args.davis_path, split, categories=DAVIS_CATEGORIES, num_frames=args.num_frames,
        transforms=make_clip_transforms(split, max_size=args.max_size, caption_flip=args.caption_flip,
                                        photometric=args.photometric_distort),
        seed=args.seed, always_local_sampling=True, skip_bad_samples=args.skip_bad_samples,
        expressions_per_clip=args.expressions_per_clip,
    )
