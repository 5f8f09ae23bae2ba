"""A miniature COCO + REFER layout (RefCOCO/+/g), written by tests and converted with the real converter.

Every image holds three uniform-coloured objects on a noise background: a rectangle given as a
polygon (the "left" object), a rectangle given as an uncompressed RLE (the "right" object) and a
crowd region (compressed RLE). The refs of every dataset refer to the first two; one training ref
refers to the crowd region, which the datasets drop.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from datasets.refexp import SPLIT_BY, SPLITS
from tools.data.convert_refexp_to_coco import convert

HEIGHT, WIDTH = 64, 80
NUM_IMAGES = 3
# Objects (inclusive pixel boxes x0, y0, x1, y1) and their colours; the background is darker noise.
LEFT_BOX = (8, 10, 31, 37)
RIGHT_BOX = (50, 20, 69, 49)
CROWD_BOX = (36, 2, 45, 12)
LEFT_COLOUR = (230, 30, 30)
RIGHT_COLOUR = (30, 30, 230)
CROWD_COLOUR = (30, 230, 30)
PERSON, DOG = 1, 18  # COCO category ids
CAPTIONS = {"left": ("The man on the LEFT", "leftmost  person"), "right": ("a bright dog on the right",)}


@dataclass(frozen=True)
class Layout:
    """What was written: the root, and per COCO annotation id its inclusive box and category."""

    root: Path
    boxes: dict[int, tuple[int, int, int, int]]
    categories: dict[int, int]


def annotation_id(image: int, kind: str) -> int:
    """COCO annotation id of object ``kind`` (left, right, crowd) in image ``image`` (1-based)."""
    return 100 * image + ("left", "right", "crowd").index(kind)


def box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    """``[H, W]`` uint8 mask of an inclusive box."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[box[1]:box[3] + 1, box[0]:box[2] + 1] = 1
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO RLE with ``counts`` as a list of run lengths (column-major, starting with zeros)."""
    flat = mask.flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": ([0] if flat[0] else []) + counts}


def write_coco(root: str | Path, *, file_prefix: str = "COCO_train2014_") -> Layout:
    """Write ``train2014/`` images, ``<name>/instances.json`` and ``<name>/refs(<split_by>).p`` for
    the three datasets and convert them; returns the :class:`Layout`."""
    root = Path(root)
    (root / "train2014").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations, boxes, categories = [], [], {}, {}
    for image_id in range(1, NUM_IMAGES + 1):
        pixels = rng.integers(0, 90, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        file_name = f"{file_prefix}{image_id:012d}.jpg"
        for kind, box, colour, category in (("left", LEFT_BOX, LEFT_COLOUR, PERSON),
                                            ("right", RIGHT_BOX, RIGHT_COLOUR, DOG),
                                            ("crowd", CROWD_BOX, CROWD_COLOUR, PERSON)):
            pixels[box[1]:box[3] + 1, box[0]:box[2] + 1] = colour
            x0, y0, x1, y1 = box
            if kind == "left":  # polygon around the pixels (exclusive far edges)
                segmentation = [[x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1]]
            elif kind == "right":
                segmentation = uncompressed_rle(box_mask(box))
            else:
                rle = mask_utils.encode(np.asfortranarray(box_mask(box)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            ann_id = annotation_id(image_id, kind)
            annotations.append({"id": ann_id, "image_id": image_id, "segmentation": segmentation,
                                "area": (x1 - x0 + 1) * (y1 - y0 + 1), "iscrowd": int(kind == "crowd"),
                                "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "category_id": category})
            boxes[ann_id], categories[ann_id] = box, category
        Image.fromarray(pixels).save(root / "train2014" / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": HEIGHT, "width": WIDTH})
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": PERSON, "name": "person"}, {"id": DOG, "name": "dog"}]}
    for name, split_by in SPLIT_BY.items():
        (root / name).mkdir(exist_ok=True)
        (root / name / "instances.json").write_text(json.dumps(instances))
        with (root / name / f"refs({split_by}).p").open("wb") as f:
            pickle.dump(make_refs(name), f)
    convert(root)
    return Layout(root, boxes, categories)


def make_refs(name: str) -> list[dict]:
    """Refs of dataset ``name``: in training, image 1's left and right objects and image 2's crowd
    region; in each other split, image 3's left and right objects."""
    refs = []

    def add(image: int, kind: str, split: str, sentences: tuple[str, ...]) -> None:
        refs.append({"ref_id": len(refs), "ann_id": annotation_id(image, kind), "image_id": image, "split": split,
                     "category_id": PERSON if kind != "right" else DOG,
                     "sentences": [{"sent": s, "raw": s, "tokens": s.split(), "sent_id": 1000 * len(refs) + i}
                                   for i, s in enumerate(sentences)]})

    add(1, "left", "train", CAPTIONS["left"])
    add(1, "right", "train", CAPTIONS["right"])
    add(2, "crowd", "train", ("the crowd",))
    for split in SPLITS[name][1:]:
        add(3, "left", split, CAPTIONS["left"][:1])
        add(3, "right", split, CAPTIONS["right"])
    return refs
