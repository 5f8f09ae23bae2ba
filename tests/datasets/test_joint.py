"""Joint training data (datasets/joint.py): RefCOCO/+/g pseudo-videos then Ref-YouTube-VOS clips."""
from __future__ import annotations

import pytest

from datasets import joint
from datasets.ref_video import ReferringVideoDataset
from datasets.refexp import NAMES
from datasets.refexp2seq import PseudoVideoDataset
from opts import get_args_parser
from tests.datasets.synthetic import write_dataset
from tests.datasets.synthetic_refexp import write_coco

T = 3


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    coco = write_coco(tmp_path_factory.mktemp("coco")).root
    ytvos = write_dataset(tmp_path_factory.mktemp("ytvos"), videos=2, frames=6)
    return get_args_parser().parse_args(["--coco_path", str(coco), "--ytvos_path", str(ytvos), "--binary",
                                         "--num_frames", str(T), "--max_size", "96"])


def test_parts_in_order_and_samples(args):
    dataset = joint.build("train", args)
    parts = dataset.datasets
    assert [type(p) for p in parts] == [PseudoVideoDataset] * 3 + [ReferringVideoDataset]
    assert [p.name for p in parts[:3]] == list(NAMES) == ["refcoco", "refcoco+", "refcocog"]
    # 4 training sentences per RefCOCO dataset; 2 videos x 2 expressions x anchors 0, 3
    assert [len(p) for p in parts] == [4, 4, 4, 8] and len(dataset) == 20
    for index in (0, 11, 12, 19):
        clip, target = dataset[index]
        assert clip.shape[:2] == (T, 3) and target["masks"].shape[0] == T and target["valid"].any()
        assert ("image_id" in target) == (index < 12) and ("video" in target) == (index >= 12)


def test_set_epoch_reaches_every_part(args):
    dataset = joint.build("train", args)
    first = dataset[13]
    dataset.set_epoch(4)
    assert [p.epoch for p in dataset.datasets] == [4] * 4
    assert not (dataset[13][0].shape == first[0].shape and (dataset[13][0] == first[0]).all())


def test_needs_binary_and_train(args):
    with pytest.raises(ValueError, match="pass --binary"):
        joint.build("train", get_args_parser().parse_args(["--coco_path", args.coco_path]))
    with pytest.raises(ValueError, match="training data only"):
        joint.build("val", args)
