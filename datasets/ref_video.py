"""Training clips of the ``meta_expressions`` datasets (Ref-YouTube-VOS, Ref-DAVIS17).

One sample per (video, expression, anchor frame), anchors every T-th frame of the sorted frame
list. Loading a sample draws the clip's frames around the anchor (:mod:`datasets.sampling`; a
video shorter than a clip repeats frames, as in the original), reads the frames and the referred
object's masks, builds the target and applies the clip transforms; a clip in which no frame shows
the object after the transforms is replaced by a random other sample, as in the original.

Bad input is reported with the video, frame and file: metadata problems (empty expression,
object id missing from ``meta.json``, unknown category) when the dataset is built, file problems
(missing or undecodable frame, missing annotation, frame and annotation of different sizes) when
the sample is loaded. With ``skip_bad_samples`` they are logged and skipped instead: bad metadata
entries are left out, a sample whose files fail is replaced by a random other one and listed in
the target's ``skipped``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datasets.meta import (ANNOTATION_SUFFIX, ANNOTATIONS_DIR, META_FILE, frame_path, meta_expressions_path,
                           read_annotation, read_frame, read_meta, read_meta_expressions)
from datasets.sampling import SampleRandom, sample_clip_frames, sample_random
from datasets.transforms import Compose
from util.box_ops import masks_to_boxes

logger = logging.getLogger(__name__)

# Draws of a replacement sample (no visible object after cropping, or a skipped bad sample)
# before giving up: far above what a healthy dataset needs (most clips show their object).
MAX_SAMPLE_ATTEMPTS = 100


class BadSampleError(RuntimeError):
    """A sample's files or metadata are missing or malformed; the message names video, frame and file."""


@dataclass(frozen=True)
class ClipSample:
    """One training sample: an expression of a video and the anchor frame its clip is drawn around."""

    video: str
    exp_id: str
    caption: str  # lower-cased, whitespace-collapsed
    obj_id: int
    category: str
    frames: tuple[str, ...]  # sorted frame stems of the video
    anchor: int  # index into ``frames``


def normalize_caption(text: str) -> str:
    """Lower case, single spaces (as the original's datasets do; its inference passes raw text)."""
    return " ".join(text.lower().split())


def report_bad_entries(bad_entries: Sequence[str], source: str, *, skip_bad_samples: bool) -> None:
    """Raise :class:`BadSampleError` listing ``bad_entries`` of ``source`` (a dataset's metadata), or with
    ``skip_bad_samples`` log them as left out."""
    if not bad_entries:
        return
    listed = "\n  ".join(bad_entries)
    if not skip_bad_samples:
        raise BadSampleError(f"{len(bad_entries)} bad entries in {source} (pass --skip_bad_samples to leave them "
                             f"out):\n  {listed}")
    logger.warning("left out %d bad entries of %s:\n  %s", len(bad_entries), source, listed)


def draw_training_sample(index: int, num_samples: int, load: Callable[[int, SampleRandom], tuple[Tensor, dict]],
                         rng: SampleRandom, *, skip_bad_samples: bool, source: str | Path,
                         require_visible: bool = True) -> tuple[Tensor, dict]:
    """Training sample ``index``, or a replacement drawn with ``rng`` when it cannot be used.

    ``load(i, rng)`` reads and transforms sample ``i``. A sample is replaced by a random other one
    when its referred object is visible in no frame after the transforms (with ``require_visible``)
    or, with ``skip_bad_samples``, when loading raises :class:`BadSampleError` (described in the
    returned target's ``skipped`` list); without it the error propagates, saying that
    ``--skip_bad_samples`` exists.

    Raises:
        BadSampleError: a bad sample without ``skip_bad_samples``, or no usable sample in
            :data:`MAX_SAMPLE_ATTEMPTS` draws (naming ``source``).
    """
    skipped: list[str] = []
    current = index
    for _ in range(MAX_SAMPLE_ATTEMPTS):
        try:
            clip, target = load(current, rng)
        except BadSampleError as error:
            if not skip_bad_samples:
                raise BadSampleError(f"{error}\n(pass --skip_bad_samples to train on without such samples: each is "
                                     "replaced by a random other sample, and they are counted and listed in the "
                                     "log)") from error
            skipped.append(str(error))
        else:
            if not require_visible or bool(target["valid"].any()):
                target["skipped"] = skipped
                return clip, target
        current = rng.python.randint(0, num_samples - 1)
    raise BadSampleError(
        f"sample {index} of {source}: no sample with the referred object visible after {MAX_SAMPLE_ATTEMPTS} "
        f"draws; skipped bad samples: {skipped or 'none'}"
    )


class ReferringVideoDataset(Dataset):
    """Training clips ``([T, 3, H, W] frames, target)`` of a dataset in the ``meta_expressions`` layout.

    Target keys: ``frames_idx [T]`` (indices into the sorted frame list), ``labels [T]``
    (category index), ``boxes [T, 4]`` (normalised cxcywh), ``masks [T, H, W]`` bool, ``valid [T]``
    int32, ``caption`` str, ``orig_size``/``size`` ``(h, w)`` before/after the transforms,
    ``video``, ``exp_id`` and ``skipped`` (descriptions of bad samples replaced by this one).

    Args:
        root: dataset root (holds ``<split>/JPEGImages``, ``<split>/Annotations``,
            ``<split>/meta.json`` and ``meta_expressions/<split>/meta_expressions.json``).
        split: folder name of the split, normally ``train``.
        categories: the dataset's category table; labels are indices into it.
        num_frames: T, frames per clip.
        transforms: clip transforms ending in :class:`~datasets.transforms.Normalize`.
        seed: run seed; with the epoch (:meth:`set_epoch`) and the index it fixes every random choice.
        always_local_sampling: draw the local frames even for one-frame clips (Ref-DAVIS17).
        skip_bad_samples: log and skip bad samples instead of raising :class:`BadSampleError`.
    """

    def __init__(self, root: str | Path, split: str, *, categories: Sequence[str], num_frames: int,
                 transforms: Compose, seed: int, always_local_sampling: bool = False,
                 skip_bad_samples: bool = False):
        self.root = Path(root)
        self.split = split
        self.categories = tuple(categories)
        self.num_frames = num_frames
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.always_local_sampling = always_local_sampling
        self.skip_bad_samples = skip_bad_samples
        self.samples, self.bad_entries = self._build_samples()
        report_bad_entries(self.bad_entries, f"the {self.root} metadata", skip_bad_samples=skip_bad_samples)
        if not self.samples:
            raise BadSampleError(f"no training samples in {self.root} (split {split!r})")

    def _build_samples(self) -> tuple[list[ClipSample], list[str]]:
        """Samples in the original's order (videos and expressions in file order, anchors every T frames)
        and a description of every bad metadata entry."""
        expressions_file = meta_expressions_path(self.root, self.split)
        meta_file = self.root / self.split / META_FILE
        videos = read_meta_expressions(expressions_file)
        objects = read_meta(meta_file)
        category_index = set(self.categories)
        samples, bad = [], []
        for video, entry in videos.items():
            frames = tuple(sorted(entry.frames))
            for expression in entry.expressions:
                where = f"video {video}, expression {expression.exp_id} ({expressions_file})"
                caption = normalize_caption(expression.text)
                video_objects = objects.get(video, {})
                if not caption:
                    bad.append(f"{where}: empty expression")
                elif expression.obj_id is None:
                    bad.append(f"{where}: no 'obj_id' (is this a training split?)")
                elif expression.obj_id not in video_objects:
                    bad.append(f"{where}: object id {expression.obj_id} is not among the objects "
                               f"{sorted(video_objects)} of {video} in {meta_file}")
                elif not frames:
                    bad.append(f"{where}: the video lists no frames")
                elif video_objects[expression.obj_id].get("category") not in category_index:
                    bad.append(f"{where}: category {video_objects[expression.obj_id].get('category')!r} of "
                               f"object {expression.obj_id} in {meta_file} is not in the category table")
                else:
                    samples += [
                        ClipSample(video, expression.exp_id, caption, int(expression.obj_id),
                                   video_objects[expression.obj_id]["category"], frames, anchor)
                        for anchor in range(0, len(frames), self.num_frames)
                    ]
        return samples, bad

    def set_epoch(self, epoch: int) -> None:
        """Select the random streams of ``epoch`` (call before creating the epoch's loader iterator)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        return draw_training_sample(index, len(self), lambda i, rng: self.load_clip(self.samples[i], rng),
                                    sample_random(self.seed, self.epoch, index),
                                    skip_bad_samples=self.skip_bad_samples, source=self.root)

    def load_clip(self, sample: ClipSample, rng: SampleRandom) -> tuple[Tensor, dict]:
        """Draw the clip of ``sample``, read it and transform it (raises :class:`BadSampleError`)."""
        indices = sample_clip_frames(sample.anchor, len(sample.frames), self.num_frames, rng.python,
                                     always_local=self.always_local_sampling)
        frames, masks = [], []
        for index in indices:
            frame, mask = self._read_frame_and_mask(sample, sample.frames[index])
            frames.append(frame)
            masks.append(mask)
        masks_t = torch.from_numpy(np.stack(masks))  # [T, H, W] float32
        boxes = masks_to_boxes(masks_t)  # [T, 4] inclusive pixel xyxy, zeros where absent
        height, width = masks_t.shape[-2:]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        target = {
            "frames_idx": torch.tensor(indices),
            "labels": torch.full((len(indices),), self.categories.index(sample.category), dtype=torch.long),
            "boxes": boxes,
            "masks": masks_t,
            "valid": masks_t.flatten(1).any(dim=1).long(),
            "caption": sample.caption,
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([height, width]),
        }
        clip, target = self.transforms(frames, target, rng)
        target["video"], target["exp_id"] = sample.video, sample.exp_id
        return clip, target

    def _read_frame_and_mask(self, sample: ClipSample, frame: str):
        """The RGB frame and the referred object's float ``[H, W]`` mask (1 on the object)."""
        image_path = frame_path(self.root, self.split, sample.video, frame)
        mask_path = self.root / self.split / ANNOTATIONS_DIR / sample.video / f"{frame}{ANNOTATION_SUFFIX}"
        where = f"video {sample.video}, frame {frame}"
        try:
            image = read_frame(image_path)
            annotation = read_annotation(mask_path)
        except OSError as error:  # FileNotFoundError included
            raise BadSampleError(f"{where}: {error}") from error
        if annotation.shape != (image.height, image.width):
            raise BadSampleError(f"{where}: annotation {mask_path} is {annotation.shape[0]}x{annotation.shape[1]} "
                                 f"but frame {image_path} is {image.height}x{image.width}")
        return image, (annotation == sample.obj_id).astype(np.float32)
