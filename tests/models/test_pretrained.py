"""Trained models without flags: checkpoint → model folder → model, a fake Hugging Face cache offline, the
demo and the inference scripts without model flags, contradicting flags, stored text-encoder paths, bad input.

The reference outputs come from the tiny random model itself (tests/tiny_inference.py), built directly with
its flags, never through the loaders under test; outputs must be bit-identical (the same weights in the same
modules compute the same on one thread).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

import demo
import inference_ytvos
import models.predictor
from models import ReferFormer
from models.pretrained import (CONFIG_FILE, TEXT_ENCODER_DIR, WEIGHTS_FILE, load_trained_model, resolve_source,
                               save_pretrained)
from opts import STORED_MODEL_OPTIONS, get_args_parser
from tests.tiny_inference import (TEST_SHORT_SIDE, TINY_MODEL_FLAGS, TINY_MODEL_OPTIONS, build_random_tiny_model,
                                  make_ytvos, save_training_checkpoint, write_frame)
from util.checkpoint import (CheckpointMismatchError, DamagedCheckpointError, load_checkpoint, load_weights_file,
                             save_checkpoint, tied_key_groups)

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_KEYS = ("pred_logits", "pred_boxes", "pred_masks", "reference_points")
CAPTIONS = ["the dog on the left", "a red car"]
HUB_ID = "owner/referformer-tiny"
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def outputs(model: ReferFormer) -> list[dict[str, torch.Tensor]]:
    """The model's eval outputs on a fixed clip for each caption."""
    clip = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    target = [{"size": torch.tensor(clip.shape[-2:])}]
    with torch.no_grad():
        return [model.eval()([clip], [caption], target) for caption in CAPTIONS]


def assert_same_outputs(model: ReferFormer, reference: list[dict[str, torch.Tensor]]) -> None:
    for got, expected in zip(outputs(model), reference):
        for key in OUTPUT_KEYS:
            assert torch.equal(got[key], expected[key]), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A main.py-style checkpoint of the tiny model (its training options under "args"), the bare state dict,
    the text encoder directory, and the reference outputs."""
    text_dir, bare, checkpoint = save_training_checkpoint(tmp_path_factory.mktemp("trained"))
    # one intra-op thread, as every test (conftest): module fixtures run before its per-test fixture
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    reference = outputs(build_random_tiny_model(seed=0))
    torch.set_num_threads(previous)
    return SimpleNamespace(text_dir=text_dir, bare=bare, checkpoint=checkpoint, reference=reference)


@pytest.fixture(scope="module")
def folder(trained, tmp_path_factory):
    """The model folder of the checkpoint, written by save_pretrained."""
    return save_pretrained(ReferFormer.from_pretrained(trained.checkpoint), tmp_path_factory.mktemp("folder") / "tiny")


def fake_hub_cache(cache: Path, folder: Path) -> Path:
    """The Hugging Face cache layout of ``HUB_ID`` holding ``folder`` at ``HUB_REVISION`` (what a download leaves)."""
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / HUB_REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_REVISION)
    return cache


# ----------------------------------------------------------------------------- round trips
def test_checkpoint_and_folder_give_the_outputs_of_the_trained_model(trained, folder):
    assert_same_outputs(ReferFormer.from_pretrained(trained.checkpoint), trained.reference)
    from_folder = ReferFormer.from_pretrained(folder)
    assert not from_folder.training
    assert_same_outputs(from_folder, trained.reference)
    # a bare state dict: the options are read off its keys and shapes; only the text encoder must be named
    assert_same_outputs(ReferFormer.from_pretrained(trained.bare, text_encoder=str(trained.text_dir)),
                        trained.reference)
    # the weights file alone gives back every name, tied ones as one tensor
    weights = load_weights_file(folder / WEIGHTS_FILE)
    assert weights.keys() == build_random_tiny_model(seed=0).state_dict().keys()
    assert weights["transformer.decoder.bbox_embed.0.layers.0.weight"] is weights["bbox_embed.0.layers.0.weight"]


def test_the_folder_holds_the_model_options_each_tensor_once_and_the_text_encoder_without_weights(folder):
    config = json.loads((folder / CONFIG_FILE).read_text())
    expected = {**{dest: get_args_parser().get_default(dest) for dest in STORED_MODEL_OPTIONS}, **TINY_MODEL_OPTIONS,
                "text_encoder": TEXT_ENCODER_DIR}
    del expected["freeze_text_encoder"]  # a training option
    assert config == {"model_type": "referformer", "format_version": 1, "num_classes": 1, **expected}
    with safe_open(folder / WEIGHTS_FILE, framework="pt") as weights:
        keys = set(weights.keys())
        tied = json.loads(weights.metadata()["tied_keys"])
    model = build_random_tiny_model(seed=0)
    for group in tied_key_groups(model):
        stored = sorted(group)[0]
        assert [key for key in group if key in keys] == [stored]
        assert all(tied[alias] == stored for alias in group if alias != stored)
    assert any(key.startswith("bbox_embed.") for key in keys)
    assert not any(key.startswith("transformer.decoder.bbox_embed.") for key in keys)
    assert keys | set(tied) == set(model.state_dict())
    text_files = {path.name for path in (folder / TEXT_ENCODER_DIR).iterdir()}
    assert {"config.json", "tokenizer.json"} <= text_files
    assert not text_files & {"model.safetensors", "pytorch_model.bin"}
    card = (folder / "README.md").read_text()
    assert "| hidden_dim | 64 |" in card and f'ReferFormer.from_pretrained("{folder}")' in card


def test_box_refinement_heads_are_tied_again_and_train_together(folder):
    model = ReferFormer.from_pretrained(folder)
    head, alias = model.bbox_embed[1].layers[0], model.transformer.decoder.bbox_embed[1].layers[0]
    assert head.weight is alias.weight and head.weight.data_ptr() == alias.weight.data_ptr()
    before = head.weight.detach().clone()
    optimizer = torch.optim.SGD([head.weight], lr=0.1)
    head(torch.ones(1, head.in_features)).sum().backward()
    optimizer.step()
    state = model.state_dict()
    updated = state["bbox_embed.1.layers.0.weight"]
    assert not torch.equal(updated, before)
    assert torch.equal(state["transformer.decoder.bbox_embed.1.layers.0.weight"], updated)


# ----------------------------------------------------------------------------- the Hugging Face Hub, offline
def test_a_hub_id_loads_from_the_local_cache_without_network(folder, tmp_path, trained):
    cache = fake_hub_cache(tmp_path / "hub", folder)
    assert_same_outputs(ReferFormer.from_pretrained(HUB_ID, cache_dir=cache, local_files_only=True), trained.reference)
    with pytest.raises(FileNotFoundError, match=r"owner/missing is neither a local file or folder nor a model in the "
                                                r"local Hugging Face cache"):
        resolve_source("owner/missing", cache_dir=cache, local_files_only=True)


def frames_folder(root: Path) -> Path:
    for t in range(3):
        write_frame(root / f"{t:05d}.jpg", 64, 48, seed=t)
    return root


def demo_masks(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((output / demo.MASKS_DIR).glob("*.png"))}


def test_the_demo_runs_from_a_hub_id_with_hf_hub_offline_and_from_a_checkpoint_without_model_flags(
        folder, trained, tmp_path):
    frames = frames_folder(tmp_path / "frames")
    common = ["--video", str(frames), "--text", CAPTIONS[0], "--short_side", str(TEST_SHORT_SIDE), "--device", "cpu"]
    demo.main([*common, "--checkpoint", str(trained.checkpoint), "--output_dir", str(tmp_path / "from_checkpoint")])
    home = tmp_path / "hf_home"
    fake_hub_cache(home / "hub", folder)
    environment = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("HF_HUB_CACHE", None)
    run = subprocess.run([sys.executable, str(ROOT / "demo.py"), *common, "--checkpoint", HUB_ID, "--output_dir",
                          str(tmp_path / "from_hub")], cwd=tmp_path, env=environment, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    from_checkpoint, from_hub = demo_masks(tmp_path / "from_checkpoint"), demo_masks(tmp_path / "from_hub")
    assert len(from_hub) == 3 and from_hub == from_checkpoint


def test_inference_needs_no_model_flags(folder, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)
    data = make_ytvos(tmp_path / "data")
    common = ["--ytvos_path", str(data), "--device", "cpu", "--ngpu", "1"]
    with_flags = inference_ytvos.main([*TINY_MODEL_FLAGS, "--text_encoder", str(trained.text_dir), *common,
                                       "--resume", str(trained.bare), "--output_dir", str(tmp_path / "flags")])
    without = inference_ytvos.main([*common, "--resume", str(folder), "--output_dir", str(tmp_path / "folder")])
    assert zip_contents(with_flags) and zip_contents(without) == zip_contents(with_flags)


def zip_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# ----------------------------------------------------------------------------- flags against the checkpoint
def test_a_flag_that_changes_a_shape_is_refused_and_one_that_agrees_is_accepted(trained):
    parser = demo.get_parser()
    demo_inputs = ["--video", "v", "--text", "t", "--checkpoint", str(trained.checkpoint)]
    with pytest.raises(ValueError, match=r"was trained with --hidden_dim 64 --num_queries 3, but the command line "
                                         r"gives --hidden_dim 32 --num_queries 5"):
        load_trained_model(parser.parse_args([*demo_inputs, "--hidden_dim=32", "--num_queries", "5"]),
                           trained.checkpoint)
    model, options = load_trained_model(parser.parse_args([*demo_inputs, "--hidden_dim", "64"]), trained.checkpoint)
    assert options.hidden_dim == 64 and options.dec_layers == 2 and model.num_queries == 3


def test_a_flag_that_changes_only_the_computation_is_a_warning(trained, caplog):
    args = demo.get_parser().parse_args(["--video", "v", "--text", "t", "--checkpoint", "c", "--dilation"])
    with caplog.at_level(logging.WARNING):
        _, options = load_trained_model(args, trained.checkpoint)
    assert options.dilation is True
    assert f"{trained.checkpoint} was trained with (no --dilation); this run uses --dilation" in caplog.text


# ----------------------------------------------------------------------------- the stored text encoder
def relative_text_encoder_checkpoint(root: Path, trained, stored: str) -> Path:
    """``root/runs/a/checkpoint.pth`` trained with ``--text_encoder stored``; the tiny text encoder in
    ``root/assets``."""
    shutil.copytree(trained.text_dir, root / "assets" / "tiny-roberta")
    args = get_args_parser().parse_args([*TINY_MODEL_FLAGS, "--text_encoder", stored])
    checkpoint = root / "runs" / "a" / "checkpoint.pth"
    save_checkpoint({"model": load_checkpoint(trained.bare)["model"], "args": args}, checkpoint)
    return checkpoint


def test_a_relative_text_encoder_is_found_from_the_folders_above_the_checkpoint(trained, tmp_path, monkeypatch):
    checkpoint = relative_text_encoder_checkpoint(tmp_path / "project", trained, "assets/tiny-roberta")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the training ran from tmp_path/project
    assert_same_outputs(ReferFormer.from_pretrained(checkpoint), trained.reference)


def test_a_stored_text_encoder_that_is_nowhere_is_reported(trained, tmp_path):
    checkpoint = relative_text_encoder_checkpoint(tmp_path, trained, "missing/roberta")
    with pytest.raises(FileNotFoundError) as error:
        ReferFormer.from_pretrained(checkpoint)
    assert str(error.value).startswith(
        f"{checkpoint} was trained with --text_encoder missing/roberta, which is neither a directory from the working "
        "directory or from a folder above the checkpoint nor a model in the local Hugging Face cache. Pass "
        "--text_encoder DIR")
    # the flag replaces the stored path
    assert_same_outputs(ReferFormer.from_pretrained(checkpoint, text_encoder=str(trained.text_dir)), trained.reference)


# ----------------------------------------------------------------------------- bad input
def copy_folder(folder: Path, destination: Path) -> Path:
    return Path(shutil.copytree(folder, destination))


def edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, **changes}))
    return folder / CONFIG_FILE


def test_a_folder_without_config_is_named(folder, tmp_path):
    broken = copy_folder(folder, tmp_path / "no_config")
    (broken / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{broken} is not a model folder: it has no config.json"):
        ReferFormer.from_pretrained(broken)


@pytest.mark.parametrize(("changes", "message"), [
    ({"backbone": "resnet_9000"}, r"names an unknown backbone 'resnet_9000'"),
    ({"hidden_dim": "64"}, r"values of the wrong type: hidden_dim = '64' \(expected int\)"),
    ({"num_classes": 65}, r"num_classes is 65, but binary = True and dataset_file = 'ytvos' give 1 classes"),
    ({"model_type": "detr"}, r"is not a ReferFormer config: its model_type is 'detr'"),
    ({"lr": 0.1}, r"unknown entries: lr"),
])
def test_a_bad_config_is_named_with_the_problem(folder, tmp_path, changes, message):
    config = edit_config(copy_folder(folder, tmp_path / "bad"), **changes)
    with pytest.raises(ValueError, match=rf"^{config}.*{message}"):
        ReferFormer.from_pretrained(config.parent)


def test_weights_that_do_not_fit_the_config_name_the_file_and_the_keys(folder, tmp_path):
    broken = copy_folder(folder, tmp_path / "misfit")
    edit_config(broken, mask_dim=32)
    with pytest.raises(CheckpointMismatchError) as error:
        ReferFormer.from_pretrained(broken)
    message = str(error.value)
    assert message.startswith(f"checkpoint {broken / WEIGHTS_FILE} does not match the model")
    assert "pixel_decoder.mask_features.weight: checkpoint [64, 64, 3, 3] vs model [32, 64, 3, 3]" in message
    assert message.endswith(f"{broken / CONFIG_FILE} does not describe these weights: they fit --mask_dim 64, where "
                            "the model was built with --mask_dim 32. config.json and model.safetensors must come from "
                            "one export.")


def test_a_truncated_checkpoint_given_to_the_demo_is_named(trained, tmp_path):
    data = trained.checkpoint.read_bytes()
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedCheckpointError) as error:
        demo.main(["--video", str(frames_folder(tmp_path / "frames")), "--text", "a dog", "--checkpoint", str(damaged),
                   "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    assert str(error.value).startswith(
        f"checkpoint {damaged} ({len(data) // 2} bytes) is truncated or corrupted: it is a zip-format checkpoint "
        "without its closing index")


def test_a_truncated_weights_file_is_named(folder, tmp_path):
    broken = copy_folder(folder, tmp_path / "truncated")
    weights = broken / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DamagedCheckpointError, match=rf"^weights file {weights} \(1000 bytes\) is truncated"):
        ReferFormer.from_pretrained(broken)


def test_a_missing_source_that_is_no_hub_id_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth does not exist: pass a checkpoint file"):
        resolve_source(tmp_path / "nowhere.pth")


def test_from_pretrained_refuses_unknown_option_names(folder):
    with pytest.raises(TypeError, match=r"unknown options \['hidden_size'\]"):
        ReferFormer.from_pretrained(folder, hidden_size=64)


def test_a_model_built_without_build_model_cannot_be_saved(tmp_path):
    model = build_random_tiny_model(seed=0)
    del model.config
    with pytest.raises(ValueError, match=r"records no options"):
        model.save_pretrained(tmp_path / "x")


def test_original_namespace_without_this_code_bases_options_loads(trained, tmp_path):
    """The original's args lack --text_encoder and --backbone_from_scratch: their defaults apply, and a given
    --text_encoder supplies the text encoder."""
    original = argparse.Namespace(**{key: value for key, value in vars(get_args_parser().parse_args(
        TINY_MODEL_FLAGS)).items() if key not in ("text_encoder", "backbone_from_scratch", "given_options")})
    checkpoint = tmp_path / "original.pth"
    torch.save({"model": load_checkpoint(trained.bare)["model"], "args": original, "epoch": 5}, checkpoint,
               _use_new_zipfile_serialization=False)
    assert_same_outputs(ReferFormer.from_pretrained(checkpoint, text_encoder=str(trained.text_dir)),
                        trained.reference)
