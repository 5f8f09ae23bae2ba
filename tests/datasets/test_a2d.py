"""A2D-Sentences clips on a generated miniature release, incl. bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import a2d
from datasets.meta import DatasetFormatError
from datasets.ref_video import BadSampleError
from opts import get_args_parser
from tests.datasets.synthetic_a2d import (A2D_VIDEOS, GREY_TOLERANCE, HEIGHT, VAL_SIZE, WIDTH, a2d_box, box_mask,
                                          frame_level, frame_levels, write_a2d)
from tools.data.prepare_a2d_jhmdb import prepare_a2d
from util.video import decode_video



@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = write_a2d(tmp_path_factory.mktemp("a2d") / "a2d_sentences")
    prepare_a2d(root)
    return root


@pytest.fixture()
def root(prepared, tmp_path):
    """A private copy, for tests that break files."""
    return shutil.copytree(prepared, tmp_path / "a2d_sentences")


def make_args(root, *extra):
    return get_args_parser().parse_args(["--a2d_path", str(root), "--num_frames", "5", "--max_size", "64", *extra])


def sample_list(root, subset):
    return root / f"a2d_sentences_single_frame_{subset}_annotations.json"


def edit_samples(root, subset, edit):
    path = sample_list(root, subset)
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def test_val_windows_masks_and_ids(prepared):
    dataset = a2d.build("val", make_args(prepared))
    assert len(dataset) == 3
    # (frame_idx, instance) of the test samples; vidB has 6 frames, T = 5: windows clamp to [0, 5] and repeat
    expected = [((1, 1), [0, 0, 0, 1, 2], 0), ((1, 2), [0, 0, 0, 1, 2], 0), ((6, 2), [3, 4, 5, 5, 5], 2)]
    for index, ((frame_idx, instance), frames_idx, valid_index) in enumerate(expected):
        clip, target = dataset[index]
        assert clip.shape == (5, 3, *VAL_SIZE)
        assert target["frames_idx"].tolist() == frames_idx
        assert target["valid_indices"].tolist() == [valid_index]  # the first occurrence of frame_idx - 1
        assert target["image_id"] == f"v_vidB_f_{frame_idx}_i_{instance}"
        assert target["labels"].tolist() == [0] and target["valid"].tolist() == [1]
        assert target["orig_size"].tolist() == [HEIGHT, WIDTH] and target["size"].tolist() == list(VAL_SIZE)
        expected_mask = torch.from_numpy(box_mask(a2d_box(instance, frame_idx))).float()[None, None]
        expected_mask = F.interpolate(expected_mask, VAL_SIZE, mode="nearest")[0] > 0.5
        assert target["masks"].shape == (1, *VAL_SIZE) and torch.equal(target["masks"], expected_mask)
        assert np.allclose(frame_levels(clip), [frame_level(i) for i in frames_idx], atol=GREY_TOLERANCE)
        assert target["video"] == "vidB" and target["skipped"] == []
    assert dataset[1][1]["caption"] == "the bright car"


def test_train_clips_hold_the_annotated_frame(prepared):
    dataset = a2d.build("train", make_args(prepared, "--photometric_distort", "off"))
    assert len(dataset) == 3
    samples = {s.image_id: s for s in dataset.samples}
    assert list(samples) == ["v_vidA_f_3_i_1", "v_vidA_f_6_i_1", "v_vidA_f_3_i_2"]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            clip, target = dataset[index]
            sample = samples[target["image_id"]]  # another sample if the crop lost the object
            frames_idx = target["frames_idx"].tolist()
            position = int(target["valid_indices"])
            assert clip.shape[:2] == (5, 3) and max(clip.shape[-2:]) <= 64
            assert frames_idx == sorted(frames_idx) and len(frames_idx) == 5
            assert max(frames_idx) < A2D_VIDEOS["vidA"][1]
            assert frames_idx.index(sample.frame_idx - 1) == position
            assert target["masks"].shape == (1, *clip.shape[-2:]) and target["boxes"].shape == (1, 4)
            assert target["valid"].tolist() == [1] and target["labels"].tolist() == [0]
            # flipped clips say "right"; the caption's double space is collapsed either way
            assert target["caption"] in {"the man on the left", "the man on the right", "a dog"}
            assert np.allclose(frame_levels(clip)[position], frame_level(sample.frame_idx - 1), atol=GREY_TOLERANCE)


def test_train_samples_depend_only_on_seed_epoch_and_index(prepared):
    dataset = a2d.build("train", make_args(prepared))
    first = dataset[0]
    dataset[1]
    again = dataset[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["frames_idx"], again[1]["frames_idx"])
    seen = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        seen.add(tuple(dataset[0][1]["frames_idx"].tolist()))
    assert len(seen) > 1


def test_one_frame_training_clips_are_the_annotated_frame(prepared):
    dataset = a2d.build("train", make_args(prepared, "--num_frames", "1"))
    samples = {s.image_id: s for s in dataset.samples}
    for index in range(len(dataset)):
        _, target = dataset[index]
        sample = samples[target["image_id"]]
        assert target["frames_idx"].tolist() == [sample.frame_idx - 1] and target["valid_indices"].tolist() == [0]


def test_instance_masks_of_both_h5_layouts(prepared):
    masks_dir = prepared / "text_annotations" / "a2d_annotation_with_instances" / "vidA"
    ids, masks = a2d.read_instance_masks(masks_dir / "00003.h5")  # reMask [2, W, H]
    assert ids == [1, 2] and masks.shape == (2, HEIGHT, WIDTH)
    assert np.array_equal(masks[1], box_mask(a2d_box(2, 3)))
    ids, masks = a2d.read_instance_masks(masks_dir / "00006.h5")  # reMask [W, H]
    assert ids == [1] and np.array_equal(masks[0], box_mask(a2d_box(1, 6)))


def test_decoding_stops_at_the_needed_frame(prepared):
    video = prepared / "Release" / "clips320H" / "vidA.mp4"
    assert len(decode_video(video)[0]) == A2D_VIDEOS["vidA"][1]
    assert len(decode_video(video, 3)[0]) == 3


# ----------------------------------------------------------------------------- bad input
def _missing_h5(root):
    (root / "text_annotations" / "a2d_annotation_with_instances" / "vidB" / "00006.h5").unlink()
    return "video vidB, frame_idx 6, instance 2", "vidB/00006.h5"


def _absent_instance(root):
    edit_samples(root, "test", lambda records: records[2].__setitem__(3, 7))
    return "video vidB, frame_idx 6, instance 7", "instance 7 is not among the instances \\[2\\] of .*00006.h5"


def _missing_video(root):
    (root / "Release" / "clips320H" / "vidB.mp4").unlink()
    return "video vidB, frame_idx", "vidB.mp4 does not exist"


def _unreadable_video(root):
    (root / "Release" / "clips320H" / "vidB.mp4").write_bytes(b"not a video")
    return "video vidB, frame_idx", "vidB.mp4"


def _short_video(root):
    masks = root / "text_annotations" / "a2d_annotation_with_instances" / "vidB"
    shutil.copy(masks / "00006.h5", masks / "00020.h5")
    edit_samples(root, "test", lambda records: records[2].__setitem__(2, 20))
    return "video vidB, frame_idx 20, instance 2", "vidB.mp4 has only 6 frames"


@pytest.mark.parametrize("break_dataset", [_missing_h5, _absent_instance, _missing_video, _unreadable_video,
                                           _short_video])
def test_bad_samples_name_the_record_and_file(root, break_dataset):
    where, problem = break_dataset(root)
    dataset = a2d.build("val", make_args(root, "--skip_bad_samples"))  # evaluation never skips
    with pytest.raises(BadSampleError, match=f"{where}.*{problem}"):
        for index in range(len(dataset)):
            dataset[index]


def test_training_skips_and_lists_bad_samples(root):
    (root / "text_annotations" / "a2d_annotation_with_instances" / "vidA" / "00006.h5").unlink()
    with pytest.raises(BadSampleError, match="video vidA, frame_idx 6.*00006.h5"):
        a2d.build("train", make_args(root))[1]
    dataset = a2d.build("train", make_args(root, "--skip_bad_samples"))
    _, target = dataset[1]
    assert target["image_id"] != "v_vidA_f_6_i_1"
    assert len(target["skipped"]) >= 1 and all("00006.h5" in entry for entry in target["skipped"])


def test_malformed_sample_list_names_file_and_record(root):
    edit_samples(root, "train", lambda records: records[1].__setitem__(2, "3"))
    with pytest.raises(DatasetFormatError, match="train_annotations.json: record 1"):
        a2d.build("train", make_args(root))


def test_missing_sample_list_names_every_place_looked_and_how_to_make_it(root):
    sample_list(root, "test").unlink()
    with pytest.raises(FileNotFoundError) as error:
        a2d.build("val", make_args(root))
    name = "a2d_sentences_single_frame_test_annotations.json"
    message = str(error.value)
    assert str(root / name) in message and str(root / "text_annotations" / name) in message
    assert "prepare_a2d_jhmdb.py a2d" in message


def test_missing_coco_ground_truth_names_every_place_looked(root):
    (root / "a2d_sentences_test_annotations_in_coco_format.json").unlink()
    with pytest.raises(FileNotFoundError) as error:
        a2d.coco_gt_path(root)
    name = "a2d_sentences_test_annotations_in_coco_format.json"
    assert str(root / name) in str(error.value) and str(root / "text_annotations" / name) in str(error.value)


def test_prepared_files_in_text_annotations_are_read_too(root, caplog):
    """The layout written by earlier versions of the prepare tool: the prepared files in text_annotations/."""
    names = ["a2d_sentences_single_frame_train_annotations.json", "a2d_sentences_single_frame_test_annotations.json",
             "a2d_sentences_test_annotations_in_coco_format.json"]
    for name in names:
        (root / name).rename(root / "text_annotations" / name)
    assert a2d.coco_gt_path(root) == root / "text_annotations" / names[2]
    assert len(a2d.build("val", make_args(root))) == 3
    # with copies in both places the root's (the original's layout) is read, with a warning
    edit = json.loads((root / "text_annotations" / names[1]).read_text())[:1]
    (root / names[1]).write_text(json.dumps(edit))
    assert len(a2d.build("val", make_args(root))) == 1
    assert "exists in 2 places" in caplog.text


def test_unknown_split(prepared):
    with pytest.raises(ValueError, match="splits"):
        a2d.build("test", make_args(prepared))
