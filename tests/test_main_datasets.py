"""``main.py`` on the A2D-Sentences, JHMDB-Sentences and RefCOCO/+/g layouts and joint training (CPU, tiny
generated data): a short training run that evaluates after its epoch, ``--eval`` of its checkpoint, and
the files both write."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import main as main_module
from opts import get_args_parser
from tests.datasets.synthetic import write_dataset
from tests.datasets.synthetic_a2d import write_a2d, write_jhmdb
from tests.datasets.synthetic_refexp import write_coco
from tests.test_main import ROOT
from tools.data.prepare_a2d_jhmdb import prepare_a2d, prepare_jhmdb

TINY_MODEL = [
    "--device", "cpu", "--with_box_refine", "--freeze_text_encoder", "--hidden_dim", "32", "--dim_feedforward", "32",
    "--enc_layers", "1", "--dec_layers", "2", "--num_queries", "2", "--mask_dim", "32", "--nheads", "4",
    "--lr_backbone", "0", "--num_workers", "0", "--print_freq", "1", "--batch_size", "2", "--backbone_from_scratch",
]
REFEXP_NAMES = ("refcoco", "refcoco+", "refcocog")
A2D_METRICS = ("original mAP 0.5:0.95", "top1 mAP 0.5:0.95", "P@0.5", "P@0.9", "overall_iou", "mean_iou")


def run(output_dir: Path, text_encoder: Path, *flags: str) -> dict[str, float] | None:
    args = get_args_parser().parse_args([*TINY_MODEL, "--text_encoder", str(text_encoder), "--output_dir",
                                         str(output_dir), *flags])
    return main_module.main(args)


def epoch_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / main_module.EPOCH_LOG).read_text().splitlines()]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco")).root


def test_refcoco_pretraining_evaluates_each_dataset(tmp_path, coco_root, text_encoder_dir):
    out = tmp_path / "pretrain"
    assert run(out, text_encoder_dir, "--dataset_file", "all", "--binary", "--num_frames", "1", "--max_size", "64",
               "--coco_path", str(coco_root), "--epochs", "1") is None
    results = json.loads((out / "eval_epoch0000.json").read_text())
    for name in REFEXP_NAMES:
        for kind in ("bbox", "segm"):
            for metric in ("P@0.5", "P@0.9", "overall_iou", "mean_iou"):
                assert 0.0 <= results[f"{name} {kind} {metric}"] <= 1.0
    (line,) = epoch_log(out)
    assert line["epoch"] == 0 and math.isfinite(line["train_loss"])
    assert line["test_refcoco segm overall_iou"] == results["refcoco segm overall_iou"]

    # --eval of the trained checkpoint gives the same numbers and writes eval.json
    evaluated = run(tmp_path / "eval", text_encoder_dir, "--dataset_file", "all", "--binary", "--num_frames", "1",
                    "--coco_path", str(coco_root), "--eval", "--resume", str(out / "checkpoint.pth"))
    assert evaluated == results
    assert json.loads((tmp_path / "eval" / main_module.EVAL_FILE).read_text()) == results


def test_single_refexp_dataset_91_classes(tmp_path, coco_root, text_encoder_dir):
    out = tmp_path / "refcocog"
    run(out, text_encoder_dir, "--dataset_file", "refcocog", "--num_frames", "1", "--max_size", "64",
        "--coco_path", str(coco_root), "--epochs", "1")
    results = json.loads((out / "eval_epoch0000.json").read_text())
    assert sorted({key.split()[0] for key in results}) == ["refcocog"]


def test_joint_training(tmp_path, coco_root, text_encoder_dir):
    ytvos = write_dataset(tmp_path / "ytvos", videos=1, frames=4, height=40, width=56)
    out = tmp_path / "joint"
    run(out, text_encoder_dir, "--dataset_file", "joint", "--binary", "--num_frames", "2", "--max_size", "64",
        "--coco_path", str(coco_root), "--ytvos_path", str(ytvos), "--epochs", "1")
    (line,) = epoch_log(out)
    assert math.isfinite(line["train_loss"]) and not any(key.startswith("test_") for key in line)
    assert not list(out.glob("eval*.json"))


def test_a2d_training_then_jhmdb_evaluation(tmp_path, text_encoder_dir):
    a2d_root = write_a2d(tmp_path / "a2d_sentences")
    prepare_a2d(a2d_root)
    jhmdb_root = write_jhmdb(tmp_path / "jhmdb_sentences")
    prepare_jhmdb(jhmdb_root)
    out = tmp_path / "a2d"
    run(out, text_encoder_dir, "--dataset_file", "a2d", "--num_frames", "3", "--max_size", "64",
        "--a2d_path", str(a2d_root), "--epochs", "1")
    results = json.loads((out / "eval_epoch0000.json").read_text())
    for metric in A2D_METRICS:
        assert -1.0 <= results[metric] <= 1.0  # COCO reports -1 for an area range without ground truth
    assert 0.0 <= results["overall_iou"] <= 1.0
    (line,) = epoch_log(out)
    assert line["test_top1 mAP 0.5:0.95"] == results["top1 mAP 0.5:0.95"]

    # the A2D model evaluated on JHMDB-Sentences (no training set), as the paper
    jhmdb = run(tmp_path / "jhmdb", text_encoder_dir, "--dataset_file", "jhmdb", "--num_frames", "3",
                "--jhmdb_path", str(jhmdb_root), "--eval", "--resume", str(out / "checkpoint.pth"))
    assert set(A2D_METRICS) <= set(jhmdb)
    assert json.loads((tmp_path / "jhmdb" / main_module.EVAL_FILE).read_text()) == jhmdb
    # without the model flags: the checkpoint's options build the same model (the text encoder too)
    flag_free = get_args_parser().parse_args([
        "--device", "cpu", "--num_workers", "0", "--batch_size", "2", "--dataset_file", "jhmdb", "--num_frames", "3",
        "--jhmdb_path", str(jhmdb_root), "--eval", "--resume", str(out / "checkpoint.pth"),
        "--output_dir", str(tmp_path / "jhmdb_flag_free")])
    assert main_module.main(flag_free) == jhmdb


def test_eval_needs_weights_and_an_evaluated_dataset(tmp_path, text_encoder_dir):
    with pytest.raises(ValueError, match="--resume"):
        run(tmp_path, text_encoder_dir, "--dataset_file", "refcoco", "--eval")
    with pytest.raises(ValueError, match="--eval evaluates"):
        run(tmp_path, text_encoder_dir, "--dataset_file", "ytvos", "--eval")
    with pytest.raises(ValueError, match="no training set"):
        run(tmp_path, text_encoder_dir, "--dataset_file", "jhmdb")
    with pytest.raises(ValueError, match="joint needs --binary"):
        run(tmp_path, text_encoder_dir, "--dataset_file", "joint")


def torchrun(output_dir: Path, text_encoder: Path, *flags: str) -> None:
    """``main.py`` with the tiny model as two gloo processes of one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py",
               *TINY_MODEL, "--text_encoder", str(text_encoder), "--output_dir", str(output_dir), *flags]
    process = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr


@pytest.mark.slow
def test_two_process_evaluation_matches_one_process(tmp_path, coco_root, text_encoder_dir):
    """3 val images per dataset on 2 processes: rank 0 evaluates 2, rank 1 one; gathered, nothing counts twice.

    Trained on 2 processes with a BatchNorm backbone, whose running statistics each rank updates with its own
    batches: the evaluation after the epoch scores the saved weights (rank 0's statistics) on both ranks."""
    data = ["--dataset_file", "refcoco", "--binary", "--num_frames", "1", "--coco_path", str(coco_root)]
    torchrun(tmp_path / "trained", text_encoder_dir, *data, "--max_size", "64", "--epochs", "1")
    after_epoch = json.loads((tmp_path / "trained" / "eval_epoch0000.json").read_text())
    evaluation = [*data, "--eval", "--resume", str(tmp_path / "trained" / "checkpoint.pth")]
    one = run(tmp_path / "one", text_encoder_dir, *evaluation)
    torchrun(tmp_path / "two", text_encoder_dir, *evaluation)
    two = json.loads((tmp_path / "two" / main_module.EVAL_FILE).read_text())
    assert two.keys() == one.keys() == after_epoch.keys()
    assert all(abs(two[k] - one[k]) < 1e-6 for k in one), (one, two)
    assert all(abs(after_epoch[k] - one[k]) < 1e-6 for k in one), (one, after_epoch)
