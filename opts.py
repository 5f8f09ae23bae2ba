"""Command-line options shared by every entry point (training, evaluation, inference, demo).

Flag names, types and defaults are the original ReferFormer's (``opts.py`` of the original), so
its scripts and recipes run unchanged. Differences, all documented in the flag's help:

* ``--masks`` defaults to on: every ReferFormer model segments (the original entry points
  forced ``args.masks = True`` after parsing).
* Flags the original accepted but never used (:data:`NO_EFFECT_FLAGS`) are still accepted;
  :func:`validate_args` warns when one is set.
* New: ``--text_encoder`` (where RoBERTa and its tokenizer come from) and ``--unsafe_load``
  (allow pickled objects in checkpoints).

:func:`get_args_parser` is ``main.py``'s parser; :func:`inference_parser` gives the inference scripts
and the demo the same options with only those that matter to them listed in ``--help``.
:func:`validate_args` rejects combinations the original could not run, :func:`num_classes_for`
gives the class-head size K for the options, and :func:`describe_model_option_differences` names
the model options a checkpoint was trained with that differ from a run's.

Both parsers record which options the command line gave (``args.given_options``, see
:class:`OptionParser`): an entry point that loads weights builds the model with the model options
stored with them (:data:`STORED_MODEL_OPTIONS`) wherever the command line does not give one, and
:func:`merge_model_options` rejects a given flag that contradicts them.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

# "ref_shapes": the synthetic quick-start dataset (tools/data/make_ref_shapes.py), Ref-YTVOS layout.
DATASETS = ("ytvos", "davis", "ref_shapes", "a2d", "jhmdb", "refcoco", "refcoco+", "refcocog", "all", "joint", "mevis",
            "mevis_ytvos")
# Joint training sets whose parts label objects differently: the model must be binary.
BINARY_ONLY_DATASETS = ("joint", "mevis_ytvos")
# Training sets with several expressions per video, whose clips --expressions_per_clip can share.
SHARED_CLIP_DATASETS = ("ytvos", "davis", "ref_shapes", "mevis", "mevis_ytvos")

# Class counts K of the class head. The video datasets' counts are the lengths of their
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
# --mask_out_stride: the predicted masks are at stride 4 (the mask features'); 2 and 1 upsample them for the
# losses (models/criterion.py); the first is the original's.
MASK_OUT_STRIDES = (4, 2, 1)

# Options that change the model's parameter names or shapes, or what it computes: a checkpoint fits only a
# model built with the values it was trained with. Not here: --backbone_from_scratch (its BatchNorm and
# the default FrozenBatchNorm have the same parameters and compute the same in evaluation) and
# --text_encoder (a hub name and a local copy of it name the same model differently); the class count
# (--binary, --dataset_file) is compared through num_classes_for.
MODEL_OPTIONS = ("backbone", "dilation", "hidden_dim", "dim_feedforward", "enc_layers", "dec_layers", "nheads",
                 "num_queries", "num_feature_levels", "enc_n_points", "dec_n_points", "with_box_refine", "mask_dim",
                 "controller_layers", "dynamic_mask_channels", "rel_coord")
CLASS_COUNT_OPTIONS = ("binary", "dataset_file")
# Model options whose weights fit either value: a flag that contradicts the checkpoint is a warning, not an error
# (ResNet's DC5 dilation changes what the last stage computes, not its parameters).
COMPUTE_ONLY_MODEL_OPTIONS = ("dilation",)
# What a trained model carries besides its weights, so that it is rebuilt without flags: the model options, the
# class count, the text encoder, and --backbone_from_scratch (which BatchNorm holds the ResNet statistics; both
# kinds load the same keys, the ordinary one also its step counters). Runtime choices (--msda_impl, --device)
# and training options are not model options.
STORED_MODEL_OPTIONS = (*MODEL_OPTIONS, *CLASS_COUNT_OPTIONS, "backbone_from_scratch", "text_encoder")
# The namespace attribute in which OptionParser records the options the command line gave.
GIVEN_OPTIONS = "given_options"

TRAINING_DESCRIPTION = ("Train ReferFormer on any dataset, or evaluate a checkpoint with --eval (A2D-Sentences, "
                        "JHMDB-Sentences, RefCOCO/+/g).")
# Option groups that only training reads. The inference scripts and the demo accept them, so that a
# training command's flags can be passed on unchanged, but do not list them in --help.
TRAINING_ONLY_GROUPS = ("optimisation", "losses and matcher", "distributed", "training (new in this re-implementation)")

NO_EFFECT_HELP = "(accepted for compatibility; has no effect)"
# Flags of the original that nothing reads; kept so that old command lines still parse.
NO_EFFECT_FLAGS = ("max_skip", "pre_norm", "remove_difficult", "eos_coef", "cache_mode")


class OptionParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose namespaces also say which options the command line gave.

    ``args.given_options`` (:data:`GIVEN_OPTIONS`) is the sorted tuple of the option names (dests) that
    the command line set, whatever the form (``--flag value``, ``--flag=value``, an abbreviation,
    ``--no_rel_coord``), as opposed to those left at their defaults, even where the given value
    equals the default.
    """

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        setattr(parsed, GIVEN_OPTIONS, tuple(sorted(self._given_dests(args))))
        return parsed, extras

    def _given_dests(self, args) -> set[str]:
        """The dests the command line ``args`` sets: a second parse with every default suppressed leaves only them
        in its namespace (an appending option then starts from an empty list, as without a default)."""
        action_defaults = [(action, action.default) for action in self._actions]
        parser_defaults = self._defaults
        try:
            for action, _ in action_defaults:
                action.default = argparse.SUPPRESS
            self._defaults = {}
            probe, _ = super().parse_known_args(args, argparse.Namespace())
        finally:
            for action, default in action_defaults:
                action.default = default
            self._defaults = parser_defaults
        return set(vars(probe))


def given_options(args: argparse.Namespace) -> frozenset[str]:
    """The options the command line gave (:class:`OptionParser`); every option of a namespace that was not
    made by it (built in code), whose values were all chosen."""
    given = getattr(args, GIVEN_OPTIONS, None)
    return frozenset(vars(args) if given is None else given)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """``main.py``'s option parser. Use ``add_help=False`` to include it as a parent of another parser."""
    parser = OptionParser(prog="main.py", description=TRAINING_DESCRIPTION, add_help=add_help)

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
                       help="the backbone's own pretrained weights when training starts afresh: a torchvision "
                            "ImageNet ResNet file (e.g. resnet50-0676ba61.pth), an ImageNet Swin or a Kinetics "
                            "Video-Swin file. Without it a ResNet starts from torchvision's ImageNet weights "
                            "(IMAGENET1K_V1, as the original; taken from the torch hub cache under TORCH_HOME, "
                            "downloaded when missing) and a Swin from random weights")
    model.add_argument("--backbone_from_scratch", action="store_true",
                       help="ResNet with random weights instead of ImageNet's: every stage trains and BatchNorm uses "
                            "batch statistics (the default freezes the stem, layer1 and all BatchNorms, which suits "
                            "ImageNet weights only)")
    model.add_argument("--use_checkpoint", action="store_true",
                       help="gradient checkpointing in Swin/Video-Swin blocks (saves memory)")
    model.add_argument("--dilation", action="store_true",
                       help="replace stride by dilation in the last ResNet stage (DC5)")
    model.add_argument("--position_embedding", default="sine", type=str, choices=("sine", "learned"),
                       help="position encoding of the frame features; only 'sine' is implemented")
    model.add_argument("--num_feature_levels", default=4, type=int,
                       help=f"feature levels of the deformable transformer (must be {NUM_FEATURE_LEVELS})")
    model.add_argument("--text_encoder", default="roberta-base", type=str,
                       help="a local directory in save_pretrained layout holding both the RoBERTa model and its "
                            "tokenizer; a Hugging Face model name works only when that model is already in the local "
                            "Hugging Face cache (nothing is downloaded)")

    transformer = parser.add_argument_group("transformer")
    transformer.add_argument("--enc_layers", default=4, type=int, help="encoder layers")
    transformer.add_argument("--dec_layers", default=4, type=int, help="decoder layers")
    transformer.add_argument("--dim_feedforward", default=2048, type=int,
                             help="width of the feed-forward layers in the transformer blocks")
    transformer.add_argument("--hidden_dim", default=256, type=int, help="width of the transformer")
    transformer.add_argument("--dropout", default=0.1, type=float, help="dropout in the transformer")
    transformer.add_argument("--fpn_dropout", default=0.1, type=float,
                             help="dropout in the cross-modal FPN's vision-language blocks (fixed at 0.1 in the original)")
    transformer.add_argument("--nheads", default=8, type=int, help="attention heads in the transformer")
    transformer.add_argument("--num_frames", default=5, type=int, help="frames per training clip")
    transformer.add_argument("--num_queries", default=5, type=int,
                             help="queries per frame (shared by all frames of a clip)")
    transformer.add_argument("--dec_n_points", default=4, type=int, help="sampling points per head in the decoder")
    transformer.add_argument("--enc_n_points", default=4, type=int, help="sampling points per head in the encoder")
    transformer.add_argument("--msda_impl", default="auto", choices=("auto", "triton", "pytorch", "reference"),
                             help="implementation of the deformable-attention core (same results up to float "
                                  "rounding): triton (a Triton kernel, CUDA only, compiled at first use), pytorch "
                                  "(pure PyTorch, embedding_bag; fastest on the CPU), reference (pure PyTorch, "
                                  "grid_sample). auto: triton on CUDA when Triton is importable, supports the GPU and "
                                  "dtypes and its kernel builds, else reference on CUDA (pytorch's backward is slow "
                                  "there); "
                                  "pytorch on the CPU (reference there for training with at most 8 channels per head, "
                                  "where it is faster)")
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
    loss.add_argument("--mask_out_stride", default=MASK_OUT_STRIDES[0], type=int, choices=MASK_OUT_STRIDES,
                      help="stride (in input pixels) of the grid on which the mask losses and matching costs compare "
                           "predicted and ground-truth masks. 4 (the original's, hard-coded there): the predicted "
                           "masks' own grid, the ground truth point-sampled to it. 2 or 1: the predicted masks are "
                           "first upsampled 2x or 4x with the original's aligned-bilinear routine, so the losses see "
                           "finer ground truth (training only: the model and its outputs do not change)")
    loss.add_argument("--mask_loss_coef", default=2.0, type=float)
    loss.add_argument("--dice_loss_coef", default=5.0, type=float)
    loss.add_argument("--cls_loss_coef", default=2.0, type=float)
    loss.add_argument("--bbox_loss_coef", default=5.0, type=float)
    loss.add_argument("--giou_loss_coef", default=2.0, type=float)
    loss.add_argument("--eos_coef", default=0.1, type=float, help=NO_EFFECT_HELP)
    loss.add_argument("--focal_alpha", default=0.25, type=float, help="alpha of the class focal loss")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_file", default="ytvos", choices=DATASETS,
                      help="'all': RefCOCO/+/g together (pretraining); 'joint': Ref-YTVOS + RefCOCO/+/g; 'mevis': "
                           "MeViS (new); 'mevis_ytvos': MeViS + Ref-YTVOS (new)")
    data.add_argument("--coco_path", type=str, default="data/coco")
    data.add_argument("--ytvos_path", type=str, default="data/ref-youtube-vos")
    data.add_argument("--davis_path", type=str, default="data/ref-davis")
    data.add_argument("--a2d_path", type=str, default="data/a2d_sentences")
    data.add_argument("--jhmdb_path", type=str, default="data/jhmdb_sentences")
    data.add_argument("--mevis_path", type=str, default="data/mevis",
                      help="MeViS root holding train/, valid_u/ and valid/ (new: the original has no MeViS)")
    data.add_argument("--max_skip", default=3, type=int, help=NO_EFFECT_HELP)
    data.add_argument("--max_size", default=640, type=int, help="longest side of a resized frame")
    data.add_argument("--binary", action="store_true", help="one 'referred object' class instead of categories")
    data.add_argument("--remove_difficult", action="store_true", help=NO_EFFECT_HELP)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="output", help="where to save checkpoints, logs and predictions")
    run.add_argument("--device", default="cuda", help="device for training and testing")
    run.add_argument("--seed", default=42, type=int)
    run.add_argument("--resume", default="",
                     help="checkpoint to resume training from, to evaluate with --eval, or to predict with "
                          "(inference scripts); 'auto': the newest complete checkpoint in --output_dir (training "
                          "starts afresh if there is none)")
    run.add_argument("--start_epoch", default=0, type=int, metavar="N", help="start epoch")
    run.add_argument("--eval", action="store_true", help="evaluate only (A2D/JHMDB, RefCOCO/+/g)")
    run.add_argument("--num_workers", default=4, type=int)
    run.add_argument("--unsafe_load", action="store_true",
                     help="allow pickled Python objects in checkpoints (torch.load weights_only=False); "
                          "only for trusted files")
    run.add_argument("--amp", action="store_true",
                     help="mixed precision for training, evaluation and inference (new in this re-implementation): "
                          "bfloat16 autocast on GPUs that support it (else float16 with loss scaling) and on CPUs "
                          "with native bfloat16 (AVX-512 BF16 or AMX; elsewhere ignored with a warning); the "
                          "deformable-attention core, the losses and the matcher stay float32")

    test = parser.add_argument_group("inference")
    test.add_argument("--threshold", default=0.5, type=float,
                      help="mask probability threshold (A2D/JHMDB evaluation always uses 0.5)")
    test.add_argument("--ngpu", default=8, type=int, help="GPUs for Ref-YTVOS / Ref-DAVIS inference")
    test.add_argument("--split", default="valid", type=str, choices=("valid", "test", "valid_u"),
                      help="split to predict; valid_u: MeViS's split with released masks (inference_mevis.py)")
    test.add_argument("--visualize", action="store_true", help="also save frames with the predicted masks drawn")
    test.add_argument("--short_side", default=None, type=int,
                      help="Ref-YTVOS / Ref-DAVIS inference and demo.py: frames are resized to this short side before "
                           "the model; default 360, the original's (the CPU quick start uses its frames' 128)")
    test.add_argument("--expressions_per_batch", default=None, type=int,
                      help="Ref-YTVOS / Ref-DAVIS inference: expressions of a clip that share one pass through the "
                           "caption-dependent part of the model (the backbone runs once per clip for all of them); "
                           "default 4 on CUDA, 1 on the CPU (where batching saves no time and multiplies memory)")
    test.add_argument("--frames_per_pass", default=0, type=int,
                      help="inference and demo.py (new in this re-implementation): 0 (default) runs every clip "
                           "whole, as the original; N > 0 runs a longer clip through the model in slices of N "
                           "frames, so that memory does not grow with the video length. The query is still chosen "
                           "over the whole clip, but a slice's frames attend only to each other in the cross-modal "
                           "FPN (and Video Swin), so the masks differ somewhat from the whole clip's")

    distributed = parser.add_argument_group("distributed")
    distributed.add_argument("--world_size", default=1, type=int, help="number of distributed processes")
    distributed.add_argument("--dist_url", default="env://", help="url used to set up distributed training")
    distributed.add_argument("--local_rank", "--local-rank", dest="local_rank", default=None, type=int,
                             help="this process's GPU on its machine, as `python -m torch.distributed.launch` "
                                  "without --use_env passes it; LOCAL_RANK in the environment takes precedence")
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
    training.add_argument("--expressions_per_clip", default=1, type=int, metavar="R",
                          help="share each training clip among up to R expressions of its video (ytvos, davis, "
                               "ref_shapes, mevis): the clip is loaded, augmented and run through the backbone once "
                               "for all of them, and --batch_size counts clips, so a batch holds up to batch_size x R "
                               "expressions. 1: one expression per clip, as the original")
    training.add_argument("--photometric_distort", default="original", choices=PHOTOMETRIC_MODES,
                          help="per-frame photometric distortion of training clips: the original's (its uint8 cast "
                               "wraps out-of-range values around), 'clipped' to [0, 255], or 'off' (for data whose "
                               "expressions name colours the distortion's channel swaps and hue shifts would change)")


def inference_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of an inference script or the demo (``prog``), to which it adds its own options.

    Every option of :func:`get_args_parser` parses, so a checkpoint's model flags and a whole training
    command line are accepted; ``--help`` leaves out the :data:`TRAINING_ONLY_GROUPS`.
    """
    parser = OptionParser(
        prog=prog, description=description, parents=[get_args_parser(add_help=False)],
        epilog="Options that only training reads (optimisation, losses and matcher, distributed, and the training "
               "options new in this re-implementation) are accepted, so that a training command's flags can be "
               "passed on unchanged, but not listed: see python main.py --help.",
    )
    # argparse has no public way to hide a group; a group whose options all have suppressed help is not shown.
    for group in parser._action_groups:
        if group.title in TRAINING_ONLY_GROUPS:
            for action in group._group_actions:
                action.help = argparse.SUPPRESS
    return parser


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
    if args.expressions_per_clip < 1:
        errors.append(f"--expressions_per_clip must be at least 1, got {args.expressions_per_clip}")
    elif args.expressions_per_clip > 1 and args.dataset_file not in SHARED_CLIP_DATASETS:
        errors.append(f"--expressions_per_clip {args.expressions_per_clip} applies to --dataset_file "
                      f"{', '.join(SHARED_CLIP_DATASETS)} (several expressions per video); {args.dataset_file} "
                      "trains with one expression per clip: drop the flag")
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
                      "evaluated by inference_ytvos.py / inference_davis.py / inference_mevis.py")
    if args.dataset_file in BINARY_ONLY_DATASETS and not args.binary:
        errors.append(f"--dataset_file {args.dataset_file} needs --binary: its parts' categories are different "
                      "tables, so joint training has one 'referred object' class (as the original)")
    errors += training_arg_errors(args)
    if errors:
        raise ValueError("invalid options:\n  " + "\n  ".join(errors))

    defaults = get_args_parser(add_help=False)
    for flag in NO_EFFECT_FLAGS:
        if getattr(args, flag) != defaults.get_default(flag):
            logger.warning("--%s is accepted for compatibility with the original but has no effect", flag)


def num_classes_for(args: argparse.Namespace) -> int:
    """Size K of the class head: 1 with ``--binary``, else from ``--dataset_file``."""
    # imported here: datasets/ imports this module (the caption-flip modes)
    from datasets.categories import VIDEO_CATEGORY_TABLES

    if args.binary or args.dataset_file in SINGLE_CLASS_DATASETS:
        return BINARY_NUM_CLASSES
    if args.dataset_file in VIDEO_CATEGORY_TABLES:
        return len(VIDEO_CATEGORY_TABLES[args.dataset_file])
    return COCO_NUM_CLASSES


def describe_model_option_differences(saved: argparse.Namespace | Mapping[str, Any], current: argparse.Namespace, *,
                                      text_encoder_differs: bool = False) -> str | None:
    """Which model options a checkpoint was trained with differ from this run's, as flags to pass.

    Args:
        saved: the options stored in the checkpoint (``checkpoint["args"]``: the original's and
            ``main.py``'s Namespace, or a dict). Options it lacks (older checkpoints) take this
            parser's defaults, which are the original's behaviour.
        current: this run's options.
        text_encoder_differs: the checkpoint's text-encoder weights do not fit this run's model; the
            message then names both ``--text_encoder`` values, if they differ.

    Returns:
        e.g. "The checkpoint was trained with --hidden_dim 32 --dec_layers 2; this run has --hidden_dim 64
        --dec_layers 6. ...", comparing :data:`MODEL_OPTIONS` and, when the class counts differ,
        :data:`CLASS_COUNT_OPTIONS`; None when nothing differs.
    """
    parser = get_args_parser(add_help=False)
    stored = dict(saved) if isinstance(saved, Mapping) else vars(saved)
    saved = argparse.Namespace(**{**vars(parser.parse_args([])), **stored})
    differing = [dest for dest in MODEL_OPTIONS if getattr(saved, dest) != getattr(current, dest)]
    if num_classes_for(saved) != num_classes_for(current):
        differing += [dest for dest in CLASS_COUNT_OPTIONS if getattr(saved, dest) != getattr(current, dest)]
    actions = {action.dest: action for action in parser._actions}

    def flags(args: argparse.Namespace) -> str:
        return " ".join(_as_flag(actions[dest], getattr(args, dest)) for dest in differing)

    sentences = []
    if differing:
        sentences.append(f"The checkpoint was trained with {flags(saved)}; this run has {flags(current)}. Pass the "
                         "checkpoint's values: the model options must be the ones it was trained with.")
    if text_encoder_differs and saved.text_encoder != current.text_encoder:
        sentences.append(f"Its text encoder does not fit --text_encoder {current.text_encoder} (it was trained with "
                         f"--text_encoder {saved.text_encoder}).")
    return " ".join(sentences) or None


def _as_flag(action: argparse.Action, value: Any) -> str:
    """``value`` of ``action`` as on a command line: ``--flag value``, ``--switch``, or ``(no --switch)``."""
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true / store_false
        return flag if value == action.const else f"(no {flag})"
    return f"{flag} {value}"


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :data:`STORED_MODEL_OPTIONS` of ``args``: what a trained model records to be rebuilt without flags."""
    return {dest: getattr(args, dest) for dest in STORED_MODEL_OPTIONS}


def class_count_options(num_classes: int, dataset_file: str) -> dict[str, Any]:
    """``--binary`` and ``--dataset_file`` for a class head of ``num_classes`` (K), keeping ``dataset_file`` if it fits.

    For weights that do not record their options: K = 1 is ``--binary``; any other K is the first dataset
    whose class count it is (``dataset_file`` first).

    Raises:
        ValueError: no dataset has K classes.
    """
    if num_classes == BINARY_NUM_CLASSES:
        return {"binary": True, "dataset_file": dataset_file}
    for candidate in (dataset_file, *DATASETS):
        if num_classes_for(argparse.Namespace(binary=False, dataset_file=candidate)) == num_classes:
            return {"binary": False, "dataset_file": candidate}
    counts = {name: num_classes_for(argparse.Namespace(binary=False, dataset_file=name)) for name in DATASETS}
    raise ValueError(f"a class head of {num_classes} classes fits no --dataset_file (class counts: --binary 1, "
                     + ", ".join(f"{name} {count}" for name, count in counts.items()) + ")")


def merge_model_options(args: argparse.Namespace, stored: Mapping[str, Any], *, source: str,
                        inferred: bool = False) -> argparse.Namespace:
    """This run's options, with the model options stored with a model wherever the command line does not give them.

    Args:
        args: this run's options. The options the command line gave are :func:`given_options`: all of them
            for a namespace built in code.
        stored: the options a checkpoint or model folder records (``checkpoint["args"]`` or ``config.json``;
            only :data:`STORED_MODEL_OPTIONS` are read), or with ``inferred`` those read off its weights.
        source: the checkpoint or folder, for messages.
        inferred: ``stored`` was read off the weights' keys and shapes. Options it lacks are then unknown
            (this run's value is kept); otherwise they take this parser's defaults, which are the
            original's behaviour (its checkpoints lack this re-implementation's options).

    Returns:
        A new namespace: ``args`` with the stored :data:`MODEL_OPTIONS`, ``--backbone_from_scratch``,
        ``--text_encoder`` and ``--binary`` where the command line does not give them, and the stored
        ``--dataset_file`` where this run's would give another class count and is not given either.

    Raises:
        ValueError: given flags contradict stored options that shape the weights (naming both values; the
            weights could not load). A contradicted :data:`COMPUTE_ONLY_MODEL_OPTIONS` option is logged as a
            warning and this run's value kept, as is a given ``--text_encoder`` (logged).
    """
    fallback = vars(args) if inferred else vars(get_args_parser(add_help=False).parse_args([]))
    saved = {dest: stored[dest] if dest in stored else fallback[dest] for dest in STORED_MODEL_OPTIONS}
    given = given_options(args)
    merged = dict(vars(args))
    for dest in (*MODEL_OPTIONS, "backbone_from_scratch", "text_encoder", "binary"):
        if dest not in given:
            merged[dest] = saved[dest]
    if num_classes_for(argparse.Namespace(**merged)) != num_classes_for(argparse.Namespace(**saved)):
        if "dataset_file" not in given:
            merged["dataset_file"] = saved["dataset_file"]
    differing = [dest for dest in STORED_MODEL_OPTIONS if merged[dest] != saved[dest]]
    conflicts = [dest for dest in differing if dest in MODEL_OPTIONS and dest not in COMPUTE_ONLY_MODEL_OPTIONS]
    if num_classes_for(argparse.Namespace(**merged)) != num_classes_for(argparse.Namespace(**saved)):
        conflicts += [dest for dest in differing if dest in CLASS_COUNT_OPTIONS]
    if conflicts:
        stored_as = f"the weights of {source} fit" if inferred else f"the model in {source} was trained with"
        raise ValueError(
            f"{stored_as} {format_flags(saved, conflicts)}, but the command line gives "
            f"{format_flags(merged, conflicts)}: these options shape the weights, which cannot load into such a model. "
            "Drop the flags: the model options the command line does not give are read from the checkpoint."
        )
    compute_only = [dest for dest in differing if dest in COMPUTE_ONLY_MODEL_OPTIONS]
    if compute_only:
        logger.warning("%s was trained with %s; this run uses %s as the command line asks: the weights load, but the "
                       "model does not compute what it was trained to", source, format_flags(saved, compute_only),
                       format_flags(merged, compute_only))
    if "text_encoder" in differing:
        logger.info("text encoder: --text_encoder %s from the command line (%s names %s)", merged["text_encoder"],
                    source, saved["text_encoder"])
    return argparse.Namespace(**merged)


def format_flags(values: Mapping[str, Any], dests: Sequence[str]) -> str:
    """Options as on a command line, e.g. ``--hidden_dim 64 --with_box_refine (no --no_rel_coord)``."""
    actions = {action.dest: action for action in get_args_parser(add_help=False)._actions}
    return " ".join(_as_flag(actions[dest], values[dest]) for dest in dests)
