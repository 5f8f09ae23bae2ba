"""datasets/sampling.py: which frames make a training clip, videos shorter than the clip included."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from datasets.sampling import sample_clip_frames

LOCAL_FRAMES = 3  # the anchor and one frame before and after it


def original_clip_frames(anchor: int, n: int, t: int, rng: random.Random) -> list[int]:
    """The original's draw (Ref-YouTube-VOS ``__getitem__``), written out from its description."""
    indices = [anchor]
    if t != 1:
        before, after = rng.randint(1, 3), rng.randint(1, 3)
        indices += [max(0, anchor - before), min(n - 1, anchor + after)]
        if t > 3:
            g = t - len(indices)
            candidates = list(range(min(indices))) + list(range(max(indices), n))
            if len(candidates) > g:
                indices += [candidates[i] for i in rng.sample(range(len(candidates)), g)]
            elif n >= g:
                indices += rng.sample(range(n), g)
            else:
                indices += rng.sample(range(n), g - n) + list(range(n))
    return sorted(indices)[:t]


# (anchor, video length n, clip length T): long videos, and short ones the original samples with repetition
ORIGINAL_CASES = [(0, 10, 5), (9, 10, 5), (4, 30, 8), (0, 1, 5), (1, 2, 5), (0, 2, 7), (2, 3, 9), (0, 4, 11)]


@pytest.mark.parametrize("anchor, n, t", ORIGINAL_CASES)
def test_same_frames_as_the_original_wherever_it_can_sample(anchor, n, t):
    for seed in range(20):
        expected = original_clip_frames(anchor, n, t, random.Random(seed))
        assert sample_clip_frames(anchor, n, t, random.Random(seed)) == expected


@pytest.mark.parametrize("anchor, n, t", [(0, 1, 8), (1, 2, 10), (0, 2, 36), (2, 3, 12)])
def test_much_shorter_videos_repeat_every_frame_evenly(anchor, n, t):
    """Where the original fails (more than twice as many global frames as the video has), every frame
    is taken once per whole pass over the video and only the rest is drawn."""
    num_global = t - LOCAL_FRAMES
    for seed in range(20):
        indices = sample_clip_frames(anchor, n, t, random.Random(seed))
        assert len(indices) == t and indices == sorted(indices) and all(0 <= i < n for i in indices)
        counts = Counter(indices)
        assert all(counts[frame] >= num_global // n for frame in range(n))
        # at most: the local frames (3) plus one more than the whole passes
        assert all(counts[frame] <= LOCAL_FRAMES + num_global // n + 1 for frame in range(n))
