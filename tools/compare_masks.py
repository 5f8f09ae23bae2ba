"""Compare two folders of predicted masks file by file: the IoU of each mask with the same file in the other.

    python tools/compare_masks.py output/fp32/valid/Annotations output/bf16/valid/Annotations

What a setting changes in the masks of one checkpoint (``--amp`` against float32, one machine or
implementation against another): both folders as the inference scripts write them
(``<video>/<exp_id>/<frame>.png``; any nesting works, files are paired by relative path), a pixel
belongs to the object when it is non-zero, and two empty masks agree (IoU 1). Prints the number of
masks, how many are identical, the mean, median and lowest IoU and the files with the lowest.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from davis2017.metrics import jaccard  # noqa: E402

LISTED_LOWEST = 5
"""Files with the lowest IoU named in the summary."""


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image) != 0


def compare_folders(first: str | Path, second: str | Path) -> dict[str, float]:
    """IoU of every ``*.png`` under ``first`` with the file at the same relative path under ``second``.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no masks, masks present in one folder only (a few are named), or a pair of
            masks of different sizes.
    """
    first, second = Path(first), Path(second)
    for folder in (first, second):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder of masks")
    names = {folder: {path.relative_to(folder).as_posix() for path in folder.rglob("*.png")} for folder in (first, second)}
    if not names[first]:
        raise ValueError(f"{first} holds no .png masks")
    for folder, other in ((first, second), (second, first)):
        only_here = sorted(names[folder] - names[other])
        if only_here:
            raise ValueError(f"{len(only_here)} masks of {folder} are not in {other}, e.g. {only_here[:3]}")
    ious = {}
    for name in sorted(names[first]):
        a, b = read_mask(first / name), read_mask(second / name)
        if a.shape != b.shape:
            raise ValueError(f"{name}: {a.shape[1]}x{a.shape[0]} in {first} but {b.shape[1]}x{b.shape[0]} in {second}")
        ious[name] = jaccard(a, b)  # IoU; 1 when both are empty
    return ious


def summary(ious: dict[str, float]) -> str:
    values = list(ious.values())
    lowest = sorted(ious, key=ious.get)[:LISTED_LOWEST]
    return (f"{len(values)} masks, {sum(v == 1.0 for v in values)} identical; IoU mean {statistics.fmean(values):.4f}, "
            f"median {statistics.median(values):.4f}, lowest {min(values):.4f}\n"
            "lowest: " + ", ".join(f"{name} {ious[name]:.3f}" for name in lowest))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="IoU of each mask of one folder with the same file in another")
    parser.add_argument("first", help="a folder of masks (e.g. <output_dir>/valid/Annotations)")
    parser.add_argument("second", help="the folder to compare it with, same layout")
    args = parser.parse_args(argv)
    ious = compare_folders(args.first, args.second)
    print(summary(ious))
    return ious


if __name__ == "__main__":
    main()
