"""Convert Ref-DAVIS17 to the Ref-YouTube-VOS layout.

    python tools/data/convert_davis_to_ytvos.py --davis_path data/ref-davis [--copy]

Reads ``<davis_path>/DAVIS`` (the DAVIS-2017 trainval release: ``ImageSets/2017/{train,val}.txt``,
``JPEGImages/480p``, ``Annotations_unsupervised/480p``, ``davis_semantics.json``) and
``<davis_path>/davis_text_annotations`` (``Davis17_annot{1,2}[_full_video].txt``) and writes::

    <davis_path>/{train,valid}/JPEGImages/<video>/*.jpg
    <davis_path>/{train,valid}/Annotations/<video>/*.png
    <davis_path>/{train,valid}/meta.json
    <davis_path>/meta_expressions/{train,valid}/meta_expressions.json

Like the original, the frame and annotation folders are *moved* out of ``DAVIS/`` (re-extract the
DAVIS zip afterwards: evaluation needs the complete ``DAVIS/`` folder); ``--copy`` copies instead.

Expressions: each line of an annotation file is ``video object_id "expression"``. Per video, the
four files' lists are sorted by object id (string order) and zipped; the expression ids are
``4·k + a`` with a = 0 (annotator 1, first frame), 1 (annotator 1, full video), 2 (annotator 2,
first frame), 3 (annotator 2, full video).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "valid"}  # DAVIS ImageSets name → our split folder
# (file, encoding) in expression-id order a = 0..3; the annotator-2 files are not valid utf-8.
ANNOTATION_FILES = (
    ("Davis17_annot1.txt", "utf-8"),
    ("Davis17_annot1_full_video.txt", "utf-8"),
    ("Davis17_annot2.txt", "latin-1"),
    ("Davis17_annot2_full_video.txt", "latin-1"),
)
# Video names in the text annotations that differ from the DAVIS folder names.
VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}


def read_expressions(path: Path, encoding: str) -> dict[str, list[tuple[str, str]]]:
    """``{video: [(object_id, expression), ...]}`` of one annotation file, in file order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: download the Ref-DAVIS17 text annotations (see docs/data.md)")
    expressions: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for number, line in enumerate(path.read_text(encoding=encoding).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=2)
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 'video object_id \"expression\"', got {line!r}")
        video, obj_id, quoted = parts
        expressions[VIDEO_NAME_FIXES.get(video, video)].append((obj_id, quoted[1:-1]))
    return expressions


def video_expressions(annotations: list[dict[str, list[tuple[str, str]]]], video: str) -> dict[str, dict]:
    """The ``expressions`` entry of one video: the four lists sorted by object id and zipped."""
    lists = [sorted(annotation.get(video, []), key=lambda item: item[0]) for annotation in annotations]
    if len({len(items) for items in lists}) > 1:
        logger.warning("video %s: the annotation files have %s expressions; extra ones are dropped", video,
                       [len(items) for items in lists])
    expressions = {}
    for k, group in enumerate(zip(*lists)):
        for a, (obj_id, text) in enumerate(group):
            expressions[str(len(ANNOTATION_FILES) * k + a)] = {"exp": text, "obj_id": obj_id}
    return expressions


def convert(davis_path: str | Path, *, copy: bool = False) -> None:
    root = Path(davis_path)
    davis = root / "DAVIS"
    semantics_file = davis / "davis_semantics.json"
    if not semantics_file.is_file():
        raise FileNotFoundError(f"{semantics_file} not found: unzip the DAVIS-2017 trainval release into {davis}")
    semantics = json.loads(semantics_file.read_text())
    annotations = [read_expressions(root / "davis_text_annotations" / name, encoding)
                   for name, encoding in ANNOTATION_FILES]
    transfer = shutil.copytree if copy else shutil.move
    for image_set, split in SPLITS.items():
        list_file = davis / "ImageSets" / "2017" / f"{image_set}.txt"
        videos = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        meta, meta_expressions = {}, {}
        for video in videos:
            for source, target in (("JPEGImages", "JPEGImages"), ("Annotations_unsupervised", "Annotations")):
                destination = root / split / target / video
                if not destination.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    transfer(str(davis / source / "480p" / video), str(destination))
            frames = sorted(p.stem for p in (root / split / "JPEGImages" / video).glob("*.jpg"))
            categories = semantics.get(video)
            if categories is None:
                raise KeyError(f"video {video} of {list_file} has no entry in {semantics_file}")
            meta[video] = {"objects": {str(obj_id): {"category": categories[str(obj_id)], "frames": frames}
                                       for obj_id in range(1, len(categories) + 1)}}
            meta_expressions[video] = {"expressions": video_expressions(annotations, video), "frames": frames}
        (root / split / "meta.json").write_text(json.dumps({"videos": meta}))
        out = root / "meta_expressions" / split / "meta_expressions.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"videos": meta_expressions}))
        logger.info("%s: %d videos, %d expressions", split, len(videos),
                    sum(len(v["expressions"]) for v in meta_expressions.values()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis_path", default="data/ref-davis", help="folder holding DAVIS/ and davis_text_annotations/")
    parser.add_argument("--copy", action="store_true", help="copy the frame/annotation folders instead of moving them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert(args.davis_path, copy=args.copy)


if __name__ == "__main__":
    main()
