"""Miniature A2D-Sentences and JHMDB-Sentences releases, written by tests.

Frames are flat grey images whose level tells the frame number (:func:`frame_level`), and every
instance is a rectangle (:func:`a2d_box`, :func:`jhmdb_box`), so tests can predict pixels and masks.
The derived files (sample lists, COCO ground truths) are made by ``tools/data/prepare_a2d_jhmdb.py``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import torch
from PIL import Image
from torch import Tensor

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from util.video import write_mp4

HEIGHT, WIDTH = 32, 48
# Size of the frames after the evaluation resize: shorter side 360, longer 48 * 360 / 32.
VAL_SIZE = (360, 540)
# H.264 (yuv420p) and PNG round trips change a flat grey level by a few units at most.
GREY_TOLERANCE = 3.0
# video → (videoset subset: 0 train / 1 test, number of frames, {annotated frame_idx (1-based): instance ids})
A2D_VIDEOS = {
    "vidA": (0, 8, {3: (1, 2), 6: (1,)}),
    "vidB": (1, 6, {1: (1, 2), 6: (2,)}),
    "vidC": (0, 4, {2: (1,)}),  # a missed video
}
A2D_MISSED = ("vidC",)
# a2d_annotation.txt rows (video_id, instance_id, query); "1 (copy)" is the release's one bad instance id
A2D_QUERIES = (
    ("vidA", "1", "The man  on the LEFT"),
    ("vidA", "2", "a dog"),
    ("vidA", "1 (copy)", "a copied row"),
    ("vidB", "1", "a red ball"),
    ("vidB", "2", "the bright car"),
    ("vidC", "1", "never used"),
)
# video → (class folder, number of png frames, number of mask frames, query)
JHMDB_VIDEOS = {
    "brush_vid": ("brush_hair", 6, 6, "A woman brushes  her hair"),
    "catch_vid": ("catch", 5, 4, "a boy catches a ball"),
}


def frame_level(index: int) -> int:
    """Grey level of the frame with 0-based ``index`` (A2D) or 1-based number (JHMDB)."""
    return 20 + 25 * index


def frame_levels(clip: Tensor) -> list[float]:
    """Mean grey level of each frame of a normalised clip ``[T, 3, H, W]``."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((clip * std + mean) * 255).mean(dim=(1, 2, 3)).tolist()


def a2d_box(instance: int, frame_idx: int) -> tuple[int, int, int, int]:
    """Inclusive ``(x0, y0, x1, y1)`` of an A2D instance in an annotated frame."""
    x0, y0 = 4 + 20 * (instance - 1) + frame_idx, 3 + 2 * instance
    return x0, y0, x0 + 9, y0 + 11


def jhmdb_box(frame_idx: int) -> tuple[int, int, int, int]:
    """Inclusive ``(x0, y0, x1, y1)`` of the JHMDB actor in frame ``frame_idx`` (1-based)."""
    return 2 * frame_idx, 5, 2 * frame_idx + 15, 20


def box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    """``[H, W]`` uint8 mask of an inclusive box."""
    x0, y0, x1, y1 = box
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[y0:y1 + 1, x0:x1 + 1] = 1
    return mask


def grey_frame(level: int) -> Image.Image:
    return Image.fromarray(np.full((HEIGHT, WIDTH, 3), level, np.uint8))


def write_a2d_h5(path: Path, instances: tuple[int, ...], frame_idx: int) -> None:
    """An annotation file as in the release: ``reMask`` transposed, ``[W, H]`` for one instance."""
    masks = np.stack([box_mask(a2d_box(i, frame_idx)).T for i in instances])  # [N, W, H]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["instance"] = np.asarray(instances, dtype=np.float64)  # MATLAB doubles
        f["reMask"] = masks[0] if len(instances) == 1 else masks


def write_a2d(root: str | Path) -> Path:
    """Write the A2D release files of :data:`A2D_VIDEOS` under ``root``; returns ``root``."""
    root = Path(root)
    (root / "Release" / "clips320H").mkdir(parents=True, exist_ok=True)
    (root / "text_annotations").mkdir(parents=True, exist_ok=True)
    with (root / "Release" / "videoset.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        for video, (subset, frames, annotated) in A2D_VIDEOS.items():
            writer.writerow([video, 11, 0, 1, HEIGHT, WIDTH, frames, len(annotated), subset])
    for video, (_, frames, annotated) in A2D_VIDEOS.items():
        write_mp4([grey_frame(frame_level(i)) for i in range(frames)], root / "Release" / "clips320H" / f"{video}.mp4")
        for frame_idx, instances in annotated.items():
            write_a2d_h5(root / "text_annotations" / "a2d_annotation_with_instances" / video / f"{frame_idx:05d}.h5",
                         instances, frame_idx)
    with (root / "text_annotations" / "a2d_annotation.txt").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "instance_id", "query"])
        writer.writerows(A2D_QUERIES)
    (root / "text_annotations" / "a2d_missed_videos.txt").write_text("\n".join(A2D_MISSED) + "\n")
    return root


def write_jhmdb(root: str | Path) -> Path:
    """Write the JHMDB-Sentences release files of :data:`JHMDB_VIDEOS` under ``root``; returns ``root``."""
    root = Path(root)
    for video, (action, frames, mask_frames, _) in JHMDB_VIDEOS.items():
        frame_dir = root / "Rename_Images" / action / video
        frame_dir.mkdir(parents=True, exist_ok=True)
        for frame_idx in range(1, frames + 1):
            grey_frame(frame_level(frame_idx)).save(frame_dir / f"{frame_idx:05d}.png")
        mask_dir = root / "puppet_mask" / action / video
        mask_dir.mkdir(parents=True, exist_ok=True)
        part_mask = np.stack([box_mask(jhmdb_box(f)) for f in range(1, mask_frames + 1)], axis=-1)  # [H, W, T]
        scipy.io.savemat(mask_dir / "puppet_mask.mat", {"part_mask": part_mask})
    with (root / "jhmdb_annotation.txt").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "query"])
        writer.writerows((video, query) for video, (*_, query) in JHMDB_VIDEOS.items())
    return root
