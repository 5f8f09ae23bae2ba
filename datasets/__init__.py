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

from datasets import davis, ytvos
from datasets.categories import REF_SHAPES_CATEGORIES

# --dataset_file → builder(split, args). The image datasets, A2D/JHMDB and joint training have
# their own readers (not part of this module yet).
BUILDERS: dict[str, Callable[[str, argparse.Namespace], Dataset]] = {
    "ytvos": ytvos.build,
    "davis": davis.build,
    # the synthetic quick-start dataset: Ref-YouTube-VOS layout, shapes as categories
    "ref_shapes": partial(ytvos.build, categories=REF_SHAPES_CATEGORIES),
}


def build_dataset(name: str, split: str, args: argparse.Namespace) -> Dataset:
    """The ``split`` of dataset ``name`` (a ``--dataset_file`` value) configured by ``args``."""
    if name not in BUILDERS:
        raise ValueError(f"--dataset_file {name} has no training reader (A2D, JHMDB, RefCOCO and joint are not available); available: {sorted(BUILDERS)}")
    return BUILDERS[name](split, args)
