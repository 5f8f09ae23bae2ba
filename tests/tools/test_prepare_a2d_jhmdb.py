"""tools/data/prepare_a2d_jhmdb.py on miniature A2D-Sentences and JHMDB-Sentences releases."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from datasets.meta import DatasetFormatError
from tests.datasets.synthetic_a2d import JHMDB_VIDEOS, a2d_box, box_mask, jhmdb_box, write_a2d, write_jhmdb
from tools.data.prepare_a2d_jhmdb import main, prepare_a2d, prepare_jhmdb


@pytest.fixture()
def a2d_root(tmp_path):
    return write_a2d(tmp_path / "a2d_sentences")


@pytest.fixture()
def jhmdb_root(tmp_path):
    return write_jhmdb(tmp_path / "jhmdb_sentences")


def test_a2d_sample_lists_follow_queries_then_frames(a2d_root, caplog):
    prepare_a2d(a2d_root)  # into the --a2d_path root, where the original's layout has MTTR's files
    train = json.loads((a2d_root / "a2d_sentences_single_frame_train_annotations.json").read_text())
    test = json.loads((a2d_root / "a2d_sentences_single_frame_test_annotations.json").read_text())
    # query rows in file order, then the annotated frames whose instance list holds the query's instance;
    # vidC is a missed video, "1 (copy)" is not an instance id, queries are lower-cased
    assert train == [["the man  on the left", "vidA", 3, 1], ["the man  on the left", "vidA", 6, 1],
                     ["a dog", "vidA", 3, 2]]
    assert test == [["a red ball", "vidB", 1, 1], ["the bright car", "vidB", 1, 2], ["the bright car", "vidB", 6, 2]]
    assert "1 (copy)" in caplog.text
    assert not list((a2d_root / "text_annotations").glob("*.json"))


def test_a2d_coco_ground_truth_reads_with_pycocotools(a2d_root):
    prepare_a2d(a2d_root)
    coco = COCO(str(a2d_root / "a2d_sentences_test_annotations_in_coco_format.json"))
    assert list(coco.imgs) == ["v_vidB_f_1_i_1", "v_vidB_f_1_i_2", "v_vidB_f_6_i_2"]
    for image_id, (frame, instance) in zip(coco.imgs, ((1, 1), (1, 2), (6, 2))):
        (annotation,) = coco.imgToAnns[image_id]
        expected = box_mask(a2d_box(instance, frame))
        x0, y0, x1, y1 = a2d_box(instance, frame)
        assert np.array_equal(coco.annToMask(annotation), expected)
        assert annotation["area"] == expected.sum() and annotation["bbox"] == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
        assert annotation["iscrowd"] == 0 and annotation["category_id"] == 1
        assert (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]) == expected.shape


def test_a2d_missing_inputs_are_named(a2d_root):
    (a2d_root / "Release" / "videoset.csv").unlink()
    with pytest.raises(FileNotFoundError, match="videoset.csv"):
        prepare_a2d(a2d_root)


def test_a2d_malformed_videoset_names_file_and_line(a2d_root):
    (a2d_root / "Release" / "videoset.csv").write_text("vidA,11,0,1\n")
    with pytest.raises(DatasetFormatError, match="videoset.csv:1"):
        prepare_a2d(a2d_root)


def _chosen(root):
    return [(video, int(frame.rsplit("/", 1)[1][:-4]))
            for video, frame, *_ in json.loads((root / "jhmdb_sentences_samples_metadata.json").read_text())]


def test_jhmdb_metadata_and_ground_truth(jhmdb_root):
    main(["jhmdb", "--jhmdb_path", str(jhmdb_root), "--seed", "3"])
    records = json.loads((jhmdb_root / "jhmdb_sentences_samples_metadata.json").read_text())
    assert [r[0] for r in records] == ["brush_vid"] * 3 + ["catch_vid"] * 3  # 3 frames per video, query order
    for video, frame, masks, total, query in records:
        action, frames, mask_frames, text = JHMDB_VIDEOS[video]
        assert frame.startswith(f"jhmdb_sentences/Rename_Images/{action}/{video}/")  # relative to the parent
        assert masks == f"jhmdb_sentences/puppet_mask/{action}/{video}/puppet_mask.mat"
        assert total == min(frames, mask_frames) and query == text
    coco = COCO(str(jhmdb_root / "jhmdb_sentences_gt_annotations_in_coco_format.json"))
    assert list(coco.imgs) == [f"v_{video}_f_{frame}" for video, frame in _chosen(jhmdb_root)]
    for (video, frame), image_id in zip(_chosen(jhmdb_root), coco.imgs):
        assert np.array_equal(coco.annToMask(coco.imgToAnns[image_id][0]), box_mask(jhmdb_box(frame)))


def test_jhmdb_frame_choice_is_fixed_by_the_seed(jhmdb_root):
    choices = []
    for seed in (0, 0, 1, 2, 3, 4):
        prepare_jhmdb(jhmdb_root, seed=seed)
        choices.append(_chosen(jhmdb_root))
    assert choices[0] == choices[1]
    assert any(choice != choices[0] for choice in choices[2:])
    prepare_jhmdb(jhmdb_root, seed=0, frames_per_video=1)
    assert [video for video, _ in _chosen(jhmdb_root)] == ["brush_vid", "catch_vid"]


def test_jhmdb_only_frames_with_a_mask_are_chosen(jhmdb_root):
    # asking for more frames than a video has chooses all usable ones: catch_vid has 5 frames, 4 masks
    prepare_jhmdb(jhmdb_root, seed=0, frames_per_video=10)
    chosen = _chosen(jhmdb_root)
    assert [frame for video, frame in chosen if video == "catch_vid"] == [1, 2, 3, 4]
    assert [frame for video, frame in chosen if video == "brush_vid"] == [1, 2, 3, 4, 5, 6]


def test_jhmdb_missing_mask_file_is_named(jhmdb_root):
    (jhmdb_root / "puppet_mask" / "catch" / "catch_vid" / "puppet_mask.mat").unlink()
    with pytest.raises(FileNotFoundError, match="catch_vid/puppet_mask.mat"):
        prepare_jhmdb(jhmdb_root)
    assert not (jhmdb_root / "jhmdb_sentences_samples_metadata.json").exists()  # nothing half-written


def test_jhmdb_repeated_video_is_an_error(jhmdb_root):
    with (jhmdb_root / "jhmdb_annotation.txt").open("a") as f:
        f.write("catch_vid,another query\n")
    with pytest.raises(DatasetFormatError, match="v_catch_vid_f_.* appears twice"):
        prepare_jhmdb(jhmdb_root, frames_per_video=4)
