"""tools/data/convert_davis_to_ytvos.py on a miniature DAVIS-2017 + text-annotation folder; tools/plot_log.py."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from datasets import build_dataset
from opts import get_args_parser
from tools.data.convert_davis_to_ytvos import convert
from tools.plot_log import plot


def write_davis(root):
    davis = root / "DAVIS"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("classic-car\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    (davis / "davis_semantics.json").write_text(json.dumps({"classic-car": {"1": "car", "2": "person"},
                                                            "bear": {"1": "bear"}}))
    for video, objects in (("classic-car", 2), ("bear", 1)):
        (davis / "JPEGImages" / "480p" / video).mkdir(parents=True)
        (davis / "Annotations_unsupervised" / "480p" / video).mkdir(parents=True)
        for f in range(3):
            Image.fromarray(np.full((32, 48, 3), 40 * f, np.uint8)).save(davis / "JPEGImages" / "480p" / video / f"{f:05d}.jpg")
            annotation = np.zeros((32, 48), np.uint8)
            for k in range(1, objects + 1):
                annotation[4 * k:4 * k + 10, 10 * k:10 * k + 12] = k
            Image.fromarray(annotation, mode="P").save(davis / "Annotations_unsupervised" / "480p" / video / f"{f:05d}.png")
    texts = root / "davis_text_annotations"
    texts.mkdir()
    lines = {  # the name fix clasic-car → classic-car; object ids out of order
        "Davis17_annot1.txt": ('clasic-car 2 "a man"', 'clasic-car 1 "a red car"', 'bear 1 "a bear"'),
        "Davis17_annot1_full_video.txt": ('clasic-car 1 "car driving"', 'clasic-car 2 "man walking"', 'bear 1 "bear walks"'),
        "Davis17_annot2.txt": ('clasic-car 1 "old car"', 'clasic-car 2 "person"', 'bear 1 "brown bear"'),
        "Davis17_annot2_full_video.txt": ('clasic-car 1 "the car"', 'clasic-car 2 "caf\xe9 man"', 'bear 1 "big bear"'),
    }
    for name, content in lines.items():
        encoding = "latin-1" if "annot2" in name else "utf-8"
        (texts / name).write_text("\n".join(content) + "\n", encoding=encoding)


def test_convert_davis_to_ytvos_layout_and_train(tmp_path):
    write_davis(tmp_path)
    convert(tmp_path)
    assert sorted(p.name for p in (tmp_path / "train" / "JPEGImages" / "classic-car").iterdir()) == \
        ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert (tmp_path / "valid" / "Annotations" / "bear" / "00002.png").is_file()
    assert not (tmp_path / "DAVIS" / "JPEGImages" / "480p" / "bear").exists()  # moved, as the original
    expressions = json.loads((tmp_path / "meta_expressions" / "train" / "meta_expressions.json").read_text())
    car = expressions["videos"]["classic-car"]
    assert car["frames"] == ["00000", "00001", "00002"]
    assert {k: (v["exp"], v["obj_id"]) for k, v in car["expressions"].items()} == {
        "0": ("a red car", "1"), "1": ("car driving", "1"), "2": ("old car", "1"), "3": ("the car", "1"),
        "4": ("a man", "2"), "5": ("man walking", "2"), "6": ("person", "2"), "7": ("caf\xe9 man", "2"),
    }
    meta = json.loads((tmp_path / "train" / "meta.json").read_text())
    assert meta["videos"]["classic-car"]["objects"]["2"]["category"] == "person"
    args = get_args_parser().parse_args(["--davis_path", str(tmp_path), "--num_frames", "2", "--max_size", "64"])
    dataset = build_dataset("davis", "train", args)
    assert len(dataset) == 16  # 8 expressions x anchors {0, 2}
    clip, target = dataset[0]
    assert clip.shape[:2] == (2, 3) and target["valid"].any()


def test_plot_log_writes_png_from_either_log(tmp_path):
    epoch_run, iteration_run = tmp_path / "epochs", tmp_path / "iterations"
    epoch_run.mkdir()
    iteration_run.mkdir()
    (epoch_run / "log.txt").write_text("\n".join(json.dumps({"train_loss": 10 - e, "train_lr": 1e-4, "epoch": e})
                                                 for e in range(3)))
    (iteration_run / "log_iter.txt").write_text("\n".join(
        json.dumps({"epoch": 0, "iteration": i, "iterations_per_epoch": 4, "loss": 5.0 / i, "lr": 1e-4})
        for i in range(1, 5)))
    out = plot([epoch_run, iteration_run], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
