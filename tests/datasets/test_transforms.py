"""Clip transforms: caption flip, resize rule, crop, Check, photometric distortion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.sampling import sample_clip_frames, sample_random
from datasets.transforms import (Check, PhotometricDistort, RandomHorizontalFlip, RandomSizeCrop, flip_caption,
                                 make_clip_transforms, resize, resized_shape)


@pytest.mark.parametrize("caption, whole_word, original", [
    ("the man on the left", "the man on the right", "the man on the right"),
    ("right hand of the left person", "left hand of the right person", "left hand of the right person"),
    ("a bright light", "a bright light", "a bleft light"),
    ("leftover food at the leftmost table", "leftover food at the rightmost table",
     "rightover food at the rightmost table"),
    ("email @ left", "email @ right", "email right right"),
    ("left-hand side", "right-hand side", "right-hand side"),
])
def test_caption_flip(caption, whole_word, original):
    assert flip_caption(caption, "whole_word") == whole_word
    assert flip_caption(caption, "original") == original
    assert flip_caption(flip_caption(caption, "whole_word"), "whole_word") == caption


def test_caption_flip_rejects_unknown_mode():
    with pytest.raises(ValueError, match="whole_word"):
        RandomHorizontalFlip(caption_flip="words")


@pytest.mark.parametrize("h, w, size, max_size, expected", [
    (480, 640, 360, 640, (360, 480)),
    (720, 1280, 512, 640, (360, 640)),  # long/short·512 > 640 → size round(640·720/1280) = 360
    (360, 500, 360, None, (360, 500)),  # shorter side already there
    (641, 427, 320, 640, (480, 320)),   # portrait: width → size, height floored
    (100, 100, 288, None, (288, 288)),
])
def test_resize_rule(h, w, size, max_size, expected):
    assert resized_shape(h, w, size, max_size) == expected


def _clip(t=2, h=40, w=60):
    frames = [Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)) for i in range(t)]
    masks = torch.zeros(t, h, w)
    masks[:, 10:20, 5:15] = 1
    target = {"boxes": torch.tensor([[5.0, 10.0, 14.0, 19.0]] * t), "masks": masks, "caption": "left one",
              "valid": torch.ones(t, dtype=torch.long), "size": torch.tensor([h, w])}
    return frames, target


def test_flip_moves_boxes_and_masks():
    frames, target = _clip()
    rng = sample_random(0, 0, 0)
    rng.python.random = lambda: 0.0  # always flip
    flipped_frames, flipped = RandomHorizontalFlip()(frames, target, rng)
    assert flipped["caption"] == "right one"
    assert flipped["boxes"][0].tolist() == [60 - 14, 10, 60 - 5, 19]
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    assert flipped_frames[0].size == frames[0].size


def test_resize_masks_are_nearest_and_boxes_scale():
    frames, target = _clip()
    resized_frames, out = resize(frames, target, 80, None)
    assert resized_frames[0].size == (120, 80) and out["masks"].shape == (2, 80, 120) and out["masks"].dtype == torch.bool
    assert out["boxes"][0].tolist() == [10.0, 20.0, 28.0, 38.0]
    assert out["size"].tolist() == [80, 120]
    assert out["masks"][0, 20:40, 10:30].all() and out["masks"].sum() == 2 * 20 * 20


def test_crop_clips_boxes_and_check_invalidates_frames_outside():
    frames, target = _clip(w=60)
    target["boxes"][1] = torch.tensor([40.0, 10.0, 50.0, 19.0])
    rng = sample_random(0, 0, 0)
    draws = iter([30, 40, 0, 0])  # crop w, crop h, top, left
    rng.python.randint = lambda a, b: next(draws)
    _, cropped = RandomSizeCrop(30, 600)(frames, target, rng)
    assert cropped["size"].tolist() == [40, 30] and cropped["masks"].shape == (2, 40, 30)
    assert cropped["boxes"][1].tolist() == [30.0, 10.0, 30.0, 19.0]  # clipped to the crop: zero width
    _, checked = Check()(frames, cropped, rng)
    assert checked["valid"].tolist() == [1, 0] and checked["valid"].dtype == torch.int32
    assert checked["boxes"][1].tolist() == [0, 0, 0, 0]


def test_check_one_pixel_thin_object_is_invalid():
    target = {"boxes": torch.tensor([[3.0, 4.0, 3.0, 9.0], [1.0, 1.0, 2.0, 2.0]])}
    assert Check()([], target, None)[1]["valid"].tolist() == [0, 1]


class _ScriptedNumpy:
    """Stands in for the NumPy RandomState: coin flips from a script, every uniform draw 10."""

    def __init__(self, flips):
        self.flips = iter(flips)

    def randint(self, n):
        return next(self.flips)

    def uniform(self, low, high):
        return 10.0


def test_photometric_distort_wraps_or_clips():
    frame = Image.fromarray(np.full((4, 4, 3), 250, np.uint8))
    flips = [1, 0, 0, 0, 0, 0]  # brightness on; contrast last; no saturation, hue, contrast, channel swap
    wrapped = np.asarray(PhotometricDistort()._distort(frame, _ScriptedNumpy(flips)))
    assert (wrapped == 4).all()  # 260 wraps to 4, as the original's uint8 cast
    clipped = np.asarray(PhotometricDistort(clip_values=True)._distort(frame, _ScriptedNumpy(flips)))
    assert (clipped == 255).all()


def test_train_transforms_are_a_function_of_the_sample_seed():
    frames, target = _clip(h=120, w=160)
    transforms = make_clip_transforms("train", max_size=160)
    a, ta = transforms(frames, target, sample_random(3, 1, 7))
    b, tb = transforms(frames, target, sample_random(3, 1, 7))
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert a.shape[0] == 2 and a.shape[1] == 3 and max(a.shape[-2:]) <= 160


@pytest.mark.parametrize("anchor, n, t", [(0, 10, 5), (9, 10, 5), (4, 30, 8), (0, 5, 5), (2, 4, 1), (0, 3, 3)])
def test_clip_frame_sampling(anchor, n, t):
    for seed in range(20):
        indices = sample_clip_frames(anchor, n, t, sample_random(seed, 0, 0).python)
        assert len(indices) == t and indices == sorted(indices) and all(0 <= i < n for i in indices)
        assert anchor in indices or t > 1 and min(indices) <= anchor
    assert sample_clip_frames(2, 4, 1, sample_random(0, 0, 0).python) == [2]


@pytest.mark.parametrize("mode, distorts", [("original", True), ("clipped", True), ("off", False)])
def test_photometric_distort_mode(mode, distorts):
    transforms = make_clip_transforms("train", max_size=640, photometric=mode)
    kinds = [type(t) for t in transforms.transforms]
    assert (PhotometricDistort in kinds) == distorts
    if distorts:
        assert next(t for t in transforms.transforms if isinstance(t, PhotometricDistort)).clip_values == (mode == "clipped")
    with pytest.raises(ValueError, match="photometric"):
        make_clip_transforms("train", max_size=640, photometric="none")
