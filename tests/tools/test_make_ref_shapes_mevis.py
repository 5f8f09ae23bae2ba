"""Ref-Shapes in the MeViS layout (``make_ref_shapes.py --layout mevis``): splits and files, masks as
RLE with nulls, expressions of several objects that name exactly their objects, the same scenes as the
Ref-YouTube-VOS layout, and a round trip through the MeViS reader, the metric and the text encoder."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_mevis
from datasets import build_dataset
from datasets.mevis import read_expressions, read_mask_dict
from opts import get_args_parser
from tools.data.make_ref_shapes import COLOURS, MOTIONS, PLURAL_SHAPES, SIZES, generate_mevis_split, generate_split
from tools.data.make_ref_shapes import main as make_ref_shapes
from tools.data.train_text_encoder import collect_expressions

SIZE = dict(num_frames=4, height=64, width=64, expressions_per_object=1)
SEED = 5
NUM_VIDEOS = {"train": 4, "valid_u": 3, "valid": 3}


def _generate(root: Path, seed: int = SEED, layout: str = "mevis") -> Path:
    make_ref_shapes(["--layout", layout, "--output", str(root), "--seed", str(seed),
                     "--num_train_videos", str(NUM_VIDEOS["train"]), "--num_valid_videos", str(NUM_VIDEOS["valid"]),
                     "--frames", str(SIZE["num_frames"]), "--height", str(SIZE["height"]),
                     "--width", str(SIZE["width"]), "--expressions_per_object", str(SIZE["expressions_per_object"])])
    return root


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("ref_shapes_mevis"))


@pytest.fixture(scope="module")
def scenes() -> dict:
    return {split: generate_mevis_split(SEED, split, n, **SIZE) for split, n in NUM_VIDEOS.items()}


def _decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_splits_files_and_frame_names(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ["train", "valid", "valid_u"]
    for split, count in NUM_VIDEOS.items():
        assert (dataset / split / "mask_dict.json").is_file() == (split != "valid")
        videos = read_expressions(dataset / split / "meta_expressions.json")
        assert len(videos) == count
        for video, entry in videos.items():
            assert entry.frames == tuple(f"{t:05d}" for t in range(SIZE["num_frames"]))
            for frame in entry.frames:
                with Image.open(dataset / split / "JPEGImages" / video / f"{frame}.jpg") as image:
                    assert image.size == (SIZE["width"], SIZE["height"])
            assert all((e.anno_ids is None) == (split == "valid") for e in entry.expressions)
    raw = json.loads((dataset / "valid" / "meta_expressions.json").read_text())
    assert all(set(e) == {"exp"} for v in raw["videos"].values() for e in v["expressions"].values())


def test_masks_are_the_visible_pixels_with_null_where_hidden(dataset, scenes):
    for split in ("train", "valid_u"):
        mask_dict = read_mask_dict(dataset / split / "mask_dict.json")
        raw = json.loads((dataset / split / "meta_expressions.json").read_text())["videos"]
        next_anno_id = 0
        for scene, expressions in scenes[split]:
            anno_of = {}  # obj_id → anno_id, from the expressions
            for entry, expression in zip(raw[scene.name]["expressions"].values(), expressions):
                assert entry["obj_id"] == [k - 1 for k in expression.obj_ids]
                anno_of.update({k: a for k, a in zip(expression.obj_ids, entry["anno_id"])})
            for obj in scene.objects:
                # anno_ids count the split's objects from 0, in video and object order
                assert anno_of.get(obj.obj_id, next_anno_id + obj.obj_id - 1) == next_anno_id + obj.obj_id - 1
                masks = mask_dict[str(next_anno_id + obj.obj_id - 1)]
                assert len(masks) == SIZE["num_frames"]
                for rle, labels in zip(masks, scene.labels):
                    visible = labels == obj.obj_id
                    if visible.any():
                        np.testing.assert_array_equal(_decode(rle), visible)
                    else:
                        assert rle is None
            next_anno_id += len(scene.objects)
        assert len(mask_dict) == next_anno_id


_GROUP = re.compile(
    rf"^the (?:(?P<count>two|three|four) )?(?:(?P<size>{'|'.join(SIZES)}) )?(?:(?P<colour>{'|'.join(COLOURS)}) )?"
    rf"(?P<noun>{'|'.join(PLURAL_SHAPES.values())}|shapes)"
    r"(?: moving (?P<motion>left|right|up|down)| (?P<still>standing still))?$"
)
_SINGULAR = {plural: shape for shape, plural in PLURAL_SHAPES.items()}


def _fits(obj, parsed: dict) -> bool:
    """Whether ``obj`` fits the parsed group phrase, judged from its drawing parameters and trajectory."""
    if parsed["size"] and obj.size != parsed["size"] or parsed["colour"] and obj.colour != parsed["colour"]:
        return False
    if parsed["noun"] != "shapes" and obj.shape != _SINGULAR[parsed["noun"]]:
        return False
    step = obj.centres[-1] - obj.centres[0]
    if parsed["still"]:
        return bool(np.all(step == 0))
    if parsed["motion"]:
        direction = np.array(MOTIONS[parsed["motion"]])
        return bool(step @ direction > 0 and np.all(step[direction == 0] == 0))
    return True


def test_group_expressions_name_exactly_their_objects():
    videos = generate_mevis_split(0, "train", 30, **SIZE)
    groups = counted = 0
    for scene, expressions in videos:
        texts = [e.text for e in expressions]
        assert len(set(texts)) == len(texts)
        singles = [e for e in expressions if len(e.obj_ids) == 1]
        assert [e.text for e in singles] == [e.text for e in scene.expressions]  # the Ref-YouTube-VOS ones first
        several = expressions[len(singles):]
        assert len(several) <= 2 and all(len(e.obj_ids) > 1 for e in several)
        for expression in several:
            parsed = _GROUP.match(expression.text)
            assert parsed, expression.text
            fitting = tuple(o.obj_id for o in scene.objects if _fits(o, parsed.groupdict()))
            assert fitting == expression.obj_ids, (scene.name, expression.text)
            if parsed["count"]:
                assert parsed["count"] == {2: "two", 3: "three", 4: "four"}[len(fitting)]
                counted += 1
            groups += 1
    assert groups > 20 and 0 < counted < groups


def test_same_scenes_as_the_ref_youtube_vos_layout_and_same_bytes_for_the_same_seed(dataset, tmp_path):
    for split in ("train", "valid"):
        ytvos = generate_split(SEED, split, NUM_VIDEOS[split], **SIZE)
        mevis = generate_mevis_split(SEED, split, NUM_VIDEOS[split], **SIZE)
        for a, (b, _) in zip(ytvos, mevis):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.frames(), b.frames())
    assert _digest(_generate(tmp_path / "again")) == _digest(dataset)
    other = _digest(_generate(tmp_path / "other", seed=SEED + 1))
    assert other["train/mask_dict.json"] != _digest(dataset)["train/mask_dict.json"]


def test_default_output_depends_on_the_layout():
    from tools.data.make_ref_shapes import parse_args

    assert parse_args([]).output == "data/ref-shapes"
    assert parse_args(["--layout", "mevis"]).output == "data/ref-shapes-mevis"


def test_read_by_the_mevis_dataset_and_scored_perfect_by_its_own_masks(dataset, tmp_path):
    args = get_args_parser().parse_args(["--dataset_file", "mevis", "--mevis_path", str(dataset), "--num_frames", "2",
                                         "--max_size", "64"])
    training = build_dataset("mevis", "train", args)
    clip, target = training[0]
    assert clip.shape[:2] == (2, 3) and target["valid"].any() and target["labels"].tolist() == [0, 0]
    # the ground truth itself, written as predictions, scores J = F = 1 on every expression
    mask_dict = read_mask_dict(dataset / "valid_u" / "mask_dict.json")
    for video, entry in read_expressions(dataset / "valid_u" / "meta_expressions.json").items():
        for expression in entry.expressions:
            folder = tmp_path / "pred" / video / expression.exp_id
            folder.mkdir(parents=True)
            for index, frame in enumerate(entry.frames):
                union = np.zeros((SIZE["height"], SIZE["width"]), bool)
                for anno_id in expression.anno_ids:
                    if mask_dict[anno_id][index] is not None:
                        union |= _decode(mask_dict[anno_id][index])
                Image.fromarray(union.astype(np.uint8) * 255).save(folder / f"{frame}.png")
    scores = eval_mevis.main(["--mevis_path", str(dataset), "--split", "valid_u", "--pred_path", str(tmp_path / "pred"),
                              "--num_workers", "1"])
    assert scores == {"J": 1.0, "F": 1.0, "J&F": 1.0}


def test_the_text_encoder_sees_the_expressions_of_every_split(dataset):
    texts = collect_expressions(dataset)
    expected = [e.text for split in sorted(NUM_VIDEOS)
                for v in read_expressions(dataset / split / "meta_expressions.json").values() for e in v.expressions]
    assert texts == expected and any(t.endswith("shapes") or " two " in t for t in texts)
