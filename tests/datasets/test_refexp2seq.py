"""RefCOCO pseudo-videos (datasets/refexp2seq.py): the augmentation and the training clips."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from datasets.refexp2seq import (MIN_BOX_VALUE, augment_copy, build, finish_boxes, make_pseudo_video,
                                 motion_blur_kernel)
from datasets.sampling import sample_random
from opts import get_args_parser
from tests.datasets.synthetic_refexp import write_coco

T = 5
# A red object on a blue background (both survive brightness ±40 and hue ±8°).
OBJECT_RGB, BACKGROUND_RGB = (220, 30, 30), (30, 30, 220)
# Pixels this far from the mask's edge may mix object and background: the 11-pixel motion blur
# reaches 5 pixels, bilinear warping one more.
EDGE_MARGIN = 7
# Black pixels come from outside the source frame (warp borders).
BORDER_LEVEL = 25


def object_image(height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[...] = BACKGROUND_RGB
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[30:70, 40:90] = 1
    image[mask > 0] = OBJECT_RGB
    return image, mask


def test_pseudo_video_holds_the_original_once_in_random_order():
    image, mask = object_image()
    orders = set()
    for seed in range(6):
        frames, masks, copies = make_pseudo_video(image, mask, T, sample_random(seed, 0, 0))
        assert len(frames) == len(masks) == T and sorted(copies) == list(range(T))
        unaltered = [t for t in range(T) if np.array_equal(frames[t], image)]
        assert unaltered == [copies.index(0)]
        assert np.array_equal(masks[copies.index(0)], mask)
        assert all(f.shape == image.shape and f.dtype == np.uint8 for f in frames)
        orders.add(copies.index(0))
    assert len(orders) > 1  # the original is not always first


def test_mask_moves_with_the_object():
    image, mask = object_image()
    kernel = np.ones((2 * EDGE_MARGIN + 1, 2 * EDGE_MARGIN + 1), np.uint8)
    for seed in range(10):
        frame, moved = augment_copy(image, mask, np.random.RandomState(seed))
        assert set(np.unique(moved)) <= {0, 1}  # nearest neighbour: still binary
        inside = cv2.erode(moved, kernel).astype(bool)
        outside = ~cv2.dilate(moved, kernel).astype(bool) & (frame.max(axis=2) > BORDER_LEVEL)
        red = frame[..., 0].astype(int) > frame[..., 2].astype(int)
        assert inside.sum() > 200 and outside.sum() > 2000
        assert red[inside].all() and not red[outside].any()
        assert not np.array_equal(moved, mask)  # the geometry changed


def test_augmentation_is_a_function_of_the_seed():
    image, mask = object_image()
    first = make_pseudo_video(image, mask, T, sample_random(1, 2, 3))
    again = make_pseudo_video(image, mask, T, sample_random(1, 2, 3))
    other = make_pseudo_video(image, mask, T, sample_random(1, 3, 3))
    assert first[2] == again[2] and all(np.array_equal(a, b) for a, b in zip(first[0] + first[1], again[0] + again[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(first[0], other[0]))


def test_motion_blur_kernel():
    for size in (9, 11):
        for angle in (0.0, 33.0, 90.0):
            kernel = motion_blur_kernel(size, angle)
            assert kernel.shape == (size, size) and kernel.sum() == pytest.approx(1.0, abs=1e-6)
            assert kernel.min() >= 0 and np.allclose(kernel, kernel[::-1, ::-1], atol=1e-6)  # a line through the centre


def test_finish_boxes_zeroes_empty_frames_and_clamps():
    masks = torch.zeros(3, 4, 5, dtype=torch.bool)
    masks[0, 1, 1] = masks[2, 2:, 2:] = True
    boxes = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.4, 0.5]])
    out = finish_boxes({"boxes": boxes, "masks": masks})["boxes"]
    assert out[0].tolist() == pytest.approx([0.5, 0.5, MIN_BOX_VALUE, MIN_BOX_VALUE])
    assert out[1].tolist() == pytest.approx([MIN_BOX_VALUE] * 4)
    assert torch.equal(out[2], boxes[2])


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    root = write_coco(tmp_path_factory.mktemp("coco")).root
    return get_args_parser().parse_args(["--coco_path", str(root), "--num_frames", str(T), "--max_size", "200"])


def test_training_clips(args):
    dataset = build("train", args, "refcoco+")
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            clip, target = dataset[index]
            _, _, h, w = clip.shape
            assert clip.shape[:2] == (T, 3) and max(h, w) <= 200
            assert target["masks"].shape == (T, h, w) and target["valid"].shape == (T,) and target["valid"].any()
            assert sorted(target["frames_idx"].tolist()) == list(range(T))
            assert target["labels"].tolist() == [0] * T and target["orig_size"].tolist() == [64, 80]
            assert target["image_id"] != 4  # the crowd region is never a sample
            boxes = target["boxes"]
            assert (boxes >= MIN_BOX_VALUE).all()
            empty = ~target["masks"].flatten(1).any(dim=1)
            assert (boxes[empty] == MIN_BOX_VALUE).all()


def test_clips_depend_only_on_seed_epoch_and_index(args):
    dataset = build("train", args, "refcocog")
    first = dataset[2]
    dataset[0]
    again = dataset[2]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    dataset.set_epoch(1)
    other = dataset[2]
    assert not (other[0].shape == first[0].shape and torch.equal(other[0], first[0]))


def test_training_only(args):
    with pytest.raises(ValueError, match="training data only"):
        build("val", args, "refcoco")
