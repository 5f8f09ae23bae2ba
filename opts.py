"""Command-line options shared by every entry point (training, evaluation, inference, demo).

Flag names, types and defaults are the original ReferFormer's (``opts.py`` of the original), so
its scripts and recipes run unchanged. Differences, all documented in the flag's help:

* ``--masks`` defaults to on: every ReferFormer model segments (the original entry points
  forced ``args.masks = True`` after parsing).
* Flags the original accepted but never used (:data:`NO_EFFECT_FLAGS`) are still accepted;
  :func:`validate_args` warns when one is set.
* New: ``--text_encoder`` (where RoBERTa and its tokenizer come from) and ``--unsafe_load``
  (allow pickled objects in checkpoints).

:func:`validate_args` rejects combinations the original could not run, and
:func:`num_classes_for` gives the class-head size K for the options.
"""
from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

# "ref_shapes": the synthetic quick-start dataset (tools/data/make_ref_shapes.py), Ref-YTVOS layout.
DATASETS = ("ytvos", "davis", "ref_shapes", "a2d", "jhmdb", "refcoco", "refcoco+", "refcocog", "all", "joint")

# Class counts K of the class head (spec 3.3). The video datasets' counts are the lengths of their
# category tables (datasets/categories.py); RefCOCO uses raw COCO category ids (1..90) as class indices.
COCO_NUM_CLASSES = 91
# --binary and A2D/JHMDB: one "referred object" class.
BINARY_NUM_CLASSES = 1
SINGLE_CLASS_DATASETS = ("a2d", "jhmdb")
# Datasets main.py evaluates (--eval, and after every training epoch except for jhmdb, which has no training set).
EVALUATION_DATASETS = ("a2d", "jhmdb", "refcoco", "refcoco+", "refcocog", "all")

# The transformer sees backbone strides 8, 16, 32 plus a stride-64 level built from res5, and the
# pixel decoder reads the encoder memory of exactly the first three: any other count breaks the
# original (its FPN would pair memory and backbone levels of different strides).
NUM_FEATURE_LEVELS = 4
# input_proj normalises every level with GroupNorm(32, hidden_dim).
INPUT_PROJ_GROUPS = 32
# The dynamic mask head needs a first conv (features + coordinates → channels) and a last one
# (channels → 1 mask logit); a single layer would output dynamic_mask_channels logits.
MIN_CONTROLLER_LAYERS = 2

NO_EFFECT_HELP = "(accepted for compatibility; has no effect)"
# Flags of the original that nothing reads; kept so that old command lines still parse.
NO_EFFECT_FLAGS = ("max_skip", "pre_norm", "remove_difficult", "eos_coef", "cache_mode")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The option parser. Use ``add_help=False`` to include it as a parent of another parser."""
    parser = argparse.ArgumentParser("ReferFormer training and inference", add_help=add_help)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr", default=1e-4, type=float)
    optim.add_argument("--lr_backbone", default=5e-5, type=float)
    optim.add_argument("--lr_backbone_names", default=["backbone.0"], type=str, nargs="+",
                       help="parameters whose name contains one of these get --lr_backbone")
    optim.add_argument("--lr_text_encoder", default=1e-5, type=float)
    optim.add_argument("--lr_text_encoder_names", default=["text_encoder"], type=str, nargs="+",
                       help="parameters whose name contains one of these get --lr_text_encoder")
    optim.add_argument("--lr_linear_proj_names", default=["reference_points", "sampling_offsets"], type=str,
                       nargs="+", help="parameters whose name contains one of these get --lr x --lr_linear_proj_mult")
    optim.add_argument("--lr_linear_proj_mult", default=1.0, type=float)
    optim.add_argument("--batch_size", default=1, type=int, help="clips per GPU")
    optim.add_argument("--weight_decay", default=5e-4, type=float)
    optim.add_argument("--epochs", default=10, type=int)
    optim.add_argument("--lr_drop", default=[6, 8], type=int, nargs="+", help="epochs after which lr is x0.1")
    optim.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping max norm (0: none)")

    model = parser.add_argument_group("model")
    model.add_argument("--pretrained_weights", type=str, default=None,
                       help="checkpoint to fine-tune from (its class head is not loaded)")
    model.add_argument("--with_box_refine", default=False, action="store_true",
                       help="iterative box refinement in the decoder (all released models)")
    model.add_argument("--two_stage", default=False, action="store_true",
                       help="two-stage Deformable DETR: not supported by ReferFormer, must stay off")
    model.add_argument("--backbone", default="resnet50", type=str,
                       help="resnet50, resnet101, swin_{t,s,b,l}_p4w7 or video_swin_{t,s,b}_p4w7 (the paper's); "
                            "resnet18 and resnet34 for the CPU quick start")
    model.add_argument("--backbone_pretrained", default=None, type=str,
                       help="ImageNet/Kinetics weights for a Swin/Video-Swin backbone when training from scratch")
    model.add_argument("--backbone_from_scratch", action="store_true",
                       help="ResNet with random weights: every stage trains and BatchNorm uses batch statistics "
                            "(the default freezes the stem, layer1 and all BatchNorms, which suits ImageNet weights "
                            "only)")
    model.add_argument("--use_checkpoint", action="store_true",
                       help="gradient checkpointing in Swin/Video-Swin blocks (saves memory)")
    model.add_argument("--dilation", action="store_true",
                       help="replace stride by dilation in the last ResNet stage (DC5)")
    model.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"),
                       help="position encoding of the frame features; only 'sine' is implemented")
    model.add_argument("--num_feature_levels", default=4, type=int,
                       help=f"feature levels of the deformable transformer (must be {NUM_FEATURE_LEVELS})")
    model.add_argument("--text_encoder", default="roberta-base", type=str,
                       help="Hugging Face model name, or a local directory in save_pretrained layout holding "
                            "both the RoBERTa model and its tokenizer")

    transformer = parser.add_argument_group("transformer")
    transformer.add_argument("--enc_layers", default=4, type=int, help="encoder layers")
    transformer.add_argument("--dec_layers", default=4, type=int, help="decoder layers")
    transformer.add_argument("--dim_feedforward", default=2048, type=int,
                             help="width of the feed-forward layers in the transformer blocks")
    transformer.add_argument("--hidden_dim", default=256, type=int, help="width of the transformer")
    transformer.add_argument("--dropout", default=0.1, type=float, help="dropout in the transformer")
    transformer.add_argument("--nheads", default=8, type=int, help="attention heads in the transformer")
    transformer.add_argument("--num_frames", default=5, type=int, help="frames per training clip")
    transformer.add_argument("--num_queries", default=5, type=int,
                             help="queries per frame (shared by all frames of a clip)")
    transformer.add_argument("--dec_n_points", default=4, type=int, help="sampling points per head in the decoder")
    transformer.add_argument("--enc_n_points", default=4, type=int, help="sampling points per head in the encoder")
    transformer.add_argument("--pre_norm", action="store_true", help=NO_EFFECT_HELP)
    transformer.add_argument("--freeze_text_encoder", action="store_true",
                             help="do not train the text encoder (its dropout stays active in training)")

    segmentation = parser.add_argument_group("segmentation")
    segmentation.add_argument("--masks", default=True, action="store_true",
                              help="always on: every ReferFormer model predicts masks (accepted for compatibility)")
    segmentation.add_argument("--mask_dim", default=256, type=int, help="channels of the mask features")
    segmentation.add_argument("--controller_layers", default=3, type=int,
                              help="layers of the dynamic mask head (and of the controller MLP)")
    segmentation.add_argument("--dynamic_mask_channels", default=8, type=int,
                              help="channels of the dynamic mask head's hidden layers")
    segmentation.add_argument("--no_rel_coord", dest="rel_coord", action="store_false",
                              help="do not give the dynamic mask head relative coordinates")

    loss = parser.add_argument_group("losses and matcher")
    loss.add_argument("--no_aux_loss", dest="aux_loss", action="store_false",
                      help="no losses on the outputs of intermediate decoder layers")
    loss.add_argument("--set_cost_class", default=2.0, type=float, help="class weight in the matching cost")
    loss.add_argument("--set_cost_bbox", default=5.0, type=float, help="L1 box weight in the matching cost")
    loss.add_argument("--set_cost_giou", default=2.0, type=float, help="GIoU weight in the matching cost")
    loss.add_argument("--set_cost_mask", default=2.0, type=float, help="mask focal weight in the matching cost")
    loss.add_argument("--set_cost_dice", default=5.0, type=float, help="dice weight in the matching cost")
    loss.add_argument("--mask_loss_coef", default=2.0, type=float)
    loss.add_argument("--dice_loss_coef", default=5.0, type=float)
    loss.add_argument("--cls_loss_coef", default=2.0, type=float)
    loss.add_argument("--bbox_loss_coef", default=5.0, type=float)
    loss.add_argument("--giou_loss_coef", default=2.0, type=float)
    loss.add_argument("--eos_coef", default=0.1, type=float, help=NO_EFFECT_HELP)
    loss.add_argument("--focal_alpha", default=0.25, type=float, help="alpha of the class focal loss")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_file", default="ytvos", choices=DATASETS,
                      help="'all': RefCOCO/+/g together (pretraining); 'joint': Ref-YTVOS + RefCOCO/+/g")
    data.add_argument("--coco_path", type=str, default="data/coco")
    data.add_argument("--ytvos_path", type=str, default="data/ref-youtube-vos")
    data.add_argument("--davis_path", type=str, default="data/ref-davis")
    data.add_argument("--a2d_path", type=str, default="data/a2d_sentences")
    data.add_argument("--jhmdb_path", type=str, default="data/jhmdb_sentences")
    data.add_argument("--max_skip", default=3, type=int, help=NO_EFFECT_HELP)
    data.add_argument("--max_size", default=640, type=int, help="longest side of a resized frame")
    data.add_argument("--binary", action="store_true", help="one 'referred object' class instead of categories")
    data.add_argument("--remove_difficult", action="store_true", help=NO_EFFECT_HELP)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="output", help="where to save checkpoints, logs and predictions")
    run.add_argument("--device", default="cuda", help="device for training and testing")
    run.add_argument("--seed", default=42, type=int)
    run.add_argument("--resume", default="",
                     help="checkpoint to resume from (or to evaluate with --eval); 'auto': the latest complete "
                          "checkpoint in --output_dir, if any")
    run.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    run.add_argument("--eval", action="store_true", help="evaluate only (A2D/JHMDB, RefCOCO/+/g)")
    run.add_argument("--num_workers", default=4, type=int)
    run.add_argument("--unsafe_load", action="store_true",
                     help="allow pickled Python objects in checkpoints (torch.load weights_only=False); "
                          "only for trusted files")

    test = parser.add_argument_group("inference")
    test.add_argument("--threshold", default=0.5, type=float,
                      help="mask probability threshold (A2D/JHMDB evaluation always uses 0.5)")
    test.add_argument("--ngpu", default=8, type=int, help="GPUs for Ref-YTVOS / Ref-DAVIS inference")
    test.add_argument("--split", default="valid", type=str, choices=("valid", "test"))
    test.add_argument("--visualize", action="store_true", help="also save frames with the predicted masks drawn")
    test.add_argument("--short_side", default=None, type=int,
                      help="Ref-YTVOS / Ref-DAVIS inference and demo.py: frames are resized to this short side before "
                           "the model; default 360, the original's (the CPU quick start uses its frames' 128)")
    test.add_argument("--expressions_per_batch", default=None, type=int,
                      help="Ref-YTVOS / Ref-DAVIS inference: expressions of a clip that share one pass through the "
                           "caption-dependent part of the model (the backbone runs once per clip for all of them); "
                           "default 4 on CUDA, 1 on the CPU (where batching saves no time and multiplies memory)")

    distributed = parser.add_argument_group("distributed")
    distributed.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    distributed.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    distributed.add_argument("--cache_mode", default=False, action="store_true", help=NO_EFFECT_HELP)

    add_training_args(parser)
    return parser


CAPTION_FLIP_MODES = ("whole_word", "original")
# --photometric_distort: the original (uint8 wrap-around), clipped to [0, 255], or no photometric distortion.
PHOTOMETRIC_MODES = ("original", "clipped", "off")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Training options that the original did not have (``main.py``; see docs/training.md)."""
    training = parser.add_argument_group("training (new in this re-implementation)")
    training.add_argument("--accum_iter", default=1, type=int, metavar="N",
                          help="accumulate gradients over N iterations per optimizer step: the effective batch is "
                               "batch_size x GPUs x N (the original: 1 x 8 GPUs for Ref-YTVOS)")
    training.add_argument("--save_every_iters", default=0, type=int, metavar="N",
                          help="also write output_dir/checkpoint.pth every N iterations of an epoch (0: only at the "
                               "end of each epoch); must be a multiple of --accum_iter")
    training.add_argument("--print_freq", default=10, type=int, metavar="N",
                          help="log the running losses every N iterations (console, train.log, log_iter.txt)")
    training.add_argument("--skip_bad_samples", action="store_true",
                          help="skip samples with missing/corrupt frames or annotations or bad metadata (they are "
                               "counted and listed in the log) instead of stopping with an error")
    training.add_argument("--caption_flip", default="whole_word", choices=CAPTION_FLIP_MODES,
                          help="horizontal flip of a clip swaps left/right in its caption: as whole words (default), "
                               "or as the original's substring replacement ('bright' -> 'bleft')")
    training.add_argument("--photometric_distort", default="original", choices=PHOTOMETRIC_MODES,
                          help="per-frame photometric distortion of training clips: the original's (its uint8 cast "
                               "wraps out-of-range values around), 'clipped' to [0, 255], or 'off' (for data whose "
                               "expressions name colours the distortion's channel swaps and hue shifts would change)")
    training.add_argument("--amp", action="store_true",
                          help="mixed precision on CUDA (bfloat16 where supported, else float16 with loss scaling); "
                               "ignored with a warning on the CPU")


def training_arg_errors(args: argparse.Namespace) -> list[str]:
    """What is wrong with the training options (empty if nothing)."""
    errors = []
    if args.accum_iter < 1:
        errors.append(f"--accum_iter must be at least 1, got {args.accum_iter}")
    elif args.save_every_iters < 0 or args.save_every_iters % args.accum_iter:
        errors.append(f"--save_every_iters {args.save_every_iters} must be 0 or a positive multiple of --accum_iter "
                      f"{args.accum_iter} (checkpoints are written between optimizer steps)")
    if args.print_freq < 1:
        errors.append(f"--print_freq must be at least 1, got {args.print_freq}")
    return errors


def validate_args(args: argparse.Namespace) -> None:
    """Reject option combinations the model cannot run; warn about options that do nothing.

    Raises:
        ValueError: naming the offending flag(s) and what would work.
    """
    errors = []
    if args.two_stage:
        errors.append("--two_stage is not supported: ReferFormer's queries come from the text, not from encoder "
                      "proposals; drop the flag")
    if args.position_embedding != "sine":
        errors.append(f"--position_embedding {args.position_embedding} is not implemented (the original raises "
                      "too); use 'sine'")
    if args.num_feature_levels != NUM_FEATURE_LEVELS:
        errors.append(f"--num_feature_levels {args.num_feature_levels} is not supported: the pixel decoder needs "
                      f"exactly {NUM_FEATURE_LEVELS} levels (strides 8, 16, 32 and 64)")
    if args.hidden_dim % args.nheads:
        errors.append(f"--hidden_dim {args.hidden_dim} is not divisible by --nheads {args.nheads}")
    if args.hidden_dim % INPUT_PROJ_GROUPS:
        errors.append(f"--hidden_dim {args.hidden_dim} is not divisible by {INPUT_PROJ_GROUPS} "
                      "(the GroupNorm groups of the input projections)")
    if args.dynamic_mask_channels < 1:
        errors.append(f"--dynamic_mask_channels must be at least 1, got {args.dynamic_mask_channels}")
    if args.dec_layers == 1:
        errors.append("--dec_layers must be at least 2: eval outputs report the reference points that entered the "
                      "last decoder layer, which the first layer's do not")
    if args.controller_layers < MIN_CONTROLLER_LAYERS:
        errors.append(f"--controller_layers must be at least {MIN_CONTROLLER_LAYERS}, got {args.controller_layers}")
    for flag in ("num_frames", "num_queries", "dec_layers", "enc_n_points", "dec_n_points", "batch_size"):
        if getattr(args, flag) < 1:
            errors.append(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.short_side is not None and args.short_side < 1:
        errors.append(f"--short_side must be at least 1, got {args.short_side}")
    if args.eval and args.dataset_file not in EVALUATION_DATASETS:
        errors.append(f"--eval evaluates {', '.join(EVALUATION_DATASETS)}; --dataset_file {args.dataset_file} is "
                      "evaluated by inference_ytvos.py / inference_davis.py")
    if args.dataset_file == "joint" and not args.binary:
        errors.append("--dataset_file joint needs --binary: RefCOCO and Ref-YouTube-VOS categories are different "
                      "tables, so joint training has one 'referred object' class (as the original)")
    errors += training_arg_errors(args)
    if errors:
        raise ValueError("invalid options:\n  " + "\n  ".join(errors))

    defaults = get_args_parser(add_help=False)
    for flag in NO_EFFECT_FLAGS:
        if getattr(args, flag) != defaults.get_default(flag):
            logger.warning("--%s is accepted for compatibility with the original but has no effect", flag)


def num_classes_for(args: argparse.Namespace) -> int:
    """Size K of the class head (spec 3.3): 1 with ``--binary``, else from ``--dataset_file``."""
    # imported here: datasets/ imports this module (the caption-flip modes)
    from datasets.categories import VIDEO_CATEGORY_TABLES

    if args.binary or args.dataset_file in SINGLE_CLASS_DATASETS:
        return BINARY_NUM_CLASSES
    if args.dataset_file in VIDEO_CATEGORY_TABLES:
        return len(VIDEO_CATEGORY_TABLES[args.dataset_file])
    return COCO_NUM_CLASSES
