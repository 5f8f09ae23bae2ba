"""Reading the metadata and frames of the ``meta_expressions`` datasets (Ref-YouTube-VOS, Ref-DAVIS17).

Layout of a dataset root (docs/data.md; Ref-DAVIS17 is converted to the same layout)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/Annotations/<video>/<frame>.png      palette PNG, pixel = object id
    <root>/<split>/meta.json                             {"videos": {video: {"objects": {obj_id: {"category", "frames"}}}}}
    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {video: {"expressions": {exp_id: {"exp": str, "obj_id": str}}, "frames": [stem, ...]}}}

Valid/test expression files have no ``obj_id``. The Ref-YouTube-VOS competition's "valid"
expression file also lists the test videos; the validation videos are ``valid − test``
(:func:`ytvos_split_videos`).

Every reader raises an error naming the file and what is wrong with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

FRAME_SUFFIX = ".jpg"
ANNOTATION_SUFFIX = ".png"
META_EXPRESSIONS_DIR = "meta_expressions"
META_EXPRESSIONS_FILE = "meta_expressions.json"
META_FILE = "meta.json"
FRAMES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"


class DatasetFormatError(ValueError):
    """A metadata file does not have the expected structure."""


@dataclass(frozen=True)
class Expression:
    """One referring expression: its id within the video, its text, and (train only) the object id."""

    exp_id: str
    text: str
    obj_id: str | None = None


@dataclass(frozen=True)
class VideoExpressions:
    """A video of a ``meta_expressions.json`` file: its frame stems and its expressions (file order)."""

    video: str
    frames: tuple[str, ...]
    expressions: tuple[Expression, ...]


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the dataset path (see docs/data.md for the layout)")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetFormatError(f"{path} is not valid JSON: {err}") from err


def _videos_of(data: Any, path: Path) -> dict:
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise DatasetFormatError(f"{path} must hold an object with a 'videos' mapping")
    return data["videos"]


def meta_expressions_path(root: str | Path, split: str) -> Path:
    """``<root>/meta_expressions/<split>/meta_expressions.json``."""
    return Path(root) / META_EXPRESSIONS_DIR / split / META_EXPRESSIONS_FILE


def read_meta_expressions(path: str | Path) -> dict[str, VideoExpressions]:
    """Videos of a ``meta_expressions.json`` file, in file order.

    Raises:
        FileNotFoundError, DatasetFormatError: naming ``path`` and the offending video/expression.
    """
    path = Path(path)
    videos = {}
    for video, frames, entries in iter_expression_entries(path):
        expressions = []
        for exp_id, exp in entries:
            obj_id = exp.get("obj_id")
            expressions.append(Expression(exp_id, exp["exp"], None if obj_id is None else str(obj_id)))
        videos[video] = VideoExpressions(video, frames, tuple(expressions))
    return videos


def iter_expression_entries(path: Path) -> Iterator[tuple[str, tuple[str, ...], list[tuple[str, dict]]]]:
    """``(video, frames, [(exp_id, expression entry), ...])`` per video of a ``meta_expressions.json`` (the
    layout Ref-YouTube-VOS and MeViS share), in file order, once the structure every reader needs is checked:
    a ``frames`` list and an ``expressions`` mapping per video, an ``exp`` string per expression.

    Raises:
        FileNotFoundError, DatasetFormatError: naming ``path`` and the offending video/expression.
    """
    for video, entry in _videos_of(load_json(path), path).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list) \
                or not isinstance(entry.get("expressions"), dict):
            raise DatasetFormatError(f"{path}: video {video!r} needs a 'frames' list and an 'expressions' mapping")
        entries = []
        for exp_id, exp in entry["expressions"].items():
            if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
                raise DatasetFormatError(f"{path}: expression {exp_id!r} of video {video!r} has no 'exp' string")
            entries.append((str(exp_id), exp))
        yield video, tuple(str(f) for f in entry["frames"]), entries


def read_meta(path: str | Path) -> dict[str, dict[str, dict]]:
    """Objects of each video of a ``meta.json`` file: ``{video: {obj_id: {"category": str, "frames": [...]}}}``."""
    path = Path(path)
    objects = {}
    for video, entry in _videos_of(load_json(path), path).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("objects"), dict):
            raise DatasetFormatError(f"{path}: video {video!r} needs an 'objects' mapping")
        objects[video] = {str(k): v for k, v in entry["objects"].items()}
    return objects


def ytvos_split_videos(root: str | Path, split: str) -> dict[str, VideoExpressions]:
    """The Ref-YouTube-VOS videos of ``split``: for ``valid``, the valid file's videos minus the test
    file's (the competition's valid file also lists the test videos); otherwise the file's videos.
    Sorted by video name, as the original."""
    videos = read_meta_expressions(meta_expressions_path(root, split))
    if split == "valid":
        test_path = meta_expressions_path(root, "test")
        if test_path.is_file():
            test_videos = read_meta_expressions(test_path)
            videos = {v: e for v, e in videos.items() if v not in test_videos}
    return dict(sorted(videos.items()))


def frame_path(root: str | Path, split: str, video: str, frame: str) -> Path:
    """``<root>/<split>/JPEGImages/<video>/<frame>.jpg``."""
    return Path(root) / split / FRAMES_DIR / video / f"{frame}{FRAME_SUFFIX}"


def read_frame(path: str | Path) -> Image.Image:
    """An RGB image; errors name the file when it is missing or cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame {path} is listed in the metadata but does not exist")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise OSError(f"frame {path} cannot be read as an image: {err}") from err


def read_frame_array(path: str | Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB array of :func:`read_frame`."""
    return np.asarray(read_frame(path))


def read_annotation(path: str | Path) -> np.ndarray:
    """``[H, W]`` palette indices (object ids) of an annotation PNG; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation {path} does not exist")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise OSError(f"expected a palette or grayscale PNG, got mode {image.mode}")
            return np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise OSError(f"annotation {path} cannot be read: {err}") from err
