"""``main.py`` end to end on a generated miniature dataset with a tiny text encoder (CPU).

Covers: a short training run and its outputs, resuming after a crash with bit-identical final
weights (in process, and after SIGKILL at a random step in a subprocess), a two-process gloo run
under torchrun, the ImageNet weights a ResNet starts training from, and the strict-load error of
a checkpoint loaded with other model flags.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

import main as main_module
from opts import get_args_parser
from tests.datasets.synthetic import write_dataset
from util.checkpoint import load_checkpoint
from util.dist import DistributedInfo

ROOT = Path(__file__).resolve().parents[1]
# 1 video x 2 expressions x anchors {0, 2} = 4 samples of 2 frames: 4 iterations per epoch.
# --backbone_from_scratch: random ResNet weights, so that the runs need no ImageNet file.
TINY_RUN = [
    "--dataset_file", "ytvos", "--device", "cpu", "--with_box_refine", "--binary", "--freeze_text_encoder",
    "--hidden_dim", "32", "--dim_feedforward", "32", "--enc_layers", "1", "--dec_layers", "2", "--num_queries", "2",
    "--mask_dim", "32", "--nheads", "4", "--num_frames", "2", "--max_size", "64", "--lr_backbone", "0",
    "--num_workers", "0", "--epochs", "2", "--lr_drop", "1", "--print_freq", "2", "--backbone_from_scratch",
]


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


# ----------------------------------------------------------------------------- the weights a ResNet starts from
# The file torchvision's ResNet18_Weights.IMAGENET1K_V1 is published as, in $TORCH_HOME/hub/checkpoints.
IMAGENET_RESNET18_FILE = "resnet18-f37072fd.pth"
BACKBONE_BODY_PREFIX = "backbone.0.body."


def afresh(argv: list[str]) -> list[str]:
    """``argv`` without --backbone_from_scratch: a ResNet then starts from ImageNet weights."""
    return [word for word in argv if word != "--backbone_from_scratch"]


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache under a temporary TORCH_HOME, on a machine without network access."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url, destination, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def cache_fake_imagenet_resnet18(torch_home: Path) -> dict[str, torch.Tensor]:
    """A seeded random ResNet-18 state dict in torchvision's format (classifier and BatchNorm statistics
    included), saved under the name torchvision expects in the cache."""
    import torchvision

    torch.manual_seed(1234)
    resnet = torchvision.models.resnet18(weights=None)
    for module in resnet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.running_mean)
            torch.nn.init.uniform_(module.running_var, 0.5, 2.0)
            torch.nn.init.normal_(module.weight)
    path = torch_home / "hub" / "checkpoints" / IMAGENET_RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(resnet.state_dict(), path)
    return resnet.state_dict()


def test_resnet_training_starts_from_the_cached_imagenet_weights(tmp_path, torch_home, data_root, text_encoder_dir):
    imagenet = cache_fake_imagenet_resnet18(torch_home)
    output_dir = tmp_path / "out"
    argv = run_args(data_root, text_encoder_dir, output_dir, "--backbone", "resnet18", "--epochs", "1")
    main_module.main(get_args_parser().parse_args(afresh(argv)))
    # --lr_backbone 0 and FrozenBatchNorm: the backbone is exactly the file after training
    backbone = {key[len(BACKBONE_BODY_PREFIX):]: value for key, value in final_weights(output_dir).items()
                if key.startswith(BACKBONE_BODY_PREFIX)}
    expected = {key: value for key, value in imagenet.items()
                if not key.startswith("fc.") and not key.endswith("num_batches_tracked")}
    assert backbone.keys() == expected.keys()
    assert all(torch.equal(backbone[key], value) for key, value in expected.items())
    assert IMAGENET_RESNET18_FILE in (output_dir / "train.log").read_text()


def test_offline_without_cached_imagenet_weights_is_a_clear_error(tmp_path, torch_home, data_root, text_encoder_dir):
    argv = run_args(data_root, text_encoder_dir, tmp_path / "out", "--backbone", "resnet18")
    with pytest.raises(FileNotFoundError) as error:
        main_module.main(get_args_parser().parse_args(afresh(argv)))
    message = str(error.value)
    assert f"{IMAGENET_RESNET18_FILE} (ResNet18_Weights.IMAGENET1K_V1" in message
    assert f"is not in {torch_home / 'hub' / 'checkpoints'}" in message and "no network in the tests" in message
    assert "--backbone_pretrained FILE" in message and "--backbone_from_scratch" in message
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


@pytest.mark.parametrize("flags, resumed", [
    (["--backbone_from_scratch"], False),
    (["--backbone_pretrained", "resnet50-0676ba61.pth"], False),
    (["--pretrained_weights", "r50_pretrained.pth"], False),
    (["--backbone", "swin_t_p4w7"], False),
    ([], True),
])
def test_imagenet_weights_only_when_a_resnet_trains_afresh(monkeypatch, flags, resumed):
    calls = []

    def weights_file(weights, *, download):
        calls.append((str(weights), download))
        return Path("cache") / IMAGENET_RESNET18_FILE

    monkeypatch.setattr(main_module, "torchvision_weights_file", weights_file)
    args = get_args_parser().parse_args(flags)
    resume_path = Path("out/checkpoint.pth") if resumed else None
    assert main_module.imagenet_start_weights(args, resume_path, DistributedInfo()) is None
    assert calls == []
    default = main_module.imagenet_start_weights(get_args_parser().parse_args([]), None, DistributedInfo())
    assert default == Path("cache") / IMAGENET_RESNET18_FILE
    # the first process of the machine may download, then every process reads the cache
    assert calls == [("ResNet50_Weights.IMAGENET1K_V1", True), ("ResNet50_Weights.IMAGENET1K_V1", False)]
    calls.clear()
    second_gpu = DistributedInfo(rank=3, world_size=4, local_rank=1)  # not distributed: its barrier is a no-op
    main_module.imagenet_start_weights(get_args_parser().parse_args([]), None, second_gpu)
    assert calls == [("ResNet50_Weights.IMAGENET1K_V1", False)]


def test_eval_never_looks_for_imagenet_weights(tmp_path, torch_home, monkeypatch, text_encoder_dir):
    evaluated = []
    monkeypatch.setattr(main_module, "evaluate_only", lambda args, *rest: evaluated.append(args.resume) or {})
    argv = afresh(run_args(tmp_path, text_encoder_dir, tmp_path / "out", "--dataset_file", "a2d", "--eval",
                           "--resume", "a2d_r50.pth", "--backbone", "resnet18"))
    assert main_module.main(get_args_parser().parse_args(argv)) == {}
    assert evaluated == ["a2d_r50.pth"]  # torch_home: no cached file, and a download would fail


def test_inference_takes_the_model_options_from_the_checkpoint_and_names_contradicting_flags(
        uninterrupted, data_root, text_encoder_dir, torch_home):
    """A main.py checkpoint loaded for inference without model flags, then with contradicting ones; inference never
    needs ImageNet weights (torch_home: none cached, and a download would fail)."""
    from models.predictor import load_predictor

    checkpoint = uninterrupted / "checkpoint.pth"
    model = load_predictor(get_args_parser().parse_args(["--device", "cpu"]), checkpoint, "cpu").model
    # TINY_RUN's options, not the parser's defaults (hidden 256, 4 decoder layers, 5 queries, no box refinement)
    assert (model.hidden_dim, model.transformer.decoder.num_layers, model.num_queries) == (32, 2, 2)
    assert model.with_box_refine and model.config["nheads"] == 4
    assert model.config["text_encoder"] == str(text_encoder_dir)
    other = get_args_parser().parse_args(run_args(data_root, text_encoder_dir, uninterrupted, "--hidden_dim", "64",
                                                  "--dec_layers", "6", "--num_queries", "1"))
    with pytest.raises(ValueError) as error:
        load_predictor(other, checkpoint, "cpu")
    assert str(error.value).startswith(
        f"the model in {checkpoint} was trained with --hidden_dim 32 --dec_layers 2 --num_queries 2, but the command "
        "line gives --hidden_dim 64 --dec_layers 6 --num_queries 1: these options shape the weights")

