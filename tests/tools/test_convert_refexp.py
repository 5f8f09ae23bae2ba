"""tools/data/convert_refexp_to_coco.py on a miniature COCO + REFER layout."""
from __future__ import annotations

import json
import pickle

import pytest

from tests.datasets.synthetic_refexp import CAPTIONS, DOG, PERSON, annotation_id, make_refs, write_coco
from tools.data.convert_refexp_to_coco import convert, main


@pytest.fixture()
def layout(tmp_path):
    return write_coco(tmp_path / "coco")


def read(root, name, split):
    return json.loads((root / name / f"instances_{name}_{split}.json").read_text())


def test_one_image_per_sentence_with_running_ids(layout):
    train = read(layout.root, "refcoco", "train")
    # refs in file order: image 1's left object (2 sentences), its right object (1), image 2's crowd region (1)
    assert [image["id"] for image in train["images"]] == [1, 2, 3, 4]
    assert [image["caption"] for image in train["images"]] == [*CAPTIONS["left"], *CAPTIONS["right"], "the crowd"]
    assert [image["original_id"] for image in train["images"]] == [1, 1, 1, 2]
    assert train["images"][0] == {"file_name": "COCO_train2014_000000000001.jpg", "height": 64, "width": 80,
                                  "original_id": 1, "id": 1, "caption": CAPTIONS["left"][0],
                                  "dataset_name": "refcoco"}
    assert [a["image_id"] for a in train["annotations"]] == [a["id"] for a in train["annotations"]] == [1, 2, 3, 4]
    assert [a["original_id"] for a in train["annotations"]] == [annotation_id(1, "left")] * 2 + [
        annotation_id(1, "right"), annotation_id(2, "crowd")]
    left, right, crowd = train["annotations"][0], train["annotations"][2], train["annotations"][3]
    assert left["bbox"] == [8, 10, 24, 28] and left["category_id"] == PERSON and left["iscrowd"] == 0
    assert isinstance(left["segmentation"], list) and isinstance(right["segmentation"], dict)
    assert right["category_id"] == DOG and crowd["iscrowd"] == 1 and left["area"] == 24 * 28
    assert set(left) == {"segmentation", "area", "iscrowd", "bbox", "category_id", "image_id", "id", "original_id"}
    assert [c["id"] for c in train["categories"]] == [PERSON, DOG]


def test_splits_per_dataset(layout):
    for name, splits in (("refcoco", ("val", "testA", "testB")), ("refcoco+", ("val", "testA", "testB")),
                         ("refcocog", ("val", "test"))):
        for split in splits:
            data = read(layout.root, name, split)
            assert [image["id"] for image in data["images"]] == [1, 2]  # numbering restarts per split
            assert {image["dataset_name"] for image in data["images"]} == {name}
            assert [image["original_id"] for image in data["images"]] == [3, 3]
    assert not (layout.root / "refcocog" / "instances_refcocog_testA.json").exists()
    assert not list(layout.root.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_python2_pickle_and_cli(layout):
    refs = make_refs("refcoco")
    refs[0]["sentences"][0]["sent"] = "café"
    data = pickle.dumps(refs, protocol=2)
    # a Python-2 str: SHORT_BINSTRING of latin-1 bytes instead of BINUNICODE of utf-8
    utf8 = "café".encode()
    data = data.replace(b"X" + len(utf8).to_bytes(4, "little") + utf8, b"U" + bytes([4]) + "café".encode("latin-1"))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    (layout.root / "refcoco" / "refs(unc).p").write_bytes(data)
    main(["--coco_path", str(layout.root), "--datasets", "refcoco"])
    assert read(layout.root, "refcoco", "train")["images"][0]["caption"] == "café"


def test_errors_name_the_file_and_record(layout):
    root = layout.root
    (root / "refcoco+" / "refs(unc).p").unlink()
    with pytest.raises(FileNotFoundError, match=r"refcoco\+/refs\(unc\)\.p"):
        convert(root, ("refcoco+",))
    refs = make_refs("refcoco")
    refs[1]["ann_id"] = 999
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: ref 1: annotation 999 is not in .*instances\.json"):
        convert(root, ("refcoco",))
    refs = make_refs("refcoco")
    refs[2]["image_id"] = 77
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ValueError, match=r"ref 2: image 77 is not in .*instances\.json"):
        convert(root, ("refcoco",))
    refs = make_refs("refcoco")
    del refs[0]["sentences"]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: ref record 0 lacks \['sentences'\]"):
        convert(root, ("refcoco",))
    instances = json.loads((root / "refcocog" / "instances.json").read_text())
    del instances["annotations"][1]["segmentation"]
    (root / "refcocog" / "instances.json").write_text(json.dumps(instances))
    with pytest.raises(ValueError, match=r"refcocog/instances\.json: annotations record 1 lacks \['segmentation'\]"):
        convert(root, ("refcocog",))
