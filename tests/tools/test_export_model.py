"""tools/export_model.py: a main.py checkpoint, an original-layout checkpoint and a bare state dict become
model folders that load without flags; the model card; referencing the text encoder by name."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from models import ReferFormer
from models.pretrained import CONFIG_FILE, TEXT_ENCODER_DIR, read_trained_weights
from opts import get_args_parser
from tests.tiny_inference import TINY_MODEL_FLAGS, build_random_tiny_model, save_training_checkpoint
from tools import export_model
from util.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    text_dir, bare, checkpoint = save_training_checkpoint(tmp_path_factory.mktemp("trained"), "--lr", "3e-4",
                                                          "--num_frames", "3")
    return text_dir, bare, checkpoint


def same_weights(model: ReferFormer) -> bool:
    reference = build_random_tiny_model(seed=0).state_dict()
    state = model.state_dict()
    return state.keys() == reference.keys() and all(torch.equal(state[key], reference[key]) for key in reference)


def test_a_training_checkpoint_becomes_a_folder_with_its_scores_and_training_facts(trained, tmp_path):
    _, _, checkpoint = trained
    (checkpoint.parent / "eval.json").write_text(json.dumps({"J&F": 61.1, "J": 55.9, "note": "text is skipped"}))
    folder = export_model.main([str(checkpoint), str(tmp_path / "out"), "--repo_id", "owner/tiny"])
    (checkpoint.parent / "eval.json").unlink()
    assert same_weights(ReferFormer.from_pretrained(folder))
    card = (folder / "README.md").read_text()
    for line in ("- data: Ref-YouTube-VOS", "- exported from: `checkpoint.pth`", "- epochs: 1 of 10",
                 "- frames per clip: 3", "- learning rate: 0.0003", "| J&F | 61.1 |", "| J | 55.9 |",
                 "Source: eval.json.", 'model = ReferFormer.from_pretrained("owner/tiny")',
                 "python demo.py --video VIDEO --text \"the person riding a bike\" --checkpoint owner/tiny"):
        assert line in card, line
    assert "note" not in card
    # the config holds the model options, nothing of the training run
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert not {"lr", "epochs", "num_frames", "output_dir", "freeze_text_encoder", "msda_impl"} & set(config)


def test_given_scores_replace_those_of_the_run_and_bad_ones_are_refused(trained, tmp_path):
    _, _, checkpoint = trained
    (checkpoint.parent / "log.txt").write_text(json.dumps({"epoch": 0, "train_loss": 1.0, "test_mAP": 0.4}) + "\n"
                                               + json.dumps({"epoch": 1, "train_loss": 0.5}) + "\n")
    card = (export_model.main([str(checkpoint), str(tmp_path / "logged")]) / "README.md").read_text()
    assert "| mAP | 0.4 |" in card and "Source: log.txt, epoch 0." in card
    given = export_model.main([str(checkpoint), str(tmp_path / "given"), "--score", "J&F=61.1"])
    card = (given / "README.md").read_text()
    (checkpoint.parent / "log.txt").unlink()
    assert "| J&F | 61.1 |" in card and "mAP" not in card and "Source: given when exporting." in card
    with pytest.raises(ValueError, match=r"--score 'J&F': expected NAME=NUMBER"):
        export_model.main([str(checkpoint), str(tmp_path / "bad"), "--score", "J&F"])


def test_an_original_checkpoint_becomes_a_self_contained_folder(trained, tmp_path):
    """The original's layout: legacy serialisation, its argparse Namespace (without --text_encoder, which the
    export is given once)."""
    text_dir, bare, _ = trained
    original_args = {key: value for key, value in vars(get_args_parser().parse_args(TINY_MODEL_FLAGS)).items()
                     if key not in ("text_encoder", "backbone_from_scratch", "given_options", "msda_impl")}
    checkpoint = tmp_path / "ytvos_tiny.pth"
    torch.save({"model": load_checkpoint(bare)["model"], "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {"last_epoch": 1}, "epoch": 5, "args": argparse.Namespace(**original_args)},
               checkpoint, _use_new_zipfile_serialization=False)
    folder = export_model.main([str(checkpoint), str(tmp_path / "out"), "--text_encoder", str(text_dir)])
    assert (folder / TEXT_ENCODER_DIR / "tokenizer.json").is_file()
    assert same_weights(ReferFormer.from_pretrained(folder))


def test_a_bare_state_dict_exports_with_its_options_read_off_the_keys(trained, tmp_path):
    text_dir, bare, _ = trained
    folder = export_model.main([str(bare), str(tmp_path / "out"), "--text_encoder", str(text_dir)])
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert (config["hidden_dim"], config["num_queries"], config["with_box_refine"]) == (64, 3, True)
    assert same_weights(ReferFormer.from_pretrained(folder))


def test_the_text_encoder_can_be_referenced_by_name(trained, tmp_path):
    text_dir, _, checkpoint = trained
    folder = export_model.main([str(checkpoint), str(tmp_path / "out"), "--text_encoder_name", "roberta-base"])
    assert json.loads((folder / CONFIG_FILE).read_text())["text_encoder"] == "roberta-base"
    assert not (folder / TEXT_ENCODER_DIR).exists()
    assert "`roberta-base`: its config and tokenizer come from the local Hugging Face cache" in (
        folder / "README.md").read_text()
    assert read_trained_weights(folder).options["text_encoder"] == "roberta-base"
    # roberta-base is not in this machine's cache: the error names the config, and the flag replaces the name
    with pytest.raises(FileNotFoundError, match=rf"{folder / CONFIG_FILE} names the text encoder roberta-base"):
        ReferFormer.from_pretrained(folder)
    assert same_weights(ReferFormer.from_pretrained(folder, text_encoder=str(text_dir)))
