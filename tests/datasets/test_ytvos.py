"""Ref-YouTube-VOS / Ref-DAVIS17 training clips on generated miniature datasets, incl. bad input."""
from __future__ import annotations

import pytest
import torch

from datasets import build_dataset
from datasets.categories import DAVIS_CATEGORIES, YTVOS_CATEGORIES
from datasets.loader import ResumableSampler, build_train_loader, set_loader_epoch
from datasets.ref_video import BadSampleError
from opts import get_args_parser
from tests.datasets.synthetic import edit_expressions, object_box, write_dataset

H, W = 48, 64
# Boxes are scaled with the frames, masks resized by nearest neighbour: they agree to about a pixel
# per resize (two resizes on the crop path).
PIXEL_TOLERANCE = 3.0


def make_args(root, *extra):
    return get_args_parser().parse_args(["--ytvos_path", str(root), "--davis_path", str(root), "--num_frames", "3",
                                         "--max_size", "64", *extra])


@pytest.fixture()
def root(tmp_path):
    return write_dataset(tmp_path / "ytvos", videos=2, frames=6, height=H, width=W)


def test_samples_shapes_boxes_masks_and_captions(root):
    dataset = build_dataset("ytvos", "train", make_args(root))
    # 2 videos x 2 expressions x anchors 0, 3
    assert len(dataset) == 8
    assert [(s.video, s.exp_id, s.anchor) for s in dataset.samples[:3]] == [("video0", "0", 0), ("video0", "0", 3),
                                                                              ("video0", "1", 0)]
    for index in range(len(dataset)):
        clip, target = dataset[index]
        t, c, h, w = clip.shape
        assert (t, c) == (3, 3) and max(h, w) <= 64
        assert target["masks"].shape == (3, h, w) and target["masks"].dtype == torch.bool
        assert target["boxes"].shape == (3, 4) and target["valid"].shape == (3,)
        assert target["size"].tolist() == [h, w] and target["orig_size"].tolist() == [H, W]
        assert target["caption"] in ("the cat on the left", "the cat on the right", "a bright dog")
        category = "cat" if target["exp_id"] == "0" else "dog"
        assert target["labels"].tolist() == [YTVOS_CATEGORIES.index(category)] * 3  # the table index, even with --binary
        for frame in range(3):
            if target["valid"][frame]:
                mask = target["masks"][frame]
                ys, xs = mask.nonzero(as_tuple=True)
                cx, cy, bw, bh = target["boxes"][frame].tolist()
                # normalised cxcywh of the scaled box: within a few pixels of the (nearest-resized) mask's extent
                assert abs(cx * w - (xs.min() + xs.max()) / 2) < PIXEL_TOLERANCE
                assert abs(bw * w - (xs.max() - xs.min())) < PIXEL_TOLERANCE
                assert abs(cy * h - (ys.min() + ys.max()) / 2) < PIXEL_TOLERANCE
                assert abs(bh * h - (ys.max() - ys.min())) < PIXEL_TOLERANCE
            else:
                assert target["boxes"][frame].tolist() == [0, 0, 0, 0] and not target["masks"][frame].any()


def test_object_absent_from_a_frame_is_invalid(root):
    dataset = build_dataset("ytvos", "train", make_args(root, "--num_frames", "6"))
    # video1, object 2 (expression "1") is missing from its last frame; one anchor (0) with T = 6
    index = next(i for i, s in enumerate(dataset.samples) if (s.video, s.exp_id) == ("video1", "1"))
    for epoch in range(3):
        dataset.set_epoch(epoch)
        _, target = dataset[index]
        assert target["frames_idx"].tolist()[-1] == 5
        assert target["valid"][-1] == 0 and target["valid"][:-1].all()


def test_samples_depend_only_on_seed_epoch_and_index(root):
    dataset = build_dataset("ytvos", "train", make_args(root))
    first = dataset[3]
    dataset[5]
    again = dataset[3]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    dataset.set_epoch(1)
    other = dataset[3]
    assert not (other[0].shape == first[0].shape and torch.equal(other[0], first[0]))


def test_mask_matches_object_rectangle_without_augmentation(root):
    dataset = build_dataset("ytvos", "train", make_args(root))
    sample = dataset.samples[0]
    image = dataset._read_frame(sample, sample.frames[1])
    mask = dataset._read_masks([sample], sample.frames[1], image)[0]
    x0, y0, x1, y1 = object_box(0, 1, 1, H, W)
    assert image.size == (W, H) and mask.sum() == (x1 - x0 + 1) * (y1 - y0 + 1) and mask[y0, x0] == 1


def test_davis_draws_local_frames_for_single_frame_clips(root):
    args = make_args(root, "--num_frames", "1")
    ytvos, davis = build_dataset("ytvos", "train", args), build_dataset("davis", "train", args)
    # one-frame clips: YTVOS keeps the anchor; DAVIS draws local frames and keeps the smallest sorted index
    video0 = [i for i, s in enumerate(ytvos.samples) if s.video == "video0"]  # object visible in every frame
    assert [int(ytvos[i][1]["frames_idx"][0]) for i in video0] == [ytvos.samples[i].anchor for i in video0]
    davis_first = [int(davis[i][1]["frames_idx"][0]) for i in video0]
    assert all(f <= davis.samples[i].anchor for f, i in zip(davis_first, video0))
    assert any(f < davis.samples[i].anchor for f, i in zip(davis_first, video0))
    assert davis[0][1]["labels"].tolist() == [DAVIS_CATEGORIES.index("cat")]


def test_loader_batches_and_resumable_positions(root):
    dataset = build_dataset("ytvos", "train", make_args(root))
    loader = build_train_loader(dataset, batch_size=2, num_workers=0, seed=1)
    set_loader_epoch(loader, 0)
    batches = list(loader)
    samples, targets = batches[0]
    assert samples.tensors.shape[:3] == (2, 3, 3) and samples.tensors.shape[-1] % 32 == 0
    assert samples.mask.shape == (2, 3) + samples.tensors.shape[-2:] and len(targets) == 2
    set_loader_epoch(loader, 0, start_iteration=2)
    resumed = list(loader)
    assert len(resumed) == 2 and torch.equal(resumed[0][0].tensors, batches[2][0].tensors)


def test_distributed_sampler_partitions_and_pads():
    shards = [ResumableSampler(7, num_replicas=3, rank=r, seed=5) for r in range(3)]
    indices = [s.indices() for s in shards]
    assert all(len(i) == 3 for i in indices)  # 7 padded to 9
    assert set(sum(indices, [])) == set(range(7))
    shards[1].set_epoch(0, start=2)
    assert list(shards[1]) == indices[1][2:] and len(shards[1]) == 1
    for shard in shards:
        shard.set_epoch(1)
    assert sum((s.indices() for s in shards), []) != sum(indices, [])  # reshuffled every epoch


# ----------------------------------------------------------------------------- bad input
def _corrupt_frame(root):
    (root / "train" / "JPEGImages" / "video1" / "00010.jpg").write_bytes(b"not a jpeg")
    return "video video1, frame 00010", "00010.jpg"


def _missing_frame(root):
    (root / "train" / "JPEGImages" / "video1" / "00010.jpg").unlink()
    return "video video1, frame 00010", "00010.jpg"


def _missing_annotation(root):
    (root / "train" / "Annotations" / "video1" / "00010.png").unlink()
    return "video video1, frame 00010", "00010.png"


def _absent_object(root):
    edit_expressions(root, lambda d: d["videos"]["video1"]["expressions"]["1"].update(obj_id="7"))
    return "video video1, expression 1", "meta.json"


def _empty_expression(root):
    edit_expressions(root, lambda d: d["videos"]["video1"]["expressions"]["1"].update(exp="  "))
    return "video video1, expression 1", "empty expression"


def _frameless_video(root):
    edit_expressions(root, lambda d: d["videos"]["video1"].update(frames=[]))
    return "video video1, expression 0", "lists no frames"


FILE_PROBLEMS = [_corrupt_frame, _missing_frame, _missing_annotation]
METADATA_PROBLEMS = [_absent_object, _empty_expression, _frameless_video]


def _load_all(dataset):
    for epoch in range(2):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            yield dataset[index]


@pytest.mark.parametrize("break_dataset", FILE_PROBLEMS)
def test_bad_files_name_video_frame_and_file(root, break_dataset):
    where, file_name = break_dataset(root)
    dataset = build_dataset("ytvos", "train", make_args(root, "--num_frames", "6"))
    with pytest.raises(BadSampleError, match=f"{where}.*{file_name}") as error:
        list(_load_all(dataset))
    assert "pass --skip_bad_samples to train on without such samples" in str(error.value)
    assert "replaced by a random other sample" in str(error.value)


@pytest.mark.parametrize("dataset_file", ["ytvos", "davis"])
def test_video_shorter_than_a_clip_repeats_frames(root, dataset_file):
    """The original samples short videos with repetition instead of rejecting them."""
    edit_expressions(root, lambda d: d["videos"]["video1"].update(frames=d["videos"]["video1"]["frames"][:2]))
    dataset = build_dataset(dataset_file, "train", make_args(root, "--num_frames", "5"))
    short = [i for i, sample in enumerate(dataset.samples) if sample.video == "video1"]
    assert len(short) == 2  # 2 expressions x anchor 0
    loaded = [dataset[index] for index in short]
    assert any(target["video"] == "video1" for _, target in loaded)  # not all replaced (object cropped away)
    for clip, target in loaded:
        assert clip.shape[0] == 5 and target["masks"].shape[0] == 5
        if target["video"] == "video1":
            assert sorted(set(target["frames_idx"].tolist())) == [0, 1]  # both frames, some more than once


@pytest.mark.parametrize("break_dataset", FILE_PROBLEMS)
def test_bad_files_are_skipped_and_listed(root, break_dataset):
    where, file_name = break_dataset(root)
    dataset = build_dataset("ytvos", "train", make_args(root, "--num_frames", "6", "--skip_bad_samples"))
    loaded = list(_load_all(dataset))
    skipped = [entry for _, target in loaded for entry in target["skipped"]]
    assert len(loaded) == 2 * len(dataset) and skipped
    assert all(where in entry and file_name in entry for entry in skipped)
    assert all(target["video"] == "video0" for _, target in loaded if target["skipped"])


@pytest.mark.parametrize("break_dataset", METADATA_PROBLEMS)
def test_bad_metadata_is_reported_or_left_out(root, break_dataset, caplog):
    where, problem = break_dataset(root)
    with pytest.raises(BadSampleError, match=f"{where}.*{problem}"):
        build_dataset("ytvos", "train", make_args(root))
    dataset = build_dataset("ytvos", "train", make_args(root, "--skip_bad_samples"))
    assert len(dataset) < 8 and where in caplog.text
