"""Image transforms of RefCOCO/+/g pretraining, built from the clip transforms.

An image is a clip of one frame, so :mod:`datasets.transforms` does the work; what differs from
the video recipe is the scales, the absence of the photometric distortion, and the
original's image caption swap, which goes through a ``"[TMP]"`` placeholder instead of ``"@"``
(so a literal "@" stays as it is).
"""
from __future__ import annotations

from datasets.sampling import SampleRandom
from datasets.transforms import (CROP_MAX_SIZE, CROP_MIN_SIZE, CROP_PRE_SCALES, EVAL_MAX_SIZE, Check, Compose,
                                 Frames, Normalize, RandomHorizontalFlip, RandomResize, RandomSelect, RandomSizeCrop,
                                 Target, flip_caption, make_clip_transforms)
from opts import CAPTION_FLIP_MODES

# Shorter sides of the resize-only branch (480, 512, ..., 768) and its longer-side limit.
SCALES = tuple(range(480, 769, 32))
MAX_SIZE = 800
# Shorter sides of the final resize after a random crop, and its longer-side limit.
CROP_FINAL_SCALES = (296, 328, 360, 392, 416, 448, 480, 512)
CROP_FINAL_MAX_SIZE = 640
# The original image flip's placeholder: lower-cased captions never contain it, so the swap is exact.
CAPTION_PLACEHOLDER = "[TMP]"


def flip_image_caption(caption: str, mode: str = "whole_word") -> str:
    """The caption of a mirrored image: ``whole_word`` as :func:`~datasets.transforms.flip_caption`;
    ``original`` swaps "left" and "right" as substrings ("bright" → "bleft"), like the original's
    image transform."""
    if mode == "original":
        swapped = caption.replace("left", CAPTION_PLACEHOLDER).replace("right", "left")
        return swapped.replace(CAPTION_PLACEHOLDER, "right")
    return flip_caption(caption, mode)


class ImageHorizontalFlip:
    """With probability ``p``, mirror the frames, masks and boxes (as
    :class:`~datasets.transforms.RandomHorizontalFlip`) and swap left/right in the caption by
    :func:`flip_image_caption`."""

    def __init__(self, p: float = 0.5, caption_flip: str = "whole_word"):
        if caption_flip not in CAPTION_FLIP_MODES:
            raise ValueError(f"unknown caption flip mode {caption_flip!r}; choose one of {CAPTION_FLIP_MODES}")
        self.p = p
        self.caption_flip = caption_flip
        self.mirror = RandomHorizontalFlip(p=1.0)  # always mirrors (its own draw is < 1); the caption is ours

    def __call__(self, frames: Frames, target: Target, rng: SampleRandom) -> tuple[Frames, Target]:
        if rng.python.random() >= self.p:
            return frames, target
        frames, flipped = self.mirror(frames, target, rng)
        flipped["caption"] = flip_image_caption(target["caption"], self.caption_flip)
        return frames, flipped


def make_image_transforms(split: str, *, caption_flip: str = "whole_word") -> Compose:
    """Training (``split == "train"``) or evaluation transforms of RefCOCO images.

    Train: flip; then with p 0.5 a resize to a shorter side in :data:`SCALES` (longer ≤ 800), else a
    resize to 400/500/600, a random crop of 384..600 and a resize to :data:`CROP_FINAL_SCALES`
    (longer ≤ 640); :class:`~datasets.transforms.Check` marks a cropped-away object invalid (the
    original removes it); normalise. Evaluation: shorter side 360, longer ≤ 640, normalise.
    """
    if split != "train":
        return make_clip_transforms(split, max_size=EVAL_MAX_SIZE)
    return Compose([
        ImageHorizontalFlip(caption_flip=caption_flip),
        RandomSelect(
            Compose([RandomResize(SCALES, max_size=MAX_SIZE), Check()]),
            Compose([
                RandomResize(CROP_PRE_SCALES),
                RandomSizeCrop(CROP_MIN_SIZE, CROP_MAX_SIZE),
                RandomResize(CROP_FINAL_SCALES, max_size=CROP_FINAL_MAX_SIZE),
                Check(),
            ]),
        ),
        Normalize(),
    ])
