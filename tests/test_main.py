"""``main.py`` end to end on a generated miniature dataset with a tiny text encoder (CPU).

Covers: a short training run and its outputs, resuming after a crash with bit-identical final
weights (in process, and after SIGKILL at a random step in a subprocess), and a two-process
gloo run under torchrun.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as main_module
from opts import get_args_parser
from tests.datasets.synthetic import write_dataset
from tests.golden import TOKENIZER_DIR, load_case
from util.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# 1 video x 2 expressions x anchors {0, 2} = 4 samples of 2 frames: 4 iterations per epoch.
TINY_RUN = [
    "--dataset_file", "ytvos", "--device", "cpu", "--with_box_refine", "--binary", "--freeze_text_encoder",
    "--hidden_dim", "32", "--dim_feedforward", "32", "--enc_layers", "1", "--dec_layers", "2", "--num_queries", "2",
    "--mask_dim", "32", "--nheads", "4", "--num_frames", "2", "--max_size", "64", "--lr_backbone", "0",
    "--num_workers", "0", "--epochs", "2", "--lr_drop", "1", "--print_freq", "2",
]


@pytest.fixture(scope="module")
def text_encoder_dir(tmp_path_factory):
    """A one-layer RoBERTa (hidden 768, as the resizer needs) and the golden tokenizer, saved with save_pretrained."""
    from models.text_encoder import load_tokenizer, text_encoder_from_config

    directory = tmp_path_factory.mktemp("text_encoder")
    torch.manual_seed(0)
    text_encoder_from_config(load_case("model_eval_r50.pt")["text_encoder_config"]).save_pretrained(directory)
    load_tokenizer(str(TOKENIZER_DIR)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ytvos", videos=1, frames=4, height=40, width=56)


def run_args(data_root, text_encoder_dir, output_dir, *extra):
    return [*TINY_RUN, "--ytvos_path", str(data_root), "--text_encoder", str(text_encoder_dir),
            "--output_dir", str(output_dir), *extra]


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(output_dir) / "checkpoint.pth")["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root, text_encoder_dir):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    # CPU results depend on the intra-op thread count; every run here uses one thread (module-scoped
    # fixtures run before conftest's per-test one-thread fixture, so set it here too).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    main_module.main(get_args_parser().parse_args(run_args(data_root, text_encoder_dir, output_dir,
                                                           "--save_every_iters", "1")))
    torch.set_num_threads(previous)
    return output_dir


def test_training_run_writes_checkpoints_and_logs(uninterrupted):
    import json

    files = {p.name for p in uninterrupted.iterdir()}
    assert {"checkpoint.pth", "checkpoint0000.pth", "checkpoint0001.pth", "log.txt", "log_iter.txt", "train.log",
            "args.json"} <= files
    assert not [name for name in files if name.endswith(".tmp")]
    lines = [json.loads(line) for line in (uninterrupted / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    assert {"train_loss", "train_loss_ce", "train_loss_mask_unscaled", "train_lr", "train_grad_norm", "n_parameters"} <= lines[0].keys()
    assert lines[0]["train_lr"] == pytest.approx(1e-4) and lines[1]["train_lr"] == pytest.approx(1e-5)
    checkpoint = load_checkpoint(uninterrupted / "checkpoint.pth")
    assert checkpoint["epoch"] == 1 and "iteration" not in checkpoint
    assert [len(g["params"]) > 0 for g in checkpoint["optimizer"]["param_groups"]] == [True, False, False, True]
    assert checkpoint["lr_scheduler"]["last_epoch"] == 2 and checkpoint["world_size"] == 1
    iteration_lines = (uninterrupted / "log_iter.txt").read_text().splitlines()
    assert len(iteration_lines) == 4  # every 2 of 4 iterations, 2 epochs


@pytest.mark.parametrize("crash_after_saves", [3, 5])
def test_resume_after_crash_gives_identical_weights(tmp_path, data_root, text_encoder_dir, uninterrupted,
                                                    monkeypatch, crash_after_saves):
    """Crash right after the k-th file write: k=3 is the mid-epoch save after iteration 3 of epoch 0,
    k=5 the end-of-epoch-0 pair (checkpoint.pth, checkpoint0000.pth); then --resume auto."""
    saves = []
    original_save = main_module.save_checkpoint

    def save_then_crash(obj, path):
        original_save(obj, path)
        saves.append(path)
        if len(saves) == crash_after_saves:
            raise _Crash

    args = run_args(data_root, text_encoder_dir, tmp_path, "--save_every_iters", "1", "--resume", "auto")
    monkeypatch.setattr(main_module, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        main_module.main(get_args_parser().parse_args(args))
    monkeypatch.setattr(main_module, "save_checkpoint", original_save)
    main_module.main(get_args_parser().parse_args(args))
    assert_identical(final_weights(tmp_path), final_weights(uninterrupted))


def _run(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_auto_is_bit_identical(tmp_path, data_root, text_encoder_dir, uninterrupted):
    rng = random.Random()
    kill_after = rng.randint(1, 6)  # checkpoints written before the kill (8 are written in total)
    delay = rng.uniform(0.0, 0.5)  # then the kill lands anywhere in the following work
    args = [sys.executable, "main.py", *run_args(data_root, text_encoder_dir, tmp_path, "--save_every_iters", "1",
                                                 "--resume", "auto")]
    process = _run(args)
    log = tmp_path / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and log.read_text().count(" saved checkpoint") >= kill_after:
            break
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resumed = _run(args)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert_identical(final_weights(tmp_path), final_weights(uninterrupted))
    print(f"killed after {kill_after} saves + {delay:.2f}s; resumed weights are bit-identical")


@pytest.mark.slow
def test_two_process_gloo_training_with_torchrun(tmp_path, data_root, text_encoder_dir):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [*torchrun, "main.py", *run_args(data_root, text_encoder_dir, tmp_path, "--epochs", "1",
                                            "--save_every_iters", "1")]
    process = _run(args)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pth")
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])  # seed + rank
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 1
    assert (tmp_path / "train.log").read_text().count("iterations per epoch") == 1  # rank 0 only writes
