"""JHMDB-Sentences evaluation clips on a generated miniature release."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import jhmdb
from datasets.ref_video import BadSampleError
from opts import get_args_parser
from tests.datasets.synthetic_a2d import (GREY_TOLERANCE, HEIGHT, VAL_SIZE, WIDTH, box_mask, frame_level, frame_levels,
                                          jhmdb_box, write_jhmdb)
from tools.data.prepare_a2d_jhmdb import prepare_jhmdb


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = write_jhmdb(tmp_path_factory.mktemp("jhmdb") / "jhmdb_sentences")
    prepare_jhmdb(root, seed=0)
    return root


@pytest.fixture()
def root(prepared, tmp_path):
    return shutil.copytree(prepared, tmp_path / "jhmdb_sentences")


def make_args(root, *extra):
    return get_args_parser().parse_args(["--jhmdb_path", str(root), "--num_frames", "5", *extra])


def test_clips_windows_masks_and_ids(prepared):
    dataset = jhmdb.build("val", make_args(prepared))
    assert len(dataset) == 6
    for index, sample in enumerate(dataset.samples):
        clip, target = dataset[index]
        frame = sample.frame_idx
        window = [min(max(i, 1), sample.total_frames) for i in range(frame - 2, frame + 3)]  # 1-based, clamped
        assert clip.shape == (5, 3, *VAL_SIZE) and "labels" not in target
        assert target["frames_idx"].tolist() == window
        assert target["valid_indices"].tolist() == [window.index(frame)]
        assert target["image_id"] == f"v_{sample.video_id}_f_{frame}"
        assert target["orig_size"].tolist() == [HEIGHT, WIDTH] and target["valid"].tolist() == [1]
        expected_mask = torch.from_numpy(box_mask(jhmdb_box(frame))).float()[None, None]
        assert torch.equal(target["masks"], F.interpolate(expected_mask, VAL_SIZE, mode="nearest")[0] > 0.5)
        assert np.allclose(frame_levels(clip), [frame_level(i) for i in window], atol=GREY_TOLERANCE)
    assert dataset[0][1]["caption"] == "a woman brushes her hair"
    catch = [target for _, target in (dataset[i] for i in range(3, 6))]
    assert max(max(t["frames_idx"].tolist()) for t in catch) == 4  # 5 frames but 4 masks: clamped to 4


def test_train_and_val_are_the_same_samples(prepared):
    assert jhmdb.build("train", make_args(prepared)).samples == jhmdb.build("val", make_args(prepared)).samples


def test_paths_resolve_against_the_parent_of_jhmdb_path(prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(prepared.parent)
    dataset = jhmdb.build("val", make_args("jhmdb_sentences"))  # relative --jhmdb_path
    assert dataset.samples[0].frame_path.is_file()
    monkeypatch.chdir(tmp_path)
    dataset = jhmdb.build("val", make_args(prepared))  # absolute --jhmdb_path, another working directory
    assert dataset[0][1]["image_id"] == dataset.samples[0].image_id


def test_absolute_metadata_paths_are_kept(root):
    path = root / "jhmdb_sentences_samples_metadata.json"
    records = json.loads(path.read_text())
    for record in records:
        record[1], record[2] = (os.path.join(root.parent, p) for p in record[1:3])
    path.write_text(json.dumps(records))
    moved = shutil.copytree(root, root.parent / "elsewhere" / "renamed")  # metadata still points at root
    dataset = jhmdb.build("val", make_args(moved))
    assert dataset.samples[0].frame_path.is_relative_to(root)
    dataset[0]


def test_missing_mask_file_is_named(root):
    (root / "puppet_mask" / "catch" / "catch_vid" / "puppet_mask.mat").unlink()
    dataset = jhmdb.build("val", make_args(root))
    with pytest.raises(BadSampleError, match="video catch_vid, frame .*catch_vid/puppet_mask.mat does not exist"):
        dataset[3]


def test_missing_metadata_says_how_to_make_it(root):
    (root / "jhmdb_sentences_samples_metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="prepare_a2d_jhmdb.py jhmdb"):
        jhmdb.build("val", make_args(root))
