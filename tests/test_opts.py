"""opts.py: every flag of the original with its default (table written from spec section 7)."""
from __future__ import annotations

import argparse
import logging

import pytest

from opts import get_args_parser, num_classes_for, validate_args
from tests.golden import load_case

# Spec section 7, flag by flag, plus the two new flags (--text_encoder, --unsafe_load).
# --masks is forced on by the original's entry points, so its default here is True.
SPEC_DEFAULTS = {
    # optimisation
    "lr": 1e-4,
    "lr_backbone": 5e-5,
    "lr_backbone_names": ["backbone.0"],
    "lr_text_encoder": 1e-5,
    "lr_text_encoder_names": ["text_encoder"],
    "lr_linear_proj_names": ["reference_points", "sampling_offsets"],
    "lr_linear_proj_mult": 1.0,
    "batch_size": 1,
    "weight_decay": 5e-4,
    "epochs": 10,
    "lr_drop": [6, 8],
    "clip_max_norm": 0.1,
    # model
    "pretrained_weights": None,
    "with_box_refine": False,
    "two_stage": False,
    "backbone": "resnet50",
    "backbone_pretrained": None,
    "use_checkpoint": False,
    "dilation": False,
    "position_embedding": "sine",
    "num_feature_levels": 4,
    "text_encoder": "roberta-base",
    # transformer
    "enc_layers": 4,
    "dec_layers": 4,
    "dim_feedforward": 2048,
    "hidden_dim": 256,
    "dropout": 0.1,
    "nheads": 8,
    "num_frames": 5,
    "num_queries": 5,
    "dec_n_points": 4,
    "enc_n_points": 4,
    "pre_norm": False,
    "freeze_text_encoder": False,
    # segmentation
    "masks": True,
    "mask_dim": 256,
    "controller_layers": 3,
    "dynamic_mask_channels": 8,
    "rel_coord": True,
    # loss / matcher
    "aux_loss": True,
    "set_cost_class": 2,
    "set_cost_bbox": 5,
    "set_cost_giou": 2,
    "set_cost_mask": 2,
    "set_cost_dice": 5,
    "mask_loss_coef": 2,
    "dice_loss_coef": 5,
    "cls_loss_coef": 2,
    "bbox_loss_coef": 5,
    "giou_loss_coef": 2,
    "eos_coef": 0.1,
    "focal_alpha": 0.25,
    # data
    "dataset_file": "ytvos",
    "coco_path": "data/coco",
    "ytvos_path": "data/ref-youtube-vos",
    "davis_path": "data/ref-davis",
    "a2d_path": "data/a2d_sentences",
    "jhmdb_path": "data/jhmdb_sentences",
    "max_skip": 3,
    "max_size": 640,
    "binary": False,
    "remove_difficult": False,
    # run
    "output_dir": "output",
    "device": "cuda",
    "seed": 42,
    "resume": "",
    "start_epoch": 0,
    "eval": False,
    "num_workers": 4,
    "unsafe_load": False,
    # test
    "threshold": 0.5,
    "ngpu": 8,
    "split": "valid",
    "visualize": False,
    # distributed
    "world_size": 1,
    "dist_url": "env://",
    "cache_mode": False,
}

NO_EFFECT = ("max_skip", "pre_norm", "remove_difficult", "eos_coef", "cache_mode")


def parse(*argv: str) -> argparse.Namespace:
    return get_args_parser().parse_args(list(argv))


def test_every_flag_and_default_matches_the_spec():
    # Flags new in this re-implementation (training, inference groups) are tested where they are used.
    args = vars(parse())
    assert set(SPEC_DEFAULTS) <= set(args), f"missing: {sorted(set(SPEC_DEFAULTS) - set(args))}"
    for name, expected in SPEC_DEFAULTS.items():
        assert args[name] == expected, name
        assert isinstance(args[name], bool) == isinstance(expected, bool), f"{name}: switch vs value"


def test_case_opts_of_the_golden_data_parse_to_the_same_values():
    # The reference cases store the original's namespace (with the YTVOS script flags).
    original = load_case("postprocess_r50.pt")["opts"]
    args = vars(parse("--with_box_refine", "--binary", "--freeze_text_encoder", "--device", "cpu",
                      "--num_frames", str(original["num_frames"])))
    assert set(original) <= set(args)
    assert {key: args[key] for key in original} == original


def test_types_and_nargs():
    args = parse("--lr_drop", "3", "5", "--lr_backbone_names", "a", "b", "--set_cost_class", "1.5",
                 "--num_queries", "7", "--backbone", "swin_l_p4w7")
    assert args.lr_drop == [3, 5] and args.lr_backbone_names == ["a", "b"]
    assert args.set_cost_class == 1.5 and args.num_queries == 7 and args.backbone == "swin_l_p4w7"


def test_negations_and_switches():
    args = parse("--no_aux_loss", "--no_rel_coord", "--masks", "--unsafe_load", "--text_encoder", "/models/roberta")
    assert args.aux_loss is False and args.rel_coord is False
    assert args.masks is True and args.unsafe_load is True and args.text_encoder == "/models/roberta"


@pytest.mark.parametrize(
    "dataset_file", ["ytvos", "davis", "ref_shapes", "a2d", "jhmdb", "refcoco", "refcoco+", "refcocog", "all", "joint"]
)
def test_dataset_choices(dataset_file):
    assert parse("--dataset_file", dataset_file).dataset_file == dataset_file


@pytest.mark.parametrize(("flag", "value"), [("--dataset_file", "coco"), ("--split", "val"),
                                             ("--position_embedding", "none")])
def test_choices_are_enforced(flag, value, capsys):
    with pytest.raises(SystemExit):
        parse(flag, value)
    assert "invalid choice" in capsys.readouterr().err


def test_help_and_parent_parser(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    help_text = capsys.readouterr().out
    assert "--text_encoder" in help_text and "optimisation" in help_text
    assert "has no effect" in help_text
    child = argparse.ArgumentParser(parents=[get_args_parser(add_help=False)])
    assert child.parse_args(["--lr", "2e-4"]).lr == 2e-4


def test_no_effect_flags_say_so():
    parser = get_args_parser()
    helps = {action.dest: action.help or "" for action in parser._actions}
    for name in NO_EFFECT:
        assert "(accepted for compatibility; has no effect)" in helps[name], name


def test_defaults_validate_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="opts"):
        validate_args(parse())
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--two_stage"], "--two_stage"),
        (["--position_embedding", "learned"], "--position_embedding learned"),
        (["--num_feature_levels", "3"], "--num_feature_levels 3"),
        (["--num_feature_levels", "5"], "--num_feature_levels 5"),
        (["--hidden_dim", "96", "--nheads", "5"], "--hidden_dim 96 is not divisible by --nheads 5"),
        (["--hidden_dim", "48", "--nheads", "8"], "--hidden_dim 48 is not divisible by 32"),
        (["--dynamic_mask_channels", "0"], "--dynamic_mask_channels"),
        (["--controller_layers", "1"], "--controller_layers"),
        (["--num_queries", "0"], "--num_queries"),
        (["--dec_layers", "1"], "--dec_layers must be at least 2"),
    ],
)
def test_validate_args_rejects(argv, message):
    with pytest.raises(ValueError, match=message):
        validate_args(parse(*argv))


def test_validate_args_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        validate_args(parse("--two_stage", "--controller_layers", "1"))
    assert "--two_stage" in str(info.value) and "--controller_layers" in str(info.value)


@pytest.mark.parametrize("argv", [["--max_skip", "5"], ["--pre_norm"], ["--remove_difficult"],
                                  ["--eos_coef", "0.2"], ["--cache_mode"]])
def test_no_effect_flags_warn(argv, caplog):
    with caplog.at_level(logging.WARNING, logger="opts"):
        validate_args(parse(*argv))
    assert f"{argv[0]} is accepted for compatibility" in caplog.text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], 65),
        (["--dataset_file", "davis"], 78),
        (["--dataset_file", "ref_shapes"], 5),
        (["--dataset_file", "ref_shapes", "--binary"], 1),
        (["--dataset_file", "a2d"], 1),
        (["--dataset_file", "jhmdb"], 1),
        (["--dataset_file", "refcoco"], 91),
        (["--dataset_file", "all"], 91),
        (["--dataset_file", "joint"], 91),
        (["--binary"], 1),
        (["--dataset_file", "davis", "--binary"], 1),
        (["--dataset_file", "refcocog", "--binary"], 1),
    ],
)
def test_num_classes_for(argv, expected):
    assert num_classes_for(parse(*argv)) == expected
