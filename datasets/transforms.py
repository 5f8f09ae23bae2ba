"""Clip transforms of the original's video recipe: one set of random parameters for all frames of a clip, except the
photometric distortion, which is drawn per frame.

A clip is a list of T PIL RGB frames plus a target dict:

* ``boxes [T, 4]`` float, pixel ``xyxy`` with inclusive max coordinates until :class:`Normalize`
  turns them into ``cxcywh`` divided by the frame ``(w, h)``;
* ``masks [T, H, W]`` (float from the dataset, bool after the first resize);
* ``valid [T]``, ``labels [T]``, ``caption`` (str), ``size`` ``(h, w)`` of the current frames.

A clip shared by R expressions (``--expressions_per_clip``) has one target with R*T rows of
``boxes``/``masks``/``valid``/``labels`` and a list of R captions: the transforms treat every row
alike, so all R expressions see the same random crop, flip and resize.

Every transform is called as ``transform(frames, target, rng)`` with the sample's
:class:`~datasets.sampling.SampleRandom`, so the result is a function of the sample's seed.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from datasets.sampling import SampleRandom
from opts import CAPTION_FLIP_MODES, PHOTOMETRIC_MODES
from util.box_ops import box_xyxy_to_cxcywh

Frames = list[Image.Image]
Target = dict
ClipTransform = Callable[[Frames, Target, SampleRandom], tuple[Frames, Target]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Shorter sides of the final training resize, and of the first resize before a random crop.
TRAIN_SCALES = (288, 320, 352, 392, 416, 448, 480, 512)
CROP_PRE_SCALES = (400, 500, 600)
CROP_MIN_SIZE, CROP_MAX_SIZE = 384, 600
# Evaluation resize (A2D/JHMDB/RefCOCO val): shorter side 360, longer at most 640.
EVAL_SCALE, EVAL_MAX_SIZE = 360, 640
# Check: a dropped frame's box becomes box // this (all zeros for boxes inside a 1000-px image).
CHECK_BOX_DIVISOR = 1000.0
_WHOLE_WORD_SIDES = re.compile(r"\b(left|right)(most)?\b")
_SWAP_SIDE = {"left": "right", "right": "left"}


def flip_caption(caption: str, mode: str = "whole_word") -> str:
    """The caption of a horizontally mirrored clip.

    ``whole_word`` swaps the words "left" and "right" (and "leftmost"/"rightmost"), so "bright"
    and "leftover" stay as they are. ``original`` reproduces the original's substring
    replacement: "left"→"@", "right"→"left", "@"→"right" (so "bright" becomes "bleft" and a
    literal "@" becomes "right").
    """
    if mode == "original":
        return caption.replace("left", "@").replace("right", "left").replace("@", "right")
    if mode == "whole_word":
        return _WHOLE_WORD_SIDES.sub(lambda m: _SWAP_SIDE[m.group(1)] + (m.group(2) or ""), caption)
    raise ValueError(f"unknown caption flip mode {mode!r}; choose one of {CAPTION_FLIP_MODES}")


def resized_shape(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output ``(h, w)`` of the shared resize rule: shorter side → ``size`` (reduced so
    the longer side stays within ``max_size``), longer side floored; unchanged if already there."""
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class Compose:
    def __init__(self, transforms: Sequence[ClipTransform]):
        self.transforms = list(transforms)

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        for transform in self.transforms:
            frames, target = transform(frames, target, rng)
        return frames, target


class RandomHorizontalFlip:
    """Mirror all frames, masks and boxes (``x0' = W − x1``, ``x1' = W − x0``) and swap left/right
    in the caption or captions (see :func:`flip_caption`), with probability ``p``."""

    def __init__(self, p: float = 0.5, caption_flip: str = "whole_word"):
        if caption_flip not in CAPTION_FLIP_MODES:
            raise ValueError(f"unknown caption flip mode {caption_flip!r}; choose one of {CAPTION_FLIP_MODES}")
        self.p = p
        self.caption_flip = caption_flip

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        if rng.python.random() >= self.p:
            return frames, target
        width = frames[0].width
        target = dict(target)
        caption = target["caption"]
        target["caption"] = (flip_caption(caption, self.caption_flip) if isinstance(caption, str)
                             else [flip_caption(c, self.caption_flip) for c in caption])
        boxes = target["boxes"]
        target["boxes"] = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1.0, -1.0, 1.0]) + torch.tensor([width, 0.0, width, 0.0])
        target["masks"] = target["masks"].flip(-1)
        return [frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for frame in frames], target


class PhotometricDistort:
    """Brightness, contrast, saturation, hue and channel-swap noise, drawn independently per frame
    from the NumPy stream (the original's SSD-style distortion).

    The float32 RGB array is handed to OpenCV as if it were BGR (as the original does). The
    original casts the result to uint8 without clipping, so out-of-range values wrap around
    modulo 256 (made explicit here, independent of the platform's float→int conversion);
    ``clip_values=True`` clips to [0, 255] instead (``--photometric_distort clipped``).
    """

    BRIGHTNESS_DELTA = 32.0
    CONTRAST_RANGE = (0.5, 1.5)
    SATURATION_RANGE = (0.5, 1.5)
    HUE_DELTA = 18.0  # degrees; OpenCV float HSV has H in [0, 360]
    HUE_PERIOD = 360.0
    CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, clip_values: bool = False):
        self.clip_values = clip_values

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        return [self._distort(frame, rng.numpy) for frame in frames], target

    def _distort(self, frame: Image.Image, rand: np.random.RandomState) -> Image.Image:
        image = np.asarray(frame).astype(np.float32)  # [H, W, 3]
        if rand.randint(2):
            image += rand.uniform(-self.BRIGHTNESS_DELTA, self.BRIGHTNESS_DELTA)
        contrast_first = bool(rand.randint(2))
        if contrast_first:
            image = self._contrast(image, rand)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        if rand.randint(2):
            image[:, :, 1] *= rand.uniform(*self.SATURATION_RANGE)
        if rand.randint(2):
            hue = image[:, :, 0]
            hue += rand.uniform(-self.HUE_DELTA, self.HUE_DELTA)
            hue[hue > self.HUE_PERIOD] -= self.HUE_PERIOD
            hue[hue < 0.0] += self.HUE_PERIOD
        image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
        if not contrast_first:
            image = self._contrast(image, rand)
        if rand.randint(2):
            image = image[:, :, list(self.CHANNEL_ORDERS[rand.randint(len(self.CHANNEL_ORDERS))])]
        if self.clip_values:
            pixels = np.clip(image, 0, 255).astype(np.uint8)
        else:
            with np.errstate(invalid="ignore"):
                pixels = (np.trunc(image).astype(np.int64) % 256).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(pixels))

    def _contrast(self, image: np.ndarray, rand: np.random.RandomState) -> np.ndarray:
        if rand.randint(2):
            image = image * np.float32(rand.uniform(*self.CONTRAST_RANGE))
        return image


class RandomSelect:
    """``first`` with probability ``p``, else ``second``."""

    def __init__(self, first: ClipTransform, second: ClipTransform, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        if rng.python.random() < self.p:
            return self.first(frames, target, rng)
        return self.second(frames, target, rng)


def resize(frames: Frames, target: Target, size: int, max_size: int | None) -> tuple[Frames, Target]:
    """Resize a clip by the shared rule: frames bilinear, masks legacy-nearest then ``> 0.5``,
    boxes by the actual width/height ratios."""
    height, width = resized_shape(frames[0].height, frames[0].width, size, max_size)
    resized = [frame.resize((width, height), Image.Resampling.BILINEAR) for frame in frames]
    target = dict(target)
    ratio_w, ratio_h = width / frames[0].width, height / frames[0].height
    target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    target["size"] = torch.tensor([height, width])
    target["masks"] = F.interpolate(target["masks"][:, None].float(), (height, width), mode="nearest")[:, 0] > 0.5
    return resized, target


class RandomResize:
    """Resize to a shorter side drawn from ``sizes`` (longer side at most ``max_size``)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        return resize(frames, target, rng.python.choice(self.sizes), self.max_size)


class RandomSizeCrop:
    """One random crop for all frames: ``w ∈ [min_size, min(W, max_size)]``,
    ``h ∈ [min_size, min(H, max_size)]``, top-left uniform. Boxes are shifted and clipped to the
    crop; frames whose box becomes empty are invalidated later by :class:`Check`."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        width, height = frames[0].size
        crop_w = rng.python.randint(self.min_size, min(width, self.max_size))
        crop_h = rng.python.randint(self.min_size, min(height, self.max_size))
        top = rng.python.randint(0, height - crop_h)
        left = rng.python.randint(0, width - crop_w)
        target = dict(target)
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([crop_w, crop_h], dtype=torch.float32)).clamp(min=0)
        target["boxes"] = boxes.reshape(-1, 4)
        target["masks"] = target["masks"][:, top:top + crop_h, left:left + crop_w]
        target["size"] = torch.tensor([crop_h, crop_w])
        return [frame.crop((left, top, left + crop_w, top + crop_h)) for frame in frames], target


class Check:
    """Recompute ``valid``: a frame stays valid iff its box has positive width and height
    (``x1 > x0`` and ``y1 > y0``; inclusive coordinates make one-pixel-thin objects invalid).
    Invalid frames' boxes become ``box // 1000`` (zeros), as in the original."""

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        target = dict(target)
        corners = target["boxes"].reshape(-1, 2, 2)  # [T, (x0 y0, x1 y1), 2]
        keep = torch.all(corners[:, 1, :] > corners[:, 0, :], dim=1)  # [T]
        boxes = target["boxes"].clone()
        boxes[~keep] = boxes[~keep] // CHECK_BOX_DIVISOR
        target["boxes"] = boxes
        target["valid"] = keep.to(torch.int32)
        return frames, target


class Normalize:
    """Frames → one ``[T, 3, H, W]`` float tensor (÷255, then ImageNet mean/std); boxes →
    ``cxcywh`` divided by the frame ``(w, h)``."""

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Tensor, Target]:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        clip = torch.stack([
            (torch.from_numpy(np.asarray(frame, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255 - mean) / std
            for frame in frames
        ])  # [T, 3, H, W]
        height, width = clip.shape[-2:]
        target = dict(target)
        target["boxes"] = box_xyxy_to_cxcywh(target["boxes"]) / torch.tensor([width, height, width, height], dtype=torch.float32)
        return clip, target


def make_clip_transforms(split: str, *, max_size: int, caption_flip: str = "whole_word",
                         photometric: str = "original") -> Compose:
    """Training (``split == "train"``) or evaluation clip transforms of the original's video recipe.

    ``photometric`` (``--photometric_distort``): ``"original"``, ``"clipped"`` (to [0, 255]) or ``"off"``.
    """
    if photometric not in PHOTOMETRIC_MODES:
        raise ValueError(f"unknown photometric distortion mode {photometric!r}; choose one of {PHOTOMETRIC_MODES}")
    if split == "train":
        distortion = [PhotometricDistort(clip_values=photometric == "clipped")] if photometric != "off" else []
        return Compose([
            RandomHorizontalFlip(caption_flip=caption_flip),
            *distortion,
            RandomSelect(
                Compose([RandomResize(TRAIN_SCALES, max_size=max_size), Check()]),
                Compose([
                    RandomResize(CROP_PRE_SCALES),
                    RandomSizeCrop(CROP_MIN_SIZE, CROP_MAX_SIZE),
                    RandomResize(TRAIN_SCALES, max_size=max_size),
                    Check(),
                ]),
            ),
            Normalize(),
        ])
    return Compose([RandomResize([EVAL_SCALE], max_size=EVAL_MAX_SIZE), Normalize()])
