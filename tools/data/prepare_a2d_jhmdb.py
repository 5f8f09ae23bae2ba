"""Write the sample lists and COCO ground truths that the A2D-/JHMDB-Sentences datasets read.

    python tools/data/prepare_a2d_jhmdb.py a2d --a2d_path data/a2d_sentences
    python tools/data/prepare_a2d_jhmdb.py jhmdb --jhmdb_path data/jhmdb_sentences [--seed 0] [--frames_per_video 3]

The original read these files from MTTR's preparation; this tool rebuilds them from the
released annotations (layouts in ``datasets/a2d.py`` and ``datasets/jhmdb.py``).

A2D-Sentences (reads ``Release/videoset.csv``, ``text_annotations/a2d_annotation.txt``,
``text_annotations/a2d_missed_videos.txt`` and the ``.h5`` annotations; writes into the
``--a2d_path`` root, where the original's layout has MTTR's files):

* ``a2d_sentences_single_frame_{train,test}_annotations.json``: for every query row of
  ``a2d_annotation.txt`` (file order) whose video is in the subset (``videoset.csv`` column 9:
  0 train, 1 test) and not a missed video, and for every annotated frame of that video (sorted
  ``.h5`` files) whose ``instance`` list holds the query's instance, one record
  ``[query (lower-cased), video_id, frame_idx, instance_id]``. This is MTTR's rule and order.
  Rows whose instance id is not an integer (the release has one, ``1 (copy)``) are left out with
  a warning, as MTTR does.
* ``a2d_sentences_test_annotations_in_coco_format.json``: one image per test record (id
  ``v_<video_id>_f_<frame_idx>_i_<instance_id>``, the mask's height and width) with one
  annotation: the instance's RLE mask, its area and box (xywh, from the mask), ``iscrowd`` 0,
  ``category_id`` 1.

JHMDB-Sentences (reads ``jhmdb_annotation.txt``, ``Rename_Images/<class>/<video>/*.png`` and
``puppet_mask/<class>/<video>/puppet_mask.mat``; writes into ``--jhmdb_path``):

* ``jhmdb_sentences_samples_metadata.json``: for every query row (file order), the video's
  usable frames are ``1..n`` with ``n = min(#png frames, #mask frames)``; ``--frames_per_video``
  of them (3, the protocol of Gavrilyuk et al. that MTTR follows; all if fewer) are drawn
  without replacement by one ``random.Random(--seed)`` shared by all videos in row order, and
  sorted. One record per chosen frame: ``[video_id, frame path, mask path, n, query]``, the
  paths relative to the parent of ``--jhmdb_path`` (``jhmdb_sentences/Rename_Images/...`` for
  the default path). MTTR drew its frames with an unseeded generator, so its choice cannot be
  reproduced; this file fixes the choice by the seed.
* ``jhmdb_sentences_gt_annotations_in_coco_format.json``: one image per record (id
  ``v_<video_id>_f_<frame_idx>``) with the chosen frame's mask as in A2D.

Files are written atomically (temporary file, then renamed); missing inputs raise errors
naming them.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from datasets import a2d, jhmdb  # noqa: E402
from datasets.meta import DatasetFormatError  # noqa: E402
from util.io import write_json_atomic  # noqa: E402

logger = logging.getLogger(__name__)

A2D_VIDEOSET_FILE = Path("Release") / "videoset.csv"
A2D_QUERIES_FILE = a2d.TEXT_ANNOTATIONS_DIR / "a2d_annotation.txt"
A2D_MISSED_VIDEOS_FILE = a2d.TEXT_ANNOTATIONS_DIR / "a2d_missed_videos.txt"
# videoset.csv has no header; its columns are: video_id, action-actor label, start time, end time,
# height, width, number of frames, number of annotated frames, subset.
VIDEOSET_COLUMNS = 9
VIDEOSET_ID_COLUMN, VIDEOSET_SUBSET_COLUMN = 0, 8
A2D_SUBSETS = {"train": 0, "test": 1}
A2D_QUERY_COLUMNS = ("video_id", "instance_id", "query")
JHMDB_QUERIES_FILE = "jhmdb_annotation.txt"
JHMDB_QUERY_COLUMNS = ("video_id", "query")
# Evaluation frames per JHMDB video (Gavrilyuk et al.'s protocol, followed by MTTR).
DEFAULT_FRAMES_PER_VIDEO = 3
# Referring datasets have one category; predictions are reported with the same id.
COCO_CATEGORY = {"id": 1, "name": "object"}


# ----------------------------------------------------------------------------- shared
def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {what}")
    return path


def read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file whose header is ``columns``; errors name the file and line."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != columns:
            raise DatasetFormatError(f"{path}: expected the header {','.join(columns)}, got {reader.fieldnames}")
        rows = []
        for row in reader:
            if None in row or any(row[c] is None for c in columns):
                raise DatasetFormatError(f"{path}:{reader.line_num}: expected {len(columns)} fields, got {row}")
            rows.append((reader.line_num, row))
    return rows


def coco_annotation(mask: np.ndarray, image_id: str, annotation_id: int) -> dict:
    """COCO annotation of a binary ``[H, W]`` mask: RLE (counts as str), area, xywh box."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    area, bbox = float(mask_util.area(rle)), [float(v) for v in mask_util.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": annotation_id, "image_id": image_id, "category_id": COCO_CATEGORY["id"], "segmentation": rle,
            "area": area, "bbox": bbox, "iscrowd": 0}


class CocoGroundTruth:
    """Collects one image and one annotation per image id; a repeated id is an error."""

    def __init__(self, source: str):
        self.source = source
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.ids: set[str] = set()

    def add(self, image_id: str, mask: np.ndarray, where: str) -> None:
        if image_id in self.ids:
            raise DatasetFormatError(f"{where}: image id {image_id} appears twice in {self.source}; every "
                                     "evaluation sample must be a different image")
        self.ids.add(image_id)
        height, width = mask.shape
        self.images.append({"id": image_id, "height": int(height), "width": int(width)})
        self.annotations.append(coco_annotation(mask, image_id, len(self.annotations) + 1))

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": [COCO_CATEGORY]}


# ----------------------------------------------------------------------------- A2D-Sentences
def read_videoset(path: Path) -> dict[str, int]:
    """``{video_id: subset}`` of ``videoset.csv`` (no header; subset 0 train, 1 test)."""
    _require_file(path, "download the A2D release (Release/videoset.csv)")
    subsets = {}
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != VIDEOSET_COLUMNS or not row[VIDEOSET_SUBSET_COLUMN].strip().isdigit():
                raise DatasetFormatError(f"{path}:{number}: expected {VIDEOSET_COLUMNS} columns ending in the subset "
                                         f"(0 train, 1 test), got {row}")
            subsets[row[VIDEOSET_ID_COLUMN].strip()] = int(row[VIDEOSET_SUBSET_COLUMN])
    return subsets


def read_missed_videos(path: Path) -> set[str]:
    """Video ids listed one per line in ``a2d_missed_videos.txt`` (left out of A2D-Sentences)."""
    _require_file(path, "download the A2D-Sentences text annotations")
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def a2d_samples(root: str | Path, subset: str) -> list[list]:
    """The ``[query, video_id, frame_idx, instance_id]`` records of an A2D subset (rule in the module doc)."""
    root = Path(root)
    videoset = read_videoset(root / A2D_VIDEOSET_FILE)
    missed = read_missed_videos(root / A2D_MISSED_VIDEOS_FILE)
    queries_file = _require_file(root / A2D_QUERIES_FILE, "download the A2D-Sentences text annotations")
    used = {video for video, s in videoset.items() if s == A2D_SUBSETS[subset] and video not in missed}
    frame_instances: dict[str, list[tuple[int, list[int]]]] = {}  # video → [(frame_idx, instance ids)]
    samples = []
    for line, row in read_csv_rows(queries_file, A2D_QUERY_COLUMNS):
        video = row["video_id"]
        if video not in used:
            continue
        if not row["instance_id"].strip().isdigit():
            logger.warning("%s:%d: instance id %r is not an integer; row left out", queries_file, line,
                           row["instance_id"])
            continue
        instance = int(row["instance_id"])
        if video not in frame_instances:
            frame_instances[video] = _annotated_frames(root, video)
        samples += [[row["query"].lower(), video, frame_idx, instance]
                    for frame_idx, ids in frame_instances[video] if instance in ids]
    return samples


def _annotated_frames(root: Path, video: str) -> list[tuple[int, list[int]]]:
    """``(frame_idx, instance ids)`` of a video's ``.h5`` annotations, by frame."""
    folder = root / a2d.MASKS_DIR / video
    files = sorted(folder.glob(f"*{a2d.MASK_SUFFIX}"))
    if not files:
        logger.warning("video %s has queries but no annotations in %s; it gives no samples", video, folder)
    frames = []
    for path in files:
        if not path.stem.isdigit():
            raise DatasetFormatError(f"{path}: annotation files must be named <frame:05d>{a2d.MASK_SUFFIX}")
        frames.append((int(path.stem), a2d.read_instance_masks(path)[0]))
    return frames


def a2d_coco_ground_truth(root: str | Path, samples: Iterable[list]) -> dict:
    """COCO ground truth of A2D records: the referred instance's mask in the annotated frame."""
    gt = CocoGroundTruth(a2d.COCO_GT_FILE)
    for query, video, frame_idx, instance in samples:
        path = a2d.mask_path(root, video, frame_idx)
        ids, masks = a2d.read_instance_masks(path)
        gt.add(a2d.a2d_image_id(video, frame_idx, instance), masks[ids.index(instance)],
               f"query {query!r} of video {video}, frame {frame_idx}, instance {instance} ({path})")
    return gt.to_dict()


def prepare_a2d(root: str | Path) -> list[Path]:
    """Write the A2D-Sentences sample lists and the test COCO ground truth; returns the written files."""
    root = Path(root)
    written = []
    for subset in A2D_SUBSETS:
        samples = a2d_samples(root, subset)
        written.append(write_json_atomic(a2d.prepared_output_path(root, a2d.SAMPLES_FILE.format(subset=subset)),
                                         samples))
        logger.info("A2D-Sentences %s: %d samples → %s", subset, len(samples), written[-1])
        if subset == "test":
            written.append(write_json_atomic(a2d.prepared_output_path(root, a2d.COCO_GT_FILE),
                                             a2d_coco_ground_truth(root, samples)))
    return written


# ----------------------------------------------------------------------------- JHMDB-Sentences
def _folders_by_video(root: Path, top: str) -> dict[str, Path]:
    """``{video: <root>/<top>/<class>/<video>}``; a video under two classes is an error."""
    folders: dict[str, Path] = {}
    for folder in sorted(p for p in (root / top).glob("*/*") if p.is_dir()):
        if folder.name in folders:
            raise DatasetFormatError(f"video {folder.name} is in two class folders: {folders[folder.name]} and "
                                     f"{folder}")
        folders[folder.name] = folder
    return folders


def _frame_count(folder: Path) -> int:
    """Number of frames ``00001.png …`` of a video folder; a gap in the numbering is an error."""
    stems = sorted(int(p.stem) for p in folder.glob(f"*{jhmdb.FRAME_SUFFIX}") if p.stem.isdigit())
    if not stems:
        raise FileNotFoundError(f"{folder} has no frames <frame:05d>{jhmdb.FRAME_SUFFIX}")
    expected = range(jhmdb.FIRST_FRAME_NUMBER, jhmdb.FIRST_FRAME_NUMBER + len(stems))
    missing = set(expected) - set(stems)
    if missing:
        raise DatasetFormatError(f"{folder}: frame {min(missing):05d}{jhmdb.FRAME_SUFFIX} is missing; frames must be "
                                 f"numbered 1..n without gaps")
    return len(stems)


def prepare_jhmdb(root: str | Path, *, seed: int = 0, frames_per_video: int = DEFAULT_FRAMES_PER_VIDEO) -> list[Path]:
    """Write the JHMDB-Sentences metadata and COCO ground truth (rule in the module doc); returns the files."""
    if frames_per_video < 1:
        raise ValueError(f"frames_per_video must be at least 1, got {frames_per_video}")
    root = Path(root)
    queries_file = _require_file(root / JHMDB_QUERIES_FILE, "download the JHMDB-Sentences text annotations")
    frame_folders = _folders_by_video(root, jhmdb.FRAMES_DIR)
    mask_folders = _folders_by_video(root, jhmdb.MASKS_DIR)
    base = jhmdb.metadata_base(root)
    rng = random.Random(seed)
    records = []
    gt = CocoGroundTruth(jhmdb.COCO_GT_FILE)
    for line, row in read_csv_rows(queries_file, JHMDB_QUERY_COLUMNS):
        video, where = row["video_id"], f"{queries_file}:{line}"
        if video not in frame_folders:
            raise FileNotFoundError(f"{where}: no frame folder {root / jhmdb.FRAMES_DIR}/<class>/{video}")
        if video not in mask_folders:
            raise FileNotFoundError(f"{where}: no mask folder {root / jhmdb.MASKS_DIR}/<class>/{video}")
        masks_path = mask_folders[video] / jhmdb.MASK_FILE
        masks = jhmdb.read_part_masks(masks_path)  # [T, H, W]
        usable = min(_frame_count(frame_folders[video]), len(masks))
        chosen = sorted(rng.sample(range(jhmdb.FIRST_FRAME_NUMBER, usable + 1), min(frames_per_video, usable)))
        for frame_idx in chosen:
            frame_path = frame_folders[video] / f"{frame_idx:05d}{jhmdb.FRAME_SUFFIX}"
            mask = masks[frame_idx - jhmdb.FIRST_FRAME_NUMBER]
            with Image.open(frame_path) as image:
                if (image.height, image.width) != mask.shape:
                    raise DatasetFormatError(f"{where}: frame {frame_path} is {image.height}x{image.width} but the "
                                             f"masks in {masks_path} are {mask.shape[0]}x{mask.shape[1]}")
            records.append([video, Path(os.path.relpath(frame_path, base)).as_posix(),
                            Path(os.path.relpath(masks_path, base)).as_posix(), usable, row["query"]])
            gt.add(jhmdb.jhmdb_image_id(video, frame_idx), mask, where)
    written = [write_json_atomic(jhmdb.metadata_path(root), records),
               write_json_atomic(jhmdb.coco_gt_path(root), gt.to_dict())]
    logger.info("JHMDB-Sentences: %d samples → %s", len(records), written[0])
    return written


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    datasets = parser.add_subparsers(dest="dataset", required=True)
    a2d_parser = datasets.add_parser("a2d", help="A2D-Sentences sample lists and test COCO ground truth")
    a2d_parser.add_argument("--a2d_path", default="data/a2d_sentences")
    jhmdb_parser = datasets.add_parser("jhmdb", help="JHMDB-Sentences samples metadata and COCO ground truth")
    jhmdb_parser.add_argument("--jhmdb_path", default="data/jhmdb_sentences")
    jhmdb_parser.add_argument("--seed", default=0, type=int, help="seed of the evaluation frame choice")
    jhmdb_parser.add_argument("--frames_per_video", default=DEFAULT_FRAMES_PER_VIDEO, type=int,
                              help="evaluation frames drawn per video")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.dataset == "a2d":
        prepare_a2d(args.a2d_path)
    else:
        prepare_jhmdb(args.jhmdb_path, seed=args.seed, frames_per_video=args.frames_per_video)


if __name__ == "__main__":
    main()
