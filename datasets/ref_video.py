"""Training clips of the ``meta_expressions`` datasets (Ref-YouTube-VOS, Ref-DAVIS17).

One sample per (video, expression, anchor frame), anchors every T-th frame of the sorted frame
list. Loading a sample draws the clip's frames around the anchor (:mod:`datasets.sampling`; a
video shorter than a clip repeats frames, as in the original), reads the frames and the referred
object's masks, builds the target and applies the clip transforms; a clip in which no frame shows
the object after the transforms is replaced by a random other sample, as in the original.

With ``expressions_per_clip`` R > 1 (``--expressions_per_clip``) the samples of one (video,
anchor) are grouped, up to R per group and spread over the video's objects, and one item is a
group: one clip, drawn and transformed once, with a target per expression (expressions whose
object the transforms cut out are dropped; a group with none left is replaced). The loader stacks
the clips and lists the targets, each with the ``clip_index`` of its clip, and the model runs the
backbone once per clip (:meth:`models.referformer.ReferFormer.forward`).

Bad input is reported with the video, frame and file: metadata problems (empty expression,
object id missing from ``meta.json``, unknown category) when the dataset is built, file problems
(missing or undecodable frame, missing annotation, frame and annotation of different sizes) when
the sample is loaded. With ``skip_bad_samples`` they are logged and skipped instead: bad metadata
entries are left out, a sample whose files fail is replaced by a random other one and listed in
the target's ``skipped``.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
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

    @property
    def referent(self) -> int:
        """What the expression refers to (the object id)."""
        return self.obj_id


def group_samples(samples: Sequence[ClipSample], expressions_per_clip: int) -> list[tuple[int, ...]]:
    """Indices of ``samples`` in groups of at most ``expressions_per_clip`` that share a video and an anchor.

    With 1, every sample is its own group, in the samples' order (the original's). Otherwise groups
    keep the order of the first sample of each (video, anchor); within one, the expressions are taken
    in turn from each referent (the first expression of every object, then the second, ...) and cut
    into as few groups as the limit allows, of sizes that differ by one at most (7 expressions in
    groups of at most 3: 3, 2, 2), so that a group refers to as many different objects as it can.
    """
    if expressions_per_clip < 1:
        raise ValueError(f"expressions_per_clip must be at least 1, got {expressions_per_clip}")
    if expressions_per_clip == 1:
        return [(index,) for index in range(len(samples))]
    by_clip: dict[tuple[str, int], dict[object, list[int]]] = {}
    for index, sample in enumerate(samples):
        by_clip.setdefault((sample.video, sample.anchor), {}).setdefault(sample.referent, []).append(index)
    groups = []
    for by_referent in by_clip.values():
        turns = [index for turn in itertools.zip_longest(*by_referent.values()) for index in turn if index is not None]
        num_groups = -(-len(turns) // expressions_per_clip)
        size, larger = divmod(len(turns), num_groups)
        starts = list(itertools.accumulate([size + 1] * larger + [size] * (num_groups - larger), initial=0))
        groups += [tuple(turns[start:end]) for start, end in zip(starts, starts[1:])]
    return groups


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
    """Training clips ``([T, 3, H, W] frames, target)`` of a dataset in the ``meta_expressions`` layout;
    with ``expressions_per_clip`` > 1, ``([T, 3, H, W] frames, [target, ...])``, a target per expression.

    Target keys: ``frames_idx [T]`` (indices into the sorted frame list), ``labels [T]``
    (category index), ``boxes [T, 4]`` (normalised cxcywh), ``masks [T, H, W]`` bool, ``valid [T]``
    int32, ``caption`` str, ``orig_size``/``size`` ``(h, w)`` before/after the transforms,
    ``video``, ``exp_id`` and ``skipped`` (descriptions of bad samples replaced by this one; in a
    group's first target).

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
        expressions_per_clip: R; more than 1 shares each clip among up to R expressions
            (:func:`group_samples`).
    """

    def __init__(self, root: str | Path, split: str, *, categories: Sequence[str], num_frames: int,
                 transforms: Compose, seed: int, always_local_sampling: bool = False,
                 skip_bad_samples: bool = False, expressions_per_clip: int = 1):
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
        self.expressions_per_clip = expressions_per_clip
        self.groups = group_samples(self.samples, expressions_per_clip)

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
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[Tensor, dict | list[dict]]:
        clip, target = draw_training_sample(
            index, len(self), lambda i, rng: self.load_clip([self.samples[j] for j in self.groups[i]], rng),
            sample_random(self.seed, self.epoch, index), skip_bad_samples=self.skip_bad_samples, source=self.root,
        )
        targets = split_group_target(target, self.num_frames)
        return clip, targets if self.expressions_per_clip > 1 else targets[0]

    def load_clip(self, samples: Sequence[ClipSample], rng: SampleRandom) -> tuple[Tensor, dict]:
        """Draw the clip of ``samples`` (expressions of one video with one anchor), read it and transform it.

        Returns the clip and one target for all R expressions: ``caption`` and ``exp_id`` are lists
        of R, ``labels``/``boxes``/``masks``/``valid`` have R*T rows (expression-major), as
        :func:`split_group_target` reads them. Raises :class:`BadSampleError`.
        """
        first = samples[0]
        indices = sample_clip_frames(first.anchor, len(first.frames), self.num_frames, rng.python,
                                     always_local=self.always_local_sampling)
        frames = [self._read_frame(first, first.frames[index]) for index in indices]
        masks = [self._read_masks(samples, first.frames[index], frame) for index, frame in zip(indices, frames)]
        masks_t = torch.from_numpy(np.stack(masks, axis=1).reshape(-1, *masks[0].shape[1:]))  # [R*T, H, W] float32
        boxes = masks_to_boxes(masks_t)  # [R*T, 4] inclusive pixel xyxy, zeros where absent
        height, width = masks_t.shape[-2:]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        target = {
            "frames_idx": torch.tensor(indices),
            "labels": torch.tensor([self.categories.index(s.category) for s in samples for _ in indices]),
            "boxes": boxes,
            "masks": masks_t,
            "valid": masks_t.flatten(1).any(dim=1).long(),
            "caption": [sample.caption for sample in samples],
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([height, width]),
        }
        clip, target = self.transforms(frames, target, rng)
        target["video"], target["exp_id"] = first.video, [sample.exp_id for sample in samples]
        return clip, target

    def _read_frame(self, sample: ClipSample, frame: str) -> Image.Image:
        """The RGB frame ``frame`` of the sample's video."""
        image_path = frame_path(self.root, self.split, sample.video, frame)
        try:
            return read_frame(image_path)
        except OSError as error:  # FileNotFoundError included
            raise BadSampleError(f"video {sample.video}, frame {frame}: {error}") from error

    def _read_masks(self, samples: Sequence[ClipSample], frame: str, image: Image.Image) -> np.ndarray:
        """The referred objects' float ``[R, H, W]`` masks (1 on the object) in ``frame`` (read as ``image``) of
        the samples' video, from one read of the frame's annotation."""
        sample = samples[0]
        mask_path = self.root / self.split / ANNOTATIONS_DIR / sample.video / f"{frame}{ANNOTATION_SUFFIX}"
        where = f"video {sample.video}, frame {frame}"
        try:
            annotation = read_annotation(mask_path)
        except OSError as error:  # FileNotFoundError included
            raise BadSampleError(f"{where}: {error}") from error
        if annotation.shape != (image.height, image.width):
            raise BadSampleError(f"{where}: annotation {mask_path} is {annotation.shape[0]}x{annotation.shape[1]} "
                                 f"but frame {frame_path(self.root, self.split, sample.video, frame)} is "
                                 f"{image.height}x{image.width}")
        return np.stack([annotation == s.obj_id for s in samples]).astype(np.float32)


def split_group_target(target: dict, num_frames: int) -> list[dict]:
    """The per-expression targets of a clip's target for R expressions (:meth:`ReferringVideoDataset.load_clip`),
    leaving out expressions whose object is visible in no frame; ``skipped`` goes to the first one."""
    rows = ("labels", "boxes", "masks", "valid")
    targets = []
    for member, (caption, exp_id) in enumerate(zip(target["caption"], target["exp_id"])):
        part = slice(member * num_frames, (member + 1) * num_frames)
        if not target["valid"][part].any():
            continue
        member_target = {key: value for key, value in target.items() if key not in rows}
        member_target.update({key: target[key][part] for key in rows})
        member_target.update(caption=caption, exp_id=exp_id, skipped=[])
        targets.append(member_target)
    targets[0]["skipped"] = target.get("skipped", [])
    return targets
