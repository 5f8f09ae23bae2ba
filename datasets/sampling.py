"""Which frames make a training clip, and the random streams that choose them.

Randomness is per sample, not global: :func:`sample_random` derives the generators of one
``__getitem__`` call from ``(seed, epoch, index)``. A sample therefore looks the same whichever
worker or rank loads it and whatever was loaded before, which is what lets an interrupted run
resume with bit-identical data. The distributions are the original's; its random stream (one
global generator per process) is not reproduced bit for bit.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# Local frames are drawn this many frames before/after the anchor frame at most (at least 1).
MAX_LOCAL_OFFSET = 3
# Clips longer than anchor + two local frames get the rest from anywhere in the video ("global").
NUM_LOCAL_FRAMES = 3


@dataclass
class SampleRandom:
    """The random streams of one sample: python ``random`` (sampling, flip, resize, crop) and a
    NumPy ``RandomState`` (photometric distortion), as the original used them."""

    python: random.Random
    numpy: np.random.RandomState


def sample_random(seed: int, epoch: int, index: int) -> SampleRandom:
    """Independent generators for sample ``index`` of ``epoch`` in a run seeded with ``seed``."""
    python_seed, numpy_seed = np.random.SeedSequence([seed, epoch, index]).generate_state(2)
    return SampleRandom(random.Random(int(python_seed)), np.random.RandomState(int(numpy_seed)))


def sample_clip_frames(anchor: int, num_video_frames: int, num_frames: int, rng: random.Random,
                       *, always_local: bool = False) -> list[int]:
    """Frame indices of a training clip, sorted, ``num_frames`` long.

    The anchor frame, one frame 1..3 before and one 1..3 after it (clamped to the video), and
    ``num_frames - 3`` "global" frames from outside ``[min, max)`` of those three. Ref-YTVOS skips
    the local frames for one-frame clips; Ref-DAVIS (``always_local``) draws them anyway (the clip
    then keeps only the first sorted index).

    Videos shorter than the clip repeat frames, as in the original: the local frames clamp to the
    video, and when the video has fewer frames n than global frames g are needed, every frame is
    taken once and ``g - n`` distinct others drawn at random. The original stops where ``g - n > n``;
    there every frame is taken as many more times as whole passes fit and only the last 1..n frames
    are drawn.

    Args:
        anchor: index of the sample's frame in the sorted frame list.
        num_video_frames: n, frames in the video.
        num_frames: T, frames per clip.
        rng: the sample's python generator (consumed exactly as the original consumed ``random``).
    """
    n = num_video_frames
    indices = [anchor]
    if num_frames != 1 or always_local:
        before = rng.randint(1, MAX_LOCAL_OFFSET)
        after = rng.randint(1, MAX_LOCAL_OFFSET)
        indices += [max(0, anchor - before), min(n - 1, anchor + after)]
        if num_frames > NUM_LOCAL_FRAMES:
            num_global = num_frames - len(indices)
            candidates = list(range(min(indices))) + list(range(max(indices), n))
            if len(candidates) > num_global:
                indices += [candidates[i] for i in rng.sample(range(len(candidates)), num_global)]
            elif n >= num_global:
                indices += rng.sample(range(n), num_global)
            else:
                extra = num_global - n  # beyond one of each frame
                passes = (extra - 1) // n  # further whole passes over the video, leaving 1..n frames to draw
                indices += rng.sample(range(n), extra - passes * n) + list(range(n)) * (1 + passes)
    indices.sort()
    return indices[:num_frames]
