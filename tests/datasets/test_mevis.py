"""MeViS training clips on a generated miniature dataset: union targets, absent objects, RLE decoding,
invalid frames, joint training with Ref-YouTube-VOS, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from datasets import build_dataset
from datasets.mevis import MevisDataset, decode_rle, read_expressions, union_mask
from datasets.ref_video import BadSampleError
from datasets.refexp import EpochConcatDataset
from datasets.transforms import Compose, Normalize
from opts import get_args_parser, num_classes_for, validate_args
from tests.datasets.synthetic import write_dataset
from tests.datasets.synthetic_mevis import VIDEOS, edit_json, encode, write_mevis


@pytest.fixture()
def data(tmp_path):
    return write_mevis(tmp_path / "mevis", splits=("train",))


def make_args(root, *extra):
    return get_args_parser().parse_args(["--dataset_file", "mevis", "--mevis_path", str(root), "--num_frames", "3",
                                         "--max_size", "64", *extra])


def untransformed(root, num_frames: int, skip_bad_samples: bool = False) -> MevisDataset:
    """The dataset at the frames' own size (no flip, resize or crop), so targets compare pixel for pixel."""
    return MevisDataset(root, "train", num_frames=num_frames, transforms=Compose([Normalize()]), seed=0,
                        skip_bad_samples=skip_bad_samples)


def read_mask(dataset, sample, frame):
    """The float mask of ``sample``'s objects in ``frame``, as loading a clip reads it."""
    return dataset._read_masks([sample], frame, dataset._read_frame(sample, frame))[0]


def expected_box(mask: np.ndarray) -> list[float]:
    """Normalised cxcywh of the inclusive pixel box of a non-empty bool ``[H, W]`` mask."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]


def test_samples_in_file_order_with_an_anchor_every_clip(data):
    dataset = untransformed(data.root, num_frames=2)
    expected = [(video, exp_id, anchor)
                for video, (_, _, frames, _) in VIDEOS["train"].items()
                for exp_id in data.expressions["train"][video]
                for anchor in range(0, frames, 2)]
    assert [(s.video, s.exp_id, s.anchor) for s in dataset.samples] == expected
    walk_two = next(s for s in dataset.samples if (s.video, s.exp_id) == ("walk", "1"))
    assert walk_two.anno_ids == tuple(data.anno_ids["train"]["walk"][:2])


def test_target_is_the_union_of_the_objects_with_its_box(data):
    dataset = untransformed(data.root, num_frames=3)
    seen_invalid = seen_overlap = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            clip, target = dataset[index]
            truth = data.target("train", target["video"], target["exp_id"])  # [T_video, H, W]
            frames = target["frames_idx"].tolist()
            assert clip.shape == (3, 3, *truth.shape[1:])
            assert target["labels"].tolist() == [0, 0, 0]
            for t, frame in enumerate(frames):
                np.testing.assert_array_equal(target["masks"][t].numpy(), truth[frame])
                if truth[frame].any():
                    assert target["valid"][t] == 1
                    assert target["boxes"][t].tolist() == pytest.approx(expected_box(truth[frame]), abs=1e-6)
                else:
                    assert target["valid"][t] == 0 and target["boxes"][t].tolist() == [0, 0, 0, 0]
                    seen_invalid += 1
                objects = data.object_masks["train"][target["video"]][:, frame]
                seen_overlap += len(data.expressions["train"][target["video"]][target["exp_id"]][1]) > 1 and \
                    bool((objects[0] & objects[1]).any())
    assert seen_invalid and seen_overlap  # the cases that matter were drawn


def test_object_absent_from_a_frame_leaves_the_others(data):
    dataset = untransformed(data.root, num_frames=1)
    # "walk" expression 1 = objects 0 and 1: object 0 is absent from the last frame, object 1 from the first
    masks = data.object_masks["train"]["walk"]
    last = len(masks[0]) - 1
    sample = next(s for s in dataset.samples if (s.video, s.exp_id) == ("walk", "1"))
    first = read_mask(dataset, sample, sample.frames[0])
    final = read_mask(dataset, sample, sample.frames[last])
    np.testing.assert_array_equal(first, masks[0, 0].astype(np.float32))
    np.testing.assert_array_equal(final, masks[1, last].astype(np.float32))
    single = next(s for s in dataset.samples if (s.video, s.exp_id) == ("walk", "0"))
    empty = read_mask(dataset, single, single.frames[last])
    assert not empty.any()


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: alternating run lengths over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    return runs + [length]


def test_rle_decoding_compressed_and_uncompressed():
    rng = np.random.default_rng(1)
    mask = rng.random((7, 5)) < 0.4
    np.testing.assert_array_equal(decode_rle(encode(mask)), mask)
    np.testing.assert_array_equal(decode_rle({"size": [7, 5], "counts": _runs(mask)}), mask)
    assert sum(_runs(mask)) == mask.size
    with pytest.raises(ValueError, match="COCO RLE"):
        decode_rle([1, 2, 3])
    with pytest.raises(ValueError, match="7x5 but the frame is 5x7"):
        union_mask([encode(mask)], (5, 7))
    np.testing.assert_array_equal(union_mask([None, encode(mask), None], (7, 5)), mask)
    assert not union_mask([None], (2, 3)).any()


def test_built_from_the_command_line_with_one_class(data):
    args = make_args(data.root)
    validate_args(args)
    assert num_classes_for(args) == 1
    dataset = build_dataset("mevis", "train", args)
    clip, target = dataset[0]
    assert clip.shape[:2] == (3, 3) and max(clip.shape[2:]) <= 64
    assert target["labels"].tolist() == [0, 0, 0] and target["valid"].any()
    with pytest.raises(ValueError, match="inference_mevis.py"):
        build_dataset("mevis", "valid_u", args)


def test_joint_training_with_ref_youtube_vos(data, tmp_path):
    ytvos = write_dataset(tmp_path / "ytvos", videos=1, frames=4, height=40, width=56)
    args = make_args(data.root, "--dataset_file", "mevis_ytvos", "--ytvos_path", str(ytvos), "--binary")
    validate_args(args)
    joint = build_dataset("mevis_ytvos", "train", args)
    assert isinstance(joint, EpochConcatDataset)
    mevis, ytvos_part = joint.datasets
    assert len(joint) == len(mevis) + len(ytvos_part) and isinstance(mevis, MevisDataset)
    assert joint[len(mevis)][1]["video"] == "video0"  # Ref-YouTube-VOS follows MeViS
    joint.set_epoch(2)
    assert mevis.epoch == ytvos_part.epoch == 2
    not_binary = make_args(data.root, "--dataset_file", "mevis_ytvos", "--ytvos_path", str(ytvos))
    with pytest.raises(ValueError, match="mevis_ytvos needs --binary"):
        validate_args(not_binary)
    with pytest.raises(ValueError, match="--binary"):
        build_dataset("mevis_ytvos", "train", not_binary)


# ----------------------------------------------------------------------------- bad input
def test_anno_id_missing_from_the_mask_file(data):
    mask_file = data.root / "train" / "mask_dict.json"
    edit_json(mask_file, lambda d: d.pop("1"))
    with pytest.raises(BadSampleError, match=f"video walk, expression 1: anno_id 1 is not in {mask_file}"):
        untransformed(data.root, num_frames=2)
    dataset = untransformed(data.root, num_frames=2, skip_bad_samples=True)
    assert {(s.video, s.exp_id) for s in dataset.samples} == {("walk", "0"), ("jump", "0"), ("jump", "1")}


def test_mask_list_of_the_wrong_length(data):
    edit_json(data.root / "train" / "mask_dict.json", lambda d: d["3"].pop())
    with pytest.raises(BadSampleError, match="video jump, expression 0: anno_id 3 has 3 masks .* but the video has "
                                             "4 frames"):
        untransformed(data.root, num_frames=2)


def test_empty_expression(data):
    edit_json(data.root / "train" / "meta_expressions.json",
              lambda d: d["videos"]["walk"]["expressions"]["2"].update(exp="  "))
    with pytest.raises(BadSampleError, match="video walk, expression 2 .*: empty expression"):
        untransformed(data.root, num_frames=2)


def test_expression_without_anno_id(data):
    edit_json(data.root / "train" / "meta_expressions.json",
              lambda d: d["videos"]["jump"]["expressions"]["1"].pop("anno_id"))
    with pytest.raises(BadSampleError, match="video jump, expression 1: no 'anno_id'"):
        untransformed(data.root, num_frames=2)


def test_mask_of_the_wrong_size_names_the_files(data):
    def shrink(mask_dict):
        mask_dict["3"][1] = encode(np.ones((4, 4), dtype=bool))

    edit_json(data.root / "train" / "mask_dict.json", shrink)
    dataset = untransformed(data.root, num_frames=4)
    sample = next(s for s in dataset.samples if (s.video, s.exp_id) == ("jump", "0"))
    with pytest.raises(BadSampleError, match=r"video jump, frame 00001: .*mask_dict.json, anno_id \('3',\): mask is "
                                             r"4x4 but the frame is 48x48 .*00001.jpg"):
        read_mask(dataset, sample, "00001")


def test_missing_frame_names_the_file(data):
    missing = data.root / "train" / "JPEGImages" / "jump" / "00002.jpg"
    missing.unlink()
    dataset = untransformed(data.root, num_frames=4)
    index = next(i for i, s in enumerate(dataset.samples) if s.video == "jump")
    with pytest.raises(BadSampleError, match=f"video jump, frame 00002: .*{missing}"):
        dataset[index]


def test_broken_expression_file_is_named(data):
    path = data.root / "train" / "meta_expressions.json"
    edit_json(path, lambda d: d["videos"]["walk"]["expressions"]["0"].update(anno_id=3))
    with pytest.raises(ValueError, match=f"{path}: expression '0' of video 'walk': 'anno_id' must be a list"):
        read_expressions(path)


def test_video_without_frames_is_listed_and_a_short_one_repeats_frames(data):
    edit_json(data.root / "train" / "meta_expressions.json", lambda d: d["videos"]["jump"].update(frames=[]))
    with pytest.raises(BadSampleError, match="video jump, expression 0 .*: the video lists no frames"):
        untransformed(data.root, num_frames=2)
    dataset = untransformed(data.root, num_frames=7, skip_bad_samples=True)  # walk has 5 frames
    assert {s.video for s in dataset.samples} == {"walk"} and len(dataset.bad_entries) == 2
    _, target = dataset[0]
    assert len(target["frames_idx"]) == 7 and set(target["frames_idx"].tolist()) <= set(range(5))
