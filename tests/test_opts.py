"""opts.py: every flag of the original with its default (table written from the original's flag list)."""
from __future__ import annotations

import argparse
import logging

import pytest

from opts import (class_count_options, describe_model_option_differences, get_args_parser, inference_parser,
                  merge_model_options, num_classes_for, validate_args)
from tests.golden import load_case

# The original's flags, one by one, plus the two new flags (--text_encoder, --unsafe_load).
# --masks is forced on by the original's entry points, so its default here is True.
ORIGINAL_DEFAULTS = {
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
    assert set(ORIGINAL_DEFAULTS) <= set(args), f"missing: {sorted(set(ORIGINAL_DEFAULTS) - set(args))}"
    for name, expected in ORIGINAL_DEFAULTS.items():
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


# ----------------------------------------------------------------------------- entry points' usage and help
def entry_point_parsers() -> dict[str, argparse.ArgumentParser]:
    import demo
    import inference_davis
    import inference_ytvos

    return {"main.py": get_args_parser(), "inference_ytvos.py": inference_ytvos.get_parser(),
            "inference_davis.py": inference_davis.get_parser(), "demo.py": demo.get_parser()}


# Inference commands of the original's documentation and launch scripts (the launchers pass every extra
# training flag on to inference too).
ORIGINAL_INFERENCE_ARGS = [
    "--with_box_refine", "--binary", "--freeze_text_encoder", "--output_dir=ytvos_dirs/swin_tiny",
    "--resume=ytvos_swin_tiny.pth", "--backbone", "swin_t_p4w7", "--ngpu", "8", "--split", "valid", "--visualize",
]
TRAINING_FLAGS = ["--epochs", "6", "--lr_drop", "3", "5", "--lr", "1e-4", "--set_cost_class", "2", "--accum_iter", "2",
                  "--world_size", "8"]


@pytest.mark.parametrize("prog", ["main.py", "inference_ytvos.py", "inference_davis.py", "demo.py"])
def test_each_entry_point_has_its_own_usage_line(prog):
    parser = entry_point_parsers()[prog]
    assert parser.format_usage().startswith(f"usage: {prog} ")
    assert parser.description and "ReferFormer training and inference" not in parser.format_help()


def test_eval_davis_usage_line(capsys):
    import eval_davis

    with pytest.raises(SystemExit):
        eval_davis.parse_args(["--help"])
    assert capsys.readouterr().out.startswith("usage: eval_davis.py ")


@pytest.mark.parametrize("prog", ["inference_ytvos.py", "inference_davis.py", "demo.py"])
def test_inference_help_lists_no_training_options_but_accepts_them(prog):
    parser = entry_point_parsers()[prog]
    help_text = parser.format_help()
    for shown in ("--with_box_refine", "--backbone", "--hidden_dim", "--binary", "--resume", "--threshold",
                  "--text_encoder", "--device", "model:", "inference:"):
        assert shown in help_text, shown
    for hidden in ("--lr_drop", "--set_cost_class", "--accum_iter", "--world_size", "optimisation:",
                   "losses and matcher:"):
        assert hidden not in help_text, hidden
    assert "python main.py --help" in help_text
    demo_inputs = ["--video", "v.mp4", "--text", "a dog", "--checkpoint", "c.pth"] if prog == "demo.py" else []
    args = parser.parse_args([*ORIGINAL_INFERENCE_ARGS, *TRAINING_FLAGS, *demo_inputs])
    assert (args.with_box_refine, args.binary, args.backbone, args.resume, args.lr_drop) == \
        (True, True, "swin_t_p4w7", "ytvos_swin_tiny.pth", [3, 5])


def test_training_help_lists_every_group():
    help_text = get_args_parser().format_help()
    for shown in ("optimisation:", "losses and matcher:", "--lr_drop", "--accum_iter", "inference:"):
        assert shown in help_text, shown
    helps = {action.dest: action.help for action in get_args_parser()._actions}
    assert "only when that model is already in the local Hugging Face cache" in helps["text_encoder"]
    assert "torchvision ImageNet ResNet file" in helps["backbone_pretrained"]


# ----------------------------------------------------------------------------- checkpoint options vs this run's
def test_model_option_differences_name_the_flags_to_pass():
    saved = parse("--hidden_dim", "32", "--dec_layers", "2", "--num_queries", "2", "--with_box_refine",
                  "--no_rel_coord", "--lr", "1")  # --lr does not shape the model
    current = parse("--hidden_dim", "64", "--dec_layers", "6", "--num_queries", "1")
    message = describe_model_option_differences(saved, current)
    assert ("The checkpoint was trained with --hidden_dim 32 --dec_layers 2 --num_queries 2 --with_box_refine "
            "--no_rel_coord; this run has --hidden_dim 64 --dec_layers 6 --num_queries 1 (no --with_box_refine) "
            "(no --no_rel_coord).") in message
    assert describe_model_option_differences(saved, parse(*"--hidden_dim 32 --dec_layers 2 --num_queries 2 "
                                                           "--with_box_refine --no_rel_coord".split())) is None


def test_class_count_options_are_named_only_when_the_class_counts_differ():
    binary_ytvos = parse("--binary")
    assert describe_model_option_differences(binary_ytvos, parse("--binary", "--dataset_file", "davis")) is None
    message = describe_model_option_differences(binary_ytvos, parse("--dataset_file", "davis"))
    assert "trained with --binary --dataset_file ytvos; this run has (no --binary) --dataset_file davis" in message


def test_options_missing_from_an_old_checkpoint_take_the_defaults():
    """The original's Namespace lacks this re-implementation's options; a dict of options works too."""
    saved = {"hidden_dim": 256, "dec_layers": 4, "backbone": "resnet101", "binary": True}
    message = describe_model_option_differences(saved, parse("--binary"))
    assert "trained with --backbone resnet101; this run has --backbone resnet50" in message


def test_text_encoder_is_named_when_its_weights_do_not_fit():
    message = describe_model_option_differences(parse(), parse("--text_encoder", "weights/tiny"),
                                                text_encoder_differs=True)
    assert message == ("Its text encoder does not fit --text_encoder weights/tiny (it was trained with "
                       "--text_encoder roberta-base).")



# ----------------------------------------------------------------------------- options given on the command line
@pytest.mark.parametrize("argv", [["--hidden_dim", "64"], ["--hidden_dim=64"], ["--hidden", "64"]])
def test_every_form_of_a_flag_counts_as_given(argv):
    args = parse(*argv, "--lr", "1e-4")
    assert args.hidden_dim == 64 and args.given_options == ("hidden_dim", "lr")


def test_switches_negations_and_values_equal_to_the_default_count_as_given_defaults_do_not():
    args = parse("--no_rel_coord", "--with_box_refine", "--nheads", "8")  # 8 is the default, but it was given
    assert args.given_options == ("nheads", "rel_coord", "with_box_refine")
    assert parse().given_options == ()
    # defaults an entry point sets (inference_davis.py's --dataset_file davis) are not given either
    parser = inference_parser("x.py", "test")
    parser.set_defaults(dataset_file="davis")
    args = parser.parse_args(["--resume", "model"])
    assert args.dataset_file == "davis" and args.given_options == ("resume",)
    # an appending option of an entry point (tools/export_model.py --score) starts from its default when given
    parser.add_argument("--score", action="append", default=[])
    assert parser.parse_args(["--score", "J=1", "--score=F=2"]).score == ["J=1", "F=2"]
    assert parser.parse_args(["--score", "J=1"]).given_options == ("score",)
    assert parser.parse_args([]).score == [] and parser.parse_args([]).given_options == ()


# ----------------------------------------------------------------------------- model options from a checkpoint
STORED = {"backbone": "resnet18", "hidden_dim": 64, "dec_layers": 6, "num_queries": 1, "with_box_refine": True,
          "binary": True, "dataset_file": "ref_shapes", "backbone_from_scratch": True, "text_encoder": "data/te"}


def test_options_not_given_come_from_the_checkpoint_given_ones_that_agree_are_kept():
    merged = merge_model_options(parse("--device", "cpu", "--hidden_dim", "64"), STORED, source="ckpt.pth")
    for dest, value in STORED.items():
        if dest != "dataset_file":
            assert getattr(merged, dest) == value, dest
    # a binary model has one class whatever the dataset: --dataset_file stays the run's
    assert merged.dataset_file == "ytvos"
    # options the checkpoint does not store take the parser's defaults (the original's checkpoints lack ours)
    assert merged.mask_dim == 256 and merged.nheads == 8
    assert merged.device == "cpu" and merged.given_options == ("device", "hidden_dim")


def test_a_given_flag_that_contradicts_a_shape_option_is_an_error_naming_both_values():
    with pytest.raises(ValueError) as error:
        merge_model_options(parse("--hidden_dim=32", "--no_rel_coord", "--num_queries", "1"), STORED, source="c.pth")
    assert str(error.value).startswith(
        "the model in c.pth was trained with --hidden_dim 64 (no --no_rel_coord), but the command line gives "
        "--hidden_dim 32 --no_rel_coord: these options shape the weights")


def test_a_contradicted_dilation_is_a_warning_and_the_given_text_encoder_wins(caplog):
    with caplog.at_level(logging.INFO, logger="opts"):
        merged = merge_model_options(parse("--dilation", "--text_encoder", "weights/te"), STORED, source="c.pth")
    assert merged.dilation is True and merged.text_encoder == "weights/te"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["c.pth was trained with (no --dilation); this run uses --dilation as the command line asks: "
                        "the weights load, but the model does not compute what it was trained to"]


def test_the_class_count_comes_from_the_checkpoint_unless_given():
    # a non-binary Ref-YouTube-VOS model (65 classes) predicted by inference_davis.py, whose default is davis (78)
    saved = {"binary": False, "dataset_file": "ytvos"}
    parser = inference_parser("x.py", "test")
    parser.set_defaults(dataset_file="davis")
    merged = merge_model_options(parser.parse_args([]), saved, source="c.pth")
    assert (merged.binary, merged.dataset_file) == (False, "ytvos")
    # a binary model keeps the dataset being predicted
    merged = merge_model_options(parser.parse_args([]), {"binary": True, "dataset_file": "ytvos"}, source="c.pth")
    assert (merged.binary, merged.dataset_file) == (True, "davis")
    with pytest.raises(ValueError, match=r"trained with \(no --binary\) --dataset_file ytvos, but the command line "
                                         r"gives --binary --dataset_file davis"):
        merge_model_options(parser.parse_args(["--binary", "--dataset_file", "davis"]), saved, source="c.pth")


def test_options_read_off_the_weights_leave_the_unknown_ones_to_the_run():
    inferred = {"backbone": "resnet50", "hidden_dim": 256, "binary": True, "dataset_file": "ytvos"}
    merged = merge_model_options(parse("--dilation", "--text_encoder", "te"), inferred, source="bare.pth",
                                 inferred=True)
    assert merged.dilation is True and merged.text_encoder == "te" and merged.binary is True
    with pytest.raises(ValueError, match=r"^the weights of bare.pth fit --hidden_dim 256, but the command line gives "
                                         r"--hidden_dim 64"):
        merge_model_options(parse("--hidden_dim", "64"), inferred, source="bare.pth", inferred=True)


@pytest.mark.parametrize(("num_classes", "dataset_file", "expected"), [
    (1, "davis", {"binary": True, "dataset_file": "davis"}),
    (65, "davis", {"binary": False, "dataset_file": "ytvos"}),
    (78, "davis", {"binary": False, "dataset_file": "davis"}),
    (91, "a2d", {"binary": False, "dataset_file": "refcoco"}),
])
def test_class_count_options_for_weights_without_options(num_classes, dataset_file, expected):
    assert class_count_options(num_classes, dataset_file) == expected


def test_a_class_count_of_no_dataset_is_refused():
    with pytest.raises(ValueError, match="a class head of 7 classes fits no --dataset_file"):
        class_count_options(7, "ytvos")
