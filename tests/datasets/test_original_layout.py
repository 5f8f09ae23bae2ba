"""Every dataset in a ``data/`` folder laid out exactly as the original ReferFormer's docs/data.md, prepared
with the original's documented commands (run from the folder holding ``data/``, default paths), and read
with the default ``--*_path`` flags: a researcher's existing data folders work unchanged.

The miniature datasets are the generators of the other dataset tests, written where the original's
layout puts each file.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference_davis
import inference_ytvos
from datasets import build_dataset, build_evaluations
from opts import get_args_parser
from tests.datasets.synthetic import edit_expressions, write_dataset
from tests.datasets.synthetic_a2d import write_a2d, write_jhmdb
from tests.datasets.synthetic_refexp import write_coco
from tests.tools.test_convert_davis import write_davis

ROOT = Path(__file__).resolve().parents[2]
# The original's documented preparation commands (tools/data/*.py with their defaults), in its docs' order.
PREPARATION_COMMANDS = (
    ("tools/data/convert_refexp_to_coco.py",),
    ("tools/data/convert_davis_to_ytvos.py",),
    ("tools/data/prepare_a2d_jhmdb.py", "a2d"),  # the original took these files from MTTR
    ("tools/data/prepare_a2d_jhmdb.py", "jhmdb"),
)
# The original's docs/data.md, path by path (folders end with "/").
ORIGINAL_LAYOUT = (
    "data/coco/train2014/",
    *(f"data/coco/{name}/instances_{name}_{split}.json" for name in ("refcoco", "refcoco+", "refcocog")
      for split in ("train", "val")),
    *(f"data/ref-youtube-vos/meta_expressions/{split}/meta_expressions.json" for split in ("train", "valid", "test")),
    "data/ref-youtube-vos/train/JPEGImages/",
    "data/ref-youtube-vos/train/Annotations/",
    "data/ref-youtube-vos/train/meta.json",
    "data/ref-youtube-vos/valid/JPEGImages/",
    "data/ref-davis/DAVIS/",
    "data/ref-davis/davis_text_annotations/",
    "data/a2d_sentences/Release/",
    "data/a2d_sentences/text_annotations/a2d_annotation_with_instances/",
    "data/a2d_sentences/text_annotations/a2d_annotation.txt",
    "data/a2d_sentences/text_annotations/a2d_missed_videos.txt",
    "data/a2d_sentences/a2d_sentences_single_frame_test_annotations.json",
    "data/a2d_sentences/a2d_sentences_single_frame_train_annotations.json",
    "data/a2d_sentences/a2d_sentences_test_annotations_in_coco_format.json",
    "data/jhmdb_sentences/Rename_Images/",
    "data/jhmdb_sentences/puppet_mask/",
    "data/jhmdb_sentences/jhmdb_annotation.txt",
    "data/jhmdb_sentences/jhmdb_sentences_samples_metadata.json",
    "data/jhmdb_sentences/jhmdb_sentences_gt_annotations_in_coco_format.json",
)


def write_ytvos(root: Path) -> None:
    """Ref-YouTube-VOS as the competition ships it: train with annotations; valid frames and expressions
    without object ids; the test expression file (whose videos the valid file lists too)."""
    write_dataset(root, split="train", videos=2, frames=6)
    write_dataset(root, split="valid", videos=2, frames=4)
    shutil.rmtree(root / "valid" / "Annotations")
    (root / "valid" / "meta.json").unlink()

    def drop_object_ids(data):
        for video in data["videos"].values():
            for expression in video["expressions"].values():
                del expression["obj_id"]

    edit_expressions(root, drop_object_ids, split="valid")
    test_file = root / "meta_expressions" / "test" / "meta_expressions.json"
    test_file.parent.mkdir(parents=True)
    test_file.write_text('{"videos": {"video1": {"expressions": {"0": {"exp": "a dog"}}, "frames": ["00000"]}}}')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding ``data/`` in the original's layout, prepared with the original's commands."""
    workdir = tmp_path_factory.mktemp("original")
    data = workdir / "data"
    coco = write_coco(data / "coco").root
    for converted in coco.glob("*/instances_*_*.json"):
        converted.unlink()  # made again below by the documented command
    write_ytvos(data / "ref-youtube-vos")
    (data / "ref-davis").mkdir()
    write_davis(data / "ref-davis")  # the DAVIS and text-annotation zips, unzipped
    write_a2d(data / "a2d_sentences")
    write_jhmdb(data / "jhmdb_sentences")
    for script, *arguments in PREPARATION_COMMANDS:
        process = subprocess.run([sys.executable, str(ROOT / script), *arguments], cwd=workdir,
                                 capture_output=True, text=True, timeout=300)
        assert process.returncode == 0, f"{script} {arguments}: {process.stdout}{process.stderr}"
    return workdir


@pytest.fixture()
def args(workdir, monkeypatch):
    """Options with the default data paths (``data/...``), run from ``workdir``."""
    monkeypatch.chdir(workdir)
    return get_args_parser().parse_args(["--num_frames", "3", "--max_size", "64"])


def test_the_prepared_folders_are_the_originals_layout(workdir):
    for path in ORIGINAL_LAYOUT:
        assert (workdir / path).is_dir() if path.endswith("/") else (workdir / path).is_file(), path


def test_ref_youtube_vos(args):
    dataset = build_dataset("ytvos", "train", args)
    clip, target = dataset[0]
    assert clip.shape[:2] == (3, 3) and target["valid"].any()
    jobs = inference_ytvos.ytvos_jobs(args.ytvos_path, "valid")
    assert [job.video for job in jobs] == ["video0"]  # video1 is a test video
    assert all(path.is_file() for path in jobs[0].frame_paths)


def test_ref_davis17(args):
    dataset = build_dataset("davis", "train", args)
    clip, target = dataset[0]
    assert clip.shape[:2] == (3, 3) and target["valid"].any()
    (job,) = inference_davis.davis_jobs(args.davis_path, "valid")
    assert job.video == "bear" and all(path.is_file() for path in job.frame_paths)


def test_a2d_sentences(args):
    assert len(build_dataset("a2d", "train", args)) == 3
    ((dataset, evaluator),) = build_evaluations("a2d", args).values()
    assert evaluator.coco_gt_path == Path("data/a2d_sentences/a2d_sentences_test_annotations_in_coco_format.json")
    clip, target = dataset[0]
    assert clip.shape[:2] == (3, 3) and target["image_id"] in evaluator.coco_gt.imgs


def test_jhmdb_sentences(args):
    ((dataset, evaluator),) = build_evaluations("jhmdb", args).values()
    assert len(dataset) == 6
    clip, target = dataset[0]
    assert clip.shape[:2] == (3, 3) and target["image_id"] in evaluator.coco_gt.imgs
    # the metadata paths are the original's: relative to data/
    assert dataset.samples[0].frame_path.relative_to(Path.cwd() / "data").parts[0] == "jhmdb_sentences"


def test_refcoco(args):
    assert len(build_dataset("all", "train", args)) > 0
    evaluations = build_evaluations("all", args)
    assert sorted(evaluations) == ["refcoco", "refcoco+", "refcocog"]
    for dataset, _ in evaluations.values():
        image, target = dataset[0]
        assert image.shape[:2] == (1, 3) and target["valid"].all()
