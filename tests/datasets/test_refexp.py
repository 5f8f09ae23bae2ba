"""RefCOCO/+/g image samples (datasets/refexp.py, datasets/image_transforms.py) on a generated miniature COCO."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from datasets.image_transforms import ImageHorizontalFlip, flip_image_caption
from datasets.ref_video import BadSampleError
from datasets.refexp import NAMES, EpochConcatDataset, ReferringImageDataset, build, build_all
from datasets.sampling import sample_random
from datasets.transforms import Compose, Normalize
from opts import get_args_parser
from tests.datasets.synthetic_refexp import (DOG, HEIGHT, LEFT_BOX, PERSON, RIGHT_BOX, WIDTH, box_mask,
                                             write_coco)

# Boxes are scaled with the image, masks resized by nearest neighbour: they agree to about a pixel
# per resize (two resizes on the crop path).
PIXEL_TOLERANCE = 3.0
# Training samples of the miniature refcoco: image 1's left object (2 sentences), right object, crowd region.
LEFT, RIGHT, CROWD = 0, 2, 3


def make_args(root, *extra):
    return get_args_parser().parse_args(["--coco_path", str(root), *extra])


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture()
def root(tmp_path, layout):
    """A private copy, for tests that break files."""
    return shutil.copytree(layout.root, tmp_path / "coco")


def edit_instances(root, name, split, edit):
    path = root / name / f"instances_{name}_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_train_samples_shapes_boxes_masks_labels(layout):
    dataset = build("train", make_args(layout.root), "refcoco")
    assert len(dataset) == 4
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in (LEFT, 1, RIGHT):
            clip, target = dataset[index]
            _, _, h, w = clip.shape
            assert clip.shape[:2] == (1, 3) and clip.dtype == torch.float32
            assert set(target) == {"frames_idx", "labels", "boxes", "masks", "valid", "caption", "orig_size", "size",
                                   "image_id", "skipped"}
            assert target["masks"].shape == (1, h, w) and target["masks"].dtype == torch.bool
            assert target["size"].tolist() == [h, w] and target["orig_size"].tolist() == [HEIGHT, WIDTH]
            assert target["valid"].tolist() == [1] and target["frames_idx"].tolist() == [0]
            assert target["labels"].tolist() == [DOG if index == RIGHT else PERSON]
            assert target["image_id"] == index + 1 and target["skipped"] == []
            assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
            ys, xs = target["masks"][0].nonzero(as_tuple=True)
            cx, cy, bw, bh = target["boxes"][0].tolist()
            # the box is exclusive (COCO xywh), the mask's extent inclusive: one pixel apart
            assert abs(cx * w - (xs.min() + xs.max() + 1) / 2) < PIXEL_TOLERANCE
            assert abs(bw * w - (xs.max() - xs.min() + 1)) < PIXEL_TOLERANCE
            assert abs(cy * h - (ys.min() + ys.max() + 1) / 2) < PIXEL_TOLERANCE
            assert abs(bh * h - (ys.max() - ys.min() + 1)) < PIXEL_TOLERANCE
            assert min(h, w) in range(296, 769) and max(h, w) <= 800


def test_binary_labels(layout):
    dataset = build("train", make_args(layout.root, "--binary"), "refcoco")
    assert [dataset[i][1]["labels"].tolist() for i in (LEFT, RIGHT)] == [[0], [0]]


def test_masks_at_original_size_and_val_resize(layout):
    dataset = build("val", make_args(layout.root), "refcoco")
    assert [s.caption for s in dataset.samples] == ["the man on the left", "a bright dog on the right"]
    for sample, box in zip(dataset.samples, (LEFT_BOX, RIGHT_BOX)):  # a polygon, then an RLE
        _, mask, xyxy = dataset.read_object(sample)
        assert torch.equal(torch.from_numpy(mask), torch.from_numpy(box_mask(box)).bool())
        assert xyxy.tolist() == [box[0], box[1], box[2] + 1, box[3] + 1]
    for epoch in range(2):  # evaluation samples do not depend on the epoch
        dataset.set_epoch(epoch)
        clip, target = dataset[0]
        assert clip.shape == (1, 3, 360, 450) and target["size"].tolist() == [360, 450]
        expected = F.interpolate(torch.from_numpy(box_mask(LEFT_BOX))[None, None].float(), (360, 450),
                                 mode="nearest")[0] > 0.5
        assert torch.equal(target["masks"], expected)
        x0, y0, x1, y1 = LEFT_BOX
        expected_box = [(x0 + x1 + 1) / 2 / WIDTH, (y0 + y1 + 1) / 2 / HEIGHT, (x1 + 1 - x0) / WIDTH,
                        (y1 + 1 - y0) / HEIGHT]
        assert target["boxes"][0].tolist() == pytest.approx(expected_box)
        assert target["caption"] == "the man on the left" and target["image_id"] == 1


def test_crowd_object_is_dropped_and_replaced(layout):
    dataset = build("train", make_args(layout.root), "refcoco")
    _, mask, box = dataset.read_object(dataset.samples[CROWD])
    assert not mask.any() and box.tolist() == [0, 0, 0, 0]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        _, target = dataset[CROWD]
        assert target["image_id"] != CROWD + 1 and target["valid"].tolist() == [1]


def test_flip_mirrors_mask_and_swaps_caption(layout):
    dataset = ReferringImageDataset(layout.root, "refcoco", "train", seed=0,
                                    transforms=Compose([ImageHorizontalFlip(), Normalize()]))
    left = torch.from_numpy(box_mask(LEFT_BOX)).float()
    seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        _, target = dataset[LEFT]
        flipped = target["caption"] == "the man on the right"
        assert flipped or target["caption"] == "the man on the left"
        assert torch.equal(target["masks"][0], left.flip(-1) if flipped else left)
        seen.add(flipped)
    assert seen == {True, False}


def test_image_caption_flip_modes():
    assert flip_image_caption("the bright left @ leftmost", "original") == "the bleft right @ rightmost"
    assert flip_image_caption("the bright left @ leftmost", "whole_word") == "the bright right @ rightmost"
    with pytest.raises(ValueError, match="caption flip mode"):
        ImageHorizontalFlip(caption_flip="words")


def test_samples_depend_only_on_seed_epoch_and_index(layout):
    dataset = build("train", make_args(layout.root), "refcoco")
    first = dataset[1]
    dataset[0]
    again = dataset[1]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    other_seed = build("train", make_args(layout.root, "--seed", "7"), "refcoco")[1]
    dataset.set_epoch(1)
    other_epoch = dataset[1]
    for other in (other_seed, other_epoch):
        assert not (other[0].shape == first[0].shape and torch.equal(other[0], first[0]))


def test_build_all(layout):
    args = make_args(layout.root)
    train = build_all("train", args)
    assert isinstance(train, EpochConcatDataset) and len(train) == 12
    assert [d.name for d in train.datasets] == list(NAMES)
    train.set_epoch(5)
    assert [d.epoch for d in train.datasets] == [5, 5, 5]
    assert train[4][1]["caption"] in ("the man on the left", "the man on the right")  # refcoco+'s first sample
    val = build_all("val", args)
    assert list(val) == list(NAMES) and [len(d) for d in val.values()] == [2, 2, 2]


def test_bad_records_name_file_and_record(root):
    args = make_args(root)
    edit_instances(root, "refcoco", "train", lambda data: data["images"][1].pop("caption"))
    edit_instances(root, "refcoco", "train", lambda data: data["annotations"][2].update(image_id=42))
    with pytest.raises(BadSampleError, match=r"(?s)instances_refcoco_train\.json: image record 1 \(id 2\) lacks "
                                             r"\['caption'\].*annotation 3 belongs to image 42, which is not in "
                                             r"'images'.*image 3 has 0 annotations"):
        build("train", args, "refcoco")
    dataset = build("train", make_args(root, "--skip_bad_samples"), "refcoco")
    assert [s.image_id for s in dataset.samples] == [1, 4]
    edit_instances(root, "refcoco", "val", lambda data: data.pop("annotations"))
    with pytest.raises(ValueError, match=r"instances_refcoco_val\.json must hold a COCO object"):
        build("val", args, "refcoco")


def test_bad_image_or_segmentation(root):
    edit_instances(root, "refcoco", "train", lambda data: data["images"][1].update(file_name="missing.jpg"))
    dataset = build("train", make_args(root), "refcoco")
    with pytest.raises(BadSampleError, match=r"instances_refcoco_train\.json: image 2 \(annotation 2\): frame "
                                             r".*train2014/missing\.jpg .* does not exist"):
        dataset[1]
    dataset = build("train", make_args(root, "--skip_bad_samples"), "refcoco")
    _, target = dataset[1]
    assert target["image_id"] in (1, 3) and target["valid"].tolist() == [1]
    assert target["skipped"] and all("missing.jpg" in entry for entry in target["skipped"])
    edit_instances(root, "refcoco", "val", lambda data: data["annotations"][0].update(segmentation=[[1, 2]]))
    with pytest.raises(BadSampleError, match=r"image 1 \(annotation 1\): bad segmentation"):
        build("val", make_args(root, "--skip_bad_samples"), "refcoco")[0]  # evaluation never skips


def test_sample_random_is_what_the_dataset_uses(layout):
    dataset = ReferringImageDataset(layout.root, "refcoco", "train", seed=3,
                                    transforms=Compose([ImageHorizontalFlip(), Normalize()]))
    dataset.set_epoch(2)
    expected_flip = sample_random(3, 2, LEFT).python.random() < 0.5
    assert (dataset[LEFT][1]["caption"] == "the man on the right") == expected_flip
