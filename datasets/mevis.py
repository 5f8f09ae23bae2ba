"""MeViS (``--dataset_file mevis``, ``--mevis_path``): motion expressions that may refer to several objects.

Layout of a MeViS root (the release's)::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json
        {"videos": {video: {"frames": [stem, ...],
                            "expressions": {exp_id: {"exp": str, "obj_id": [int, ...], "anno_id": [int, ...]}}}}}
    <root>/<split>/mask_dict.json      train and valid_u only
        {"<anno_id>": [COCO RLE {"size": [H, W], "counts": str} or null, one per frame of the video]}

Splits: ``train`` (masks on every frame), ``valid_u`` (masks released, for offline scores with
``eval_mevis.py``), ``valid`` (no masks and no ``obj_id``/``anno_id``; scored by the challenge server).
A ``mask_dict.json`` list follows the order of its video's ``frames`` list; ``null`` marks a frame
where the object is absent.

What is special about MeViS, next to Ref-YouTube-VOS (whose clip sampling, transforms and
replacement of clips without a visible target :class:`~datasets.ref_video.ReferringVideoDataset`
provides): the target of an expression in a frame is the **union** of the masks of all its
``anno_id`` objects (empty where none appears: that frame is invalid, and its box is zeros), and
there is a single class (:data:`MEVIS_CATEGORIES`).

``--dataset_file mevis_ytvos`` trains on MeViS and Ref-YouTube-VOS together (:func:`build_with_ytvos`),
as ``--dataset_file joint`` concatenates RefCOCO/+/g and Ref-YouTube-VOS.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from PIL import Image

from datasets import ytvos
from datasets.categories import MEVIS_CATEGORIES
from datasets.meta import META_EXPRESSIONS_FILE, DatasetFormatError, frame_path, iter_expression_entries, load_json
from datasets.ref_video import BadSampleError, ReferringVideoDataset, normalize_caption
from datasets.refexp import EpochConcatDataset
from datasets.transforms import Compose, make_clip_transforms

SPLITS = ("train", "valid_u", "valid")
TRAINING_SPLITS = ("train",)
MASK_DICT_FILE = "mask_dict.json"


@dataclass(frozen=True)
class MevisExpression:
    """One expression of a MeViS video: its id, its text and (train, valid_u) the ``anno_id`` of every
    object it refers to, as strings (the keys of ``mask_dict.json``); ``None`` when the file has none."""

    exp_id: str
    text: str
    anno_ids: tuple[str, ...] | None


@dataclass(frozen=True)
class MevisVideo:
    """A video of a MeViS ``meta_expressions.json``: frame stems and expressions, both in file order."""

    video: str
    frames: tuple[str, ...]
    expressions: tuple[MevisExpression, ...]


def expressions_path(root: str | Path, split: str) -> Path:
    """``<root>/<split>/meta_expressions.json``."""
    return Path(root) / split / META_EXPRESSIONS_FILE


def mask_dict_path(root: str | Path, split: str) -> Path:
    """``<root>/<split>/mask_dict.json``."""
    return Path(root) / split / MASK_DICT_FILE


def read_expressions(path: str | Path) -> dict[str, MevisVideo]:
    """Videos of a MeViS ``meta_expressions.json``, in file order.

    Raises:
        FileNotFoundError, DatasetFormatError: naming ``path`` and the offending video or expression.
    """
    path = Path(path)
    videos = {}
    for video, frames, entries in iter_expression_entries(path):
        expressions = []
        for exp_id, exp in entries:
            anno_ids = exp.get("anno_id")
            if anno_ids is not None and not isinstance(anno_ids, list):
                raise DatasetFormatError(f"{path}: expression {exp_id!r} of video {video!r}: 'anno_id' must be a "
                                         f"list, got {anno_ids!r}")
            expressions.append(MevisExpression(exp_id, exp["exp"],
                                               None if anno_ids is None else tuple(str(a) for a in anno_ids)))
        videos[video] = MevisVideo(video, frames, tuple(expressions))
    return videos


def read_mask_dict(path: str | Path) -> dict[str, list]:
    """``{anno_id: [RLE or None per frame]}`` of a ``mask_dict.json``.

    Raises:
        FileNotFoundError, DatasetFormatError: naming ``path``.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DatasetFormatError(f"{path} must map each anno_id to a list of per-frame masks (COCO RLE or null)")
    return data


def annotation_problems(videos: dict[str, MevisVideo], mask_dict: dict[str, list], mask_path: str | Path,
                        expressions_file: str | Path) -> dict[tuple[str, str], str]:
    """What keeps each expression from having ground truth: no ``anno_id`` list, an ``anno_id`` missing from
    ``mask_dict.json``, or a mask list whose length is not the video's frame count.

    Returns:
        ``{(video, exp_id): description naming the files}`` for the expressions with a problem.
    """
    problems = {}
    for video, entry in videos.items():
        for expression in entry.expressions:
            where = f"video {video}, expression {expression.exp_id}"
            if expression.anno_ids is None:
                problems[video, expression.exp_id] = (
                    f"{where}: no 'anno_id' in {expressions_file} (a split without ground truth, such as valid?)")
                continue
            for anno_id in expression.anno_ids:
                if anno_id not in mask_dict:
                    problems[video, expression.exp_id] = f"{where}: anno_id {anno_id} is not in {mask_path}"
                    break
                if len(mask_dict[anno_id]) != len(entry.frames):
                    problems[video, expression.exp_id] = (
                        f"{where}: anno_id {anno_id} has {len(mask_dict[anno_id])} masks in {mask_path} but the "
                        f"video has {len(entry.frames)} frames in {expressions_file}")
                    break
    return problems


def rle_size(rle: dict) -> tuple[int, int]:
    """``(H, W)`` of a COCO RLE."""
    height, width = rle["size"]
    return int(height), int(width)


def decode_rle(rle: Any) -> np.ndarray:
    """bool ``[H, W]`` mask of a COCO RLE (compressed ``counts`` string, as MeViS stores, or a list of runs).

    Raises:
        ValueError: ``rle`` is not a COCO RLE.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"expected a COCO RLE {{'size': [H, W], 'counts': ...}}, got {str(rle)[:80]}")
    height, width = rle_size(rle)
    if isinstance(rle["counts"], list):  # uncompressed runs: compress first
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).astype(bool)


def union_mask(rles: Iterable[Any], size: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]`` union of the masks ``rles`` (``None`` = absent object) of one frame of ``size`` ``(H, W)``.

    Raises:
        ValueError: a mask is not a COCO RLE or is not ``size``.
    """
    union = np.zeros(size, dtype=bool)
    for rle in rles:
        if rle is None:
            continue
        mask = decode_rle(rle)
        if mask.shape != tuple(size):
            raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]} but the frame is {size[0]}x{size[1]}")
        union |= mask
    return union


@dataclass(frozen=True)
class MevisClipSample:
    """One training sample: an expression, the objects it refers to, and the anchor frame of its clip.

    The fields :class:`~datasets.ref_video.ReferringVideoDataset` reads are those of
    :class:`~datasets.ref_video.ClipSample`; ``anno_ids`` replaces its single ``obj_id``.
    """

    video: str
    exp_id: str
    caption: str  # lower-cased, whitespace-collapsed
    anno_ids: tuple[str, ...]
    category: str
    frames: tuple[str, ...]  # sorted frame stems of the video
    anchor: int  # index into ``frames``

    @property
    def referent(self) -> tuple[str, ...]:
        """What the expression refers to (its objects' annotation ids)."""
        return self.anno_ids


class MevisDataset(ReferringVideoDataset):
    """Training clips ``([T, 3, H, W] frames, target)`` of a MeViS split (target keys as
    :class:`~datasets.ref_video.ReferringVideoDataset`'s; ``masks`` is the union of the referred objects).

    Samples in the order of the MeViS authors' ReferFormer dataset: videos and expressions in file
    order, anchors every T-th frame of the sorted frame list. ``mask_dict.json`` is read whole (as
    theirs does).

    Args:
        root: MeViS root (holds ``<split>/JPEGImages``, ``<split>/meta_expressions.json``,
            ``<split>/mask_dict.json``).
        split: ``train`` (or ``valid_u``, which has masks too).
        num_frames, transforms, seed, skip_bad_samples, expressions_per_clip: as for
            :class:`~datasets.ref_video.ReferringVideoDataset`.
    """

    def __init__(self, root: str | Path, split: str, *, num_frames: int, transforms: Compose, seed: int,
                 skip_bad_samples: bool = False, expressions_per_clip: int = 1):
        self.expressions_file = expressions_path(root, split)
        self.mask_file = mask_dict_path(root, split)
        self.mask_dict = read_mask_dict(self.mask_file)
        # frame stem → its index in the file's frame list, which the mask lists follow
        self.frame_index: dict[str, dict[str, int]] = {}
        super().__init__(root, split, categories=MEVIS_CATEGORIES, num_frames=num_frames, transforms=transforms,
                         seed=seed, skip_bad_samples=skip_bad_samples, expressions_per_clip=expressions_per_clip)

    def _build_samples(self) -> tuple[list[MevisClipSample], list[str]]:
        """Samples (in the order of the class docstring) and a description of every bad metadata entry."""
        videos = read_expressions(self.expressions_file)
        problems = annotation_problems(videos, self.mask_dict, self.mask_file, self.expressions_file)
        samples, bad = [], []
        for video, entry in videos.items():
            self.frame_index[video] = {frame: index for index, frame in enumerate(entry.frames)}
            frames = tuple(sorted(entry.frames))
            for expression in entry.expressions:
                caption = normalize_caption(expression.text)
                if not caption:
                    bad.append(f"video {video}, expression {expression.exp_id} ({self.expressions_file}): "
                               "empty expression")
                elif not frames:
                    bad.append(f"video {video}, expression {expression.exp_id} ({self.expressions_file}): the video "
                               "lists no frames")
                elif (video, expression.exp_id) in problems:
                    bad.append(problems[video, expression.exp_id])
                else:
                    samples += [
                        MevisClipSample(video, expression.exp_id, caption, expression.anno_ids, MEVIS_CATEGORIES[0],
                                        frames, anchor)
                        for anchor in range(0, len(frames), self.num_frames)
                    ]
        return samples, bad

    def _read_masks(self, samples: Sequence[MevisClipSample], frame: str, image: Image.Image) -> np.ndarray:
        """Per sample, the float ``[H, W]`` union of its objects' masks (1 on any of them) in ``frame`` (read as
        ``image``) → ``[R, H, W]``."""
        masks = []
        for sample in samples:
            index = self.frame_index[sample.video][frame]
            try:
                mask = union_mask((self.mask_dict[a][index] for a in sample.anno_ids), (image.height, image.width))
            except ValueError as error:
                raise BadSampleError(f"video {sample.video}, frame {frame}: {self.mask_file}, anno_id "
                                     f"{sample.anno_ids}: {error} ({frame_path(self.root, self.split, sample.video, frame)})"
                                     ) from error
            masks.append(mask)
        return np.stack(masks).astype(np.float32)


def build(split: str, args: argparse.Namespace) -> MevisDataset:
    """The training clips of ``args.mevis_path`` (valid_u and valid are read by ``inference_mevis.py``)."""
    if split not in TRAINING_SPLITS:
        raise ValueError(f"MeViS has no {split!r} training data; use inference_mevis.py for valid_u/valid")
    return MevisDataset(
        args.mevis_path, split, num_frames=args.num_frames,
        transforms=make_clip_transforms(split, max_size=args.max_size, caption_flip=args.caption_flip,
                                        photometric=args.photometric_distort),
        seed=args.seed, skip_bad_samples=args.skip_bad_samples, expressions_per_clip=args.expressions_per_clip,
    )


def build_with_ytvos(split: str, args: argparse.Namespace) -> EpochConcatDataset:
    """``--dataset_file mevis_ytvos``: the MeViS training clips, then Ref-YouTube-VOS's (binary model)."""
    if split not in TRAINING_SPLITS:
        raise ValueError(f"--dataset_file mevis_ytvos has no {split!r} split: it is training data only "
                         "(evaluate with inference_mevis.py or inference_ytvos.py)")
    if not args.binary:
        raise ValueError("--dataset_file mevis_ytvos trains a binary model (MeViS has one class, Ref-YouTube-VOS "
                         "65 categories): pass --binary")
    return EpochConcatDataset([build(split, args), ytvos.build(split, args)])
