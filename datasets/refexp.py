"""RefCOCO / RefCOCO+ / RefCOCOg as one-frame clips (``--dataset_file refcoco|refcoco+|refcocog|all``).

The referring expressions are read from the COCO-format files written by
``tools/data/convert_refexp_to_coco.py``, in which every (referred object, sentence) pair is one
"image" with exactly one annotation::

    <coco_path>/train2014/<file_name>                               the COCO train2014 images
    <coco_path>/<name>/instances_<name>_<split>.json    {"images": [...], "annotations": [...], "categories": [...]}
        image:      {"id", "file_name", "height", "width", "caption", "original_id", "dataset_name"}
        annotation: {"id", "image_id", "segmentation", "bbox" (xywh), "category_id", "iscrowd", "area", "original_id"}

A sample is the image as a clip of T = 1 frame, the referred object's mask (COCO polygons or RLE)
and box (xywh → xyxy, clamped to the image) and the caption (lower case, collapsed whitespace).
Like the original, a crowd object or one whose box has no area is dropped; a training sample whose
object was dropped, or cropped away by the transforms, is replaced by a random other one.

Bad input is reported with the file and the image or annotation id: malformed records (missing
keys, an annotation of an image that is not listed, an image without exactly one annotation) when
the dataset is built, missing or undecodable images and bad segmentations when the sample is
loaded. With ``skip_bad_samples`` (training only) they are logged and skipped instead, as in
:mod:`datasets.ref_video`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from datasets.image_transforms import make_image_transforms
from datasets.meta import DatasetFormatError, load_json, read_frame
from datasets.ref_video import BadSampleError, draw_training_sample, normalize_caption, report_bad_entries
from datasets.sampling import SampleRandom, sample_random
from datasets.transforms import Compose


# How each dataset's referring expressions were split (the "split_by" of its refs pickle) and the
# splits the converter writes; the order of the names is the order of "all" and of joint training.
SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS = {
    "refcoco": ("train", "val", "testA", "testB"),
    "refcoco+": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
}
NAMES = tuple(SPLITS)
IMAGES_DIR = "train2014"  # every RefCOCO/+/g image is a COCO train2014 image
# --binary: every object is the one "referred object" class.
BINARY_LABEL = 0

IMAGE_KEYS = ("id", "file_name", "height", "width", "caption")
ANNOTATION_KEYS = ("id", "image_id", "segmentation", "bbox", "category_id")


def instances_path(coco_path: str | Path, name: str, split: str) -> Path:
    """``<coco_path>/<name>/instances_<name>_<split>.json``."""
    return Path(coco_path) / name / f"instances_{name}_{split}.json"


@dataclass(frozen=True)
class ReferredObject:
    """One sample: a sentence and the object it refers to (a converted "image" and its annotation)."""

    image_id: int  # id of the converted image: one per (object, sentence) pair
    file_name: str  # relative to ``<coco_path>/train2014``
    height: int
    width: int
    caption: str  # lower-cased, whitespace-collapsed
    annotation_id: int
    category_id: int  # COCO category id, 1..90
    segmentation: Any  # COCO polygons (list of flat xy lists) or RLE dict
    bbox: tuple[float, float, float, float]  # pixel xywh
    iscrowd: bool


def read_referred_objects(path: str | Path) -> tuple[list[ReferredObject], list[str]]:
    """The samples of a converted file, by increasing image id (the original's order), and a
    description of every bad record (naming the file and the image or annotation id).

    Raises:
        FileNotFoundError, DatasetFormatError: the file is missing, not JSON, or has no
            ``images``/``annotations`` lists.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise DatasetFormatError(f"{path} must hold a COCO object with 'images' and 'annotations' lists "
                                 "(write it with tools/data/convert_refexp_to_coco.py)")
    bad = []
    images = {}
    for position, image in enumerate(data["images"]):
        missing = [key for key in IMAGE_KEYS if not isinstance(image, dict) or key not in image]
        if missing:
            bad.append(f"{path}: image record {position} (id {image.get('id') if isinstance(image, dict) else None}) "
                       f"lacks {missing}")
        elif not normalize_caption(str(image["caption"])):
            bad.append(f"{path}: image {image['id']} has an empty caption")
        else:
            images[image["id"]] = image
    listed = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    annotations: dict[Any, list[dict]] = {image_id: [] for image_id in images}
    for position, annotation in enumerate(data["annotations"]):
        missing = [key for key in ANNOTATION_KEYS if not isinstance(annotation, dict) or key not in annotation]
        if missing:
            bad.append(f"{path}: annotation record {position} "
                       f"(id {annotation.get('id') if isinstance(annotation, dict) else None}) lacks {missing}")
        elif annotation["image_id"] in annotations:
            annotations[annotation["image_id"]].append(annotation)
        elif annotation["image_id"] not in listed:
            bad.append(f"{path}: annotation {annotation['id']} belongs to image {annotation['image_id']}, "
                       "which is not in 'images'")
    samples = []
    for image_id in sorted(images):
        image, objects = images[image_id], annotations[image_id]
        if len(objects) != 1:
            bad.append(f"{path}: image {image_id} has {len(objects)} annotations; a referring expression refers to "
                       "exactly one object")
            continue
        (annotation,) = objects
        bbox = annotation["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            bad.append(f"{path}: annotation {annotation['id']} has bbox {bbox!r}, expected [x, y, width, height]")
            continue
        try:
            samples.append(ReferredObject(
                image_id=int(image_id), file_name=str(image["file_name"]), height=int(image["height"]),
                width=int(image["width"]), caption=normalize_caption(str(image["caption"])),
                annotation_id=int(annotation["id"]), category_id=int(annotation["category_id"]),
                segmentation=annotation["segmentation"], bbox=tuple(float(v) for v in bbox),
                iscrowd=bool(annotation.get("iscrowd", 0)),
            ))
        except (TypeError, ValueError) as error:
            bad.append(f"{path}: image {image_id} or its annotation {annotation['id']} has a non-numeric id, size, "
                       f"category or box: {error}")
    return samples, bad


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """``[H, W]`` bool mask of COCO polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, united)
    or of an RLE dict (``counts`` as a list of run lengths or a compressed string).

    Raises:
        ValueError: the segmentation is neither, or its RLE size is not ``(height, width)``.
    """
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation):
            raise ValueError(f"polygons must be lists of at least three x, y pairs, got {segmentation!r:.80}")
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(rles).any(axis=2)  # [H, W, polygons] → [H, W]
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE of size {segmentation['size']} on an image of size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            segmentation = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(segmentation).astype(bool)
    raise ValueError(f"expected COCO polygons or an RLE dict, got {segmentation!r:.80}")


class ReferringImageDataset(Dataset):
    """Samples ``([1, 3, H, W] image, target)`` of one split of RefCOCO, RefCOCO+ or RefCOCOg.

    Target keys (as the video datasets, T = 1): ``frames_idx [1]`` (0), ``labels [1]`` int64 (COCO
    category id, or 0 with ``binary``), ``boxes [1, 4]`` (normalised cxcywh), ``masks [1, H, W]``
    (bool after a resize), ``valid [1]`` int32 (1 iff the object is there), ``caption`` str,
    ``orig_size``/``size`` ``(h, w)`` before/after the transforms, ``image_id`` int (the
    converted file's image id) and ``skipped`` (descriptions of bad samples replaced by this one).

    Args:
        coco_path: root holding ``train2014/`` and ``<name>/instances_<name>_<split>.json``.
        name: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split: one of the dataset's :data:`SPLITS`.
        transforms: clip transforms ending in :class:`~datasets.transforms.Normalize`.
        seed: run seed; with the epoch (:meth:`set_epoch`) and the index it fixes every random choice.
        binary: label every object 0 instead of its COCO category id.
        replace_invisible: replace a sample whose object is not there after the transforms by a
            random other one (training); evaluation keeps every sample as it is.
        skip_bad_samples: log and skip bad samples instead of raising :class:`BadSampleError`.
    """

    def __init__(self, coco_path: str | Path, name: str, split: str, *, transforms: Compose, seed: int,
                 binary: bool = False, replace_invisible: bool = True, skip_bad_samples: bool = False):
        if name not in SPLITS or split not in SPLITS[name]:
            raise ValueError(f"unknown RefCOCO dataset/split {name}/{split}; available: {SPLITS}")
        self.coco_path = Path(coco_path)
        self.name = name
        self.split = split
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.binary = binary
        self.replace_invisible = replace_invisible
        self.skip_bad_samples = skip_bad_samples
        self.path = instances_path(coco_path, name, split)
        self.samples, self.bad_entries = read_referred_objects(self.path)
        report_bad_entries(self.bad_entries, str(self.path), skip_bad_samples=skip_bad_samples)
        if not self.samples:
            raise BadSampleError(f"no samples in {self.path}")

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of ``epoch`` (call before creating the epoch's loader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        rng = sample_random(self.seed, self.epoch, index)
        return draw_training_sample(index, len(self), lambda i, rng: self.load_sample(self.samples[i], rng), rng,
                                    skip_bad_samples=self.skip_bad_samples, source=self.path,
                                    require_visible=self.replace_invisible)

    def label(self, sample: ReferredObject) -> int:
        """The class index of ``sample``'s object: its COCO category id, or 0 with ``binary``."""
        return BINARY_LABEL if self.binary else sample.category_id

    def load_sample(self, sample: ReferredObject, rng: SampleRandom) -> tuple[Tensor, dict]:
        """Read ``sample`` and transform it into ``([1, 3, H, W] image, target)`` (raises :class:`BadSampleError`)."""
        image, mask, box = self.read_object(sample)
        target = {
            "frames_idx": torch.tensor([0]),
            "labels": torch.tensor([self.label(sample)], dtype=torch.long),
            "boxes": box[None],  # [1, 4]
            "masks": torch.from_numpy(mask)[None].float(),  # [1, H, W]
            "valid": torch.tensor([int(bool(mask.any()))], dtype=torch.int32),
            "caption": sample.caption,
            "orig_size": torch.tensor([sample.height, sample.width]),
            "size": torch.tensor([sample.height, sample.width]),
            "image_id": sample.image_id,
        }
        return self.transforms([image], target, rng)

    def read_object(self, sample: ReferredObject) -> tuple[Image.Image, np.ndarray, Tensor]:
        """The RGB image, the object's ``[H, W]`` bool mask and its pixel ``xyxy`` box ``[4]``.

        A crowd object or one whose clamped box has no area is dropped, as in the original: its
        mask and box are all zeros.
        """
        where = f"{self.path}: image {sample.image_id} (annotation {sample.annotation_id})"
        image_path = self.coco_path / IMAGES_DIR / sample.file_name
        try:
            image = read_frame(image_path)
        except OSError as error:  # FileNotFoundError included
            raise BadSampleError(f"{where}: {error}") from error
        if (image.height, image.width) != (sample.height, sample.width):
            raise BadSampleError(f"{where}: {image_path} is {image.height}x{image.width}, the record says "
                                 f"{sample.height}x{sample.width}")
        x, y, w, h = sample.bbox
        box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        box[0::2].clamp_(min=0, max=sample.width)
        box[1::2].clamp_(min=0, max=sample.height)
        if sample.iscrowd or not (box[2] > box[0] and box[3] > box[1]):
            return image, np.zeros((sample.height, sample.width), dtype=bool), torch.zeros(4)
        try:
            mask = decode_segmentation(sample.segmentation, sample.height, sample.width)
        except ValueError as error:
            raise BadSampleError(f"{where}: bad segmentation: {error}") from error
        return image, mask, box


class EpochConcatDataset(ConcatDataset):
    """:class:`~torch.utils.data.ConcatDataset` whose :meth:`set_epoch` reaches every part
    (the parts draw their per-sample randomness from the epoch)."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)


def build(split: str, args: argparse.Namespace, name: str) -> ReferringImageDataset:
    """Split ``split`` of RefCOCO dataset ``name`` under ``args.coco_path``: training samples with the
    image transforms and replacement of invisible objects, or evaluation samples (resize 360)."""
    train = split == "train"
    return ReferringImageDataset(
        args.coco_path, name, split,
        transforms=make_image_transforms(split, caption_flip=args.caption_flip), seed=args.seed,
        binary=args.binary, replace_invisible=train, skip_bad_samples=train and args.skip_bad_samples,
    )


def build_all(split: str, args: argparse.Namespace) -> EpochConcatDataset | dict[str, ReferringImageDataset]:
    """``--dataset_file all``: for training the three datasets concatenated in :data:`NAMES` order;
    for evaluation ``{name: dataset}``, each evaluated on its own."""
    if split == "train":
        return EpochConcatDataset([build(split, args, name) for name in NAMES])
    return {name: build(split, args, name) for name in NAMES}

