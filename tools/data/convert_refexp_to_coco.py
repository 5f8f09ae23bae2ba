"""Convert RefCOCO / RefCOCO+ / RefCOCOg to COCO-format files, one "image" per sentence.

    python tools/data/convert_refexp_to_coco.py --coco_path data/coco [--datasets refcoco refcoco+ refcocog]

Reads, for each dataset ``<name>``, the REFER annotations ``<coco_path>/<name>/refs(<split_by>).p``
(a pickle of a list of refs ``{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent",
...}], ...}``; split_by is ``unc`` for RefCOCO/RefCOCO+ and ``umd`` for RefCOCOg) and
``<coco_path>/<name>/instances.json`` (COCO images, annotations, categories), and writes
``<coco_path>/<name>/instances_<name>_<split>.json`` for each of its splits. In these files every
(referred object, sentence) pair is one image, numbered from 1 in ref order:

* image: ``file_name``, ``height``, ``width`` and ``original_id`` (the COCO image's), ``id``,
  ``caption`` (the sentence's ``sent``), ``dataset_name``;
* its one annotation: the referred object's ``segmentation``, ``area``, ``iscrowd``, ``bbox``
  (xywh), ``category_id``, and ``image_id`` = the image's ``id``, ``id`` (the same number),
  ``original_id`` (the COCO annotation's);
* ``categories`` as in ``instances.json``.

Refs are assigned to splits as the REFER API does: ``testA``/``testB`` take every ref whose split
contains "A"/"B", ``test`` every ref whose split contains "test". The refs file is a pickle: only
convert files from the official download (unpickling runs code the file names).
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from datasets.refexp import NAMES, SPLIT_BY, SPLITS, instances_path  # noqa: E402
from util.io import write_json_atomic  # noqa: E402

logger = logging.getLogger(__name__)

REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
IMAGE_KEYS = ("id", "file_name", "height", "width")
ANNOTATION_KEYS = ("id", "image_id", "segmentation", "area", "iscrowd", "bbox", "category_id")


def refs_path(coco_path: str | Path, name: str) -> Path:
    """``<coco_path>/<name>/refs(<split_by>).p``."""
    return Path(coco_path) / name / f"refs({SPLIT_BY[name]}).p"


def load_refs(path: Path) -> list[dict]:
    """The refs of a REFER pickle (Python-2 pickles are read with latin-1 strings)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: download the REFER annotations of {path.parent.name} into "
                                f"{path.parent} (see docs/data.md)")
    try:
        with path.open("rb") as f:
            refs = pickle.load(f)
    except UnicodeDecodeError:
        with path.open("rb") as f:
            refs = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"{path} is not a readable pickle: {error}") from error
    if not isinstance(refs, list):
        raise ValueError(f"{path} must hold a list of refs, got {type(refs).__name__}")
    for position, ref in enumerate(refs):
        missing = [key for key in REF_KEYS if not isinstance(ref, dict) or key not in ref]
        if missing:
            raise ValueError(f"{path}: ref record {position} lacks {missing}")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and "sent" in s
                                                              for s in ref["sentences"]):
            raise ValueError(f"{path}: ref {ref['ref_id']} needs a list of sentences with a 'sent' text")
    return refs


def load_instances(path: Path) -> tuple[dict[Any, dict], dict[Any, dict], list[dict]]:
    """``(images by id, annotations by id, categories)`` of a COCO ``instances.json``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: it comes with the REFER annotations of {path.parent.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                     "categories")):
        raise ValueError(f"{path} must hold a COCO object with 'images', 'annotations' and 'categories' lists")
    tables = []
    for kind, keys in (("images", IMAGE_KEYS), ("annotations", ANNOTATION_KEYS)):
        by_id = {}
        for position, record in enumerate(data[kind]):
            missing = [key for key in keys if not isinstance(record, dict) or key not in record]
            if missing:
                raise ValueError(f"{path}: {kind} record {position} lacks {missing}")
            by_id[record["id"]] = record
        tables.append(by_id)
    return tables[0], tables[1], data["categories"]


def refs_of_split(refs: list[dict], split: str) -> list[dict]:
    """The refs of ``split`` in file order, selected as the REFER API does."""
    if split in ("testA", "testB", "testC"):
        return [ref for ref in refs if split[-1] in ref["split"]]
    if split == "test":
        return [ref for ref in refs if "test" in ref["split"]]
    return [ref for ref in refs if ref["split"] == split]


def convert_split(name: str, split: str, refs: list[dict], images: dict[Any, dict], annotations: dict[Any, dict],
                  categories: list[dict], *, refs_file: Path, instances_file: Path) -> dict:
    """The COCO-format content of ``instances_<name>_<split>.json`` (see the module docstring)."""
    out_images, out_annotations = [], []
    for ref in refs_of_split(refs, split):
        where = f"{refs_file}: ref {ref['ref_id']}"
        if ref["ann_id"] not in annotations:
            raise ValueError(f"{where}: annotation {ref['ann_id']} is not in {instances_file}")
        if ref["image_id"] not in images:
            raise ValueError(f"{where}: image {ref['image_id']} is not in {instances_file}")
        annotation, image = annotations[ref["ann_id"]], images[ref["image_id"]]
        if annotation["image_id"] != image["id"]:
            raise ValueError(f"{where}: annotation {ref['ann_id']} belongs to image {annotation['image_id']} in "
                             f"{instances_file}, not to the ref's image {ref['image_id']}")
        for sentence in ref["sentences"]:
            number = len(out_images) + 1
            out_images.append({
                "file_name": image["file_name"], "height": image["height"], "width": image["width"],
                "original_id": image["id"], "id": number, "caption": sentence["sent"], "dataset_name": name,
            })
            out_annotations.append({
                "segmentation": annotation["segmentation"], "area": annotation["area"],
                "iscrowd": annotation["iscrowd"], "bbox": annotation["bbox"],
                "category_id": annotation["category_id"], "image_id": number, "id": number,
                "original_id": annotation["id"],
            })
    return {"images": out_images, "annotations": out_annotations, "categories": categories}


def convert(coco_path: str | Path, names: tuple[str, ...] = NAMES) -> list[Path]:
    """Write the converted files of ``names`` under ``coco_path``; returns their paths."""
    written = []
    for name in names:
        refs_file, instances_file = refs_path(coco_path, name), Path(coco_path) / name / "instances.json"
        refs = load_refs(refs_file)
        images, annotations, categories = load_instances(instances_file)
        for split in SPLITS[name]:
            data = convert_split(name, split, refs, images, annotations, categories, refs_file=refs_file,
                                 instances_file=instances_file)
            path = instances_path(coco_path, name, split)
            write_json_atomic(path, data)
            logger.info("%s %s: %d sentences of %d refs → %s", name, split, len(data["images"]),
                        len(refs_of_split(refs, split)), path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco_path", default="data/coco", help="folder holding train2014/ and one folder per dataset")
    parser.add_argument("--datasets", nargs="+", default=list(NAMES), choices=NAMES, help="datasets to convert")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(args.coco_path, tuple(args.datasets))


if __name__ == "__main__":
    main()
