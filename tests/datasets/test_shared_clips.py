"""Training clips shared by several expressions (``--expressions_per_clip``): grouping, loading, batching."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from datasets import build_dataset
from datasets.categories import YTVOS_CATEGORIES
from datasets.loader import build_train_loader, set_loader_epoch
from datasets.ref_video import ClipSample, ReferringVideoDataset, group_samples
from datasets.sampling import sample_random
from datasets.transforms import Compose, Normalize, RandomHorizontalFlip
from opts import get_args_parser, validate_args
from tests.datasets.synthetic import write_dataset

H, W = 48, 64
CAPTIONS = ("the cat on the left", "a bright dog", "the cat on the right")


def sample(video: str, exp_id: str, obj_id: int, anchor: int) -> ClipSample:
    return ClipSample(video, exp_id, f"expression {exp_id}", obj_id, "cat", ("00000", "00005"), anchor)


def test_groups_share_video_and_anchor_spread_over_objects_and_differ_in_size_by_one_at_most():
    # video a: objects 1, 2, 3 with 3, 2, 2 expressions (file order: by object), anchors 0 and 1; video b: one
    expressions = [("0", 1), ("1", 1), ("2", 1), ("3", 2), ("4", 2), ("5", 3), ("6", 3)]
    samples = [sample("a", e, o, anchor) for e, o in expressions for anchor in (0, 1)] + [sample("b", "0", 1, 0)]
    groups = group_samples(samples, 3)
    described = [[(samples[i].video, samples[i].anchor, samples[i].exp_id) for i in group] for group in groups]
    # in turn from each object: 0 (obj 1), 3 (obj 2), 5 (obj 3), then 1, 4, 6, then 2 → 7 cut as 3, 2, 2
    assert described == [
        [("a", 0, "0"), ("a", 0, "3"), ("a", 0, "5")], [("a", 0, "1"), ("a", 0, "4")], [("a", 0, "6"), ("a", 0, "2")],
        [("a", 1, "0"), ("a", 1, "3"), ("a", 1, "5")], [("a", 1, "1"), ("a", 1, "4")], [("a", 1, "6"), ("a", 1, "2")],
        [("b", 0, "0")],
    ]
    assert sorted(i for group in groups for i in group) == list(range(len(samples)))
    # 1: the samples themselves, in their (the original's) order
    assert group_samples(samples, 1) == [(i,) for i in range(len(samples))]
    assert [len(g) for g in group_samples(samples, 4)] == [4, 3, 4, 3, 1]
    with pytest.raises(ValueError, match="at least 1"):
        group_samples(samples, 0)


def untransformed(root, expressions_per_clip: int) -> ReferringVideoDataset:
    """One-frame clips at the frames' own size, so that targets compare pixel for pixel."""
    return ReferringVideoDataset(root, "train", categories=YTVOS_CATEGORIES, num_frames=1,
                                 transforms=Compose([Normalize()]), seed=0, expressions_per_clip=expressions_per_clip)


@pytest.fixture()
def root(tmp_path):
    # 2 videos x 6 frames, 3 objects with one expression each; object 3 is absent from the last frame of video 1
    return write_dataset(tmp_path / "ytvos", videos=2, frames=6, objects=3, height=H, width=W,
                         categories=("cat", "dog"), captions=CAPTIONS)


def test_a_shared_clip_has_the_targets_of_its_expressions_alone(root):
    single = untransformed(root, 1)
    shared = untransformed(root, 3)
    assert len(single) == 2 * 3 * 6 and len(shared) == 2 * 6
    by_key = {(s.video, s.exp_id, s.anchor): i for i, s in enumerate(single.samples)}
    for index, group in enumerate(shared.groups):
        clip, targets = shared[index]
        anchor_sample = shared.samples[group[0]]
        last_of_video1 = anchor_sample.video == "video1" and anchor_sample.anchor == 5
        # the object the transforms (here: the video) leaves out of every frame is dropped from the group
        assert [t["exp_id"] for t in targets] == (["0", "1"] if last_of_video1 else ["0", "1", "2"])
        for target in targets:
            alone_clip, alone = single[by_key[anchor_sample.video, target["exp_id"], anchor_sample.anchor]]
            assert torch.equal(clip, alone_clip)
            assert target["caption"] == alone["caption"] and target["video"] == alone["video"]
            for key in ("masks", "boxes", "labels", "valid", "frames_idx", "size", "orig_size"):
                assert torch.equal(target[key], alone[key]), key
            assert target["skipped"] == []


def test_flipping_a_shared_clip_swaps_the_sides_in_every_caption():
    masks = torch.zeros(2, 4, 6)
    masks[0, :, 0] = 1  # expression 0: left column; expression 1: right column
    masks[1, :, 5] = 1
    target = {"caption": ["the cat on the left", "the cat on the right"], "masks": masks,
              "boxes": torch.tensor([[0.0, 0, 0, 3], [5.0, 0, 5, 3]])}
    _, flipped = RandomHorizontalFlip(p=1.0)([Image.new("RGB", (6, 4))], target, sample_random(0, 0, 0))
    assert flipped["caption"] == ["the cat on the right", "the cat on the left"]
    assert flipped["masks"][0, :, 5].all() and flipped["masks"][1, :, 0].all()
    assert flipped["boxes"].tolist() == [[6.0, 0, 6, 3], [1.0, 0, 1, 3]]


def test_loader_stacks_shared_clips_and_lists_every_target_with_its_clip(root):
    args = get_args_parser().parse_args(["--ytvos_path", str(root), "--num_frames", "2", "--max_size", "64",
                                         "--expressions_per_clip", "2"])
    dataset = build_dataset("ytvos", "train", args)
    # per video and anchor (0, 2, 4): 3 expressions in groups of 2 and 1
    assert len(dataset) == 2 * 3 * 2
    loader = build_train_loader(dataset, batch_size=3, num_workers=0, seed=1)
    set_loader_epoch(loader, 0)
    for samples, targets in loader:
        assert samples.tensors.shape[:3] == (3, 2, 3)
        clip_index = [t["clip_index"] for t in targets]
        assert clip_index == sorted(clip_index) and set(clip_index) == {0, 1, 2}
        for target in targets:
            h, w = target["size"].tolist()
            assert target["masks"].shape == (2, h, w) and target["boxes"].shape == (2, 4)
            assert isinstance(target["caption"], str) and target["valid"].any()
        # one clip's targets were transformed together: the same size
        for index in set(clip_index):
            assert len({tuple(t["size"].tolist()) for t in targets if t["clip_index"] == index}) == 1


@pytest.mark.parametrize("dataset_file", ["ytvos", "ref_shapes", "mevis"])
def test_option_accepted_for_datasets_with_several_expressions_per_video(dataset_file):
    validate_args(get_args_parser().parse_args(["--dataset_file", dataset_file, "--expressions_per_clip", "3"]))


@pytest.mark.parametrize("flags, match", [
    (["--dataset_file", "a2d", "--expressions_per_clip", "2"], "applies to --dataset_file ytvos"),
    (["--dataset_file", "ytvos", "--expressions_per_clip", "0"], "at least 1"),
])
def test_option_rejected_where_it_cannot_apply(flags, match):
    with pytest.raises(ValueError, match=match):
        validate_args(get_args_parser().parse_args(flags))
