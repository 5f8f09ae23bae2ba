"""Model builders: ``build_model(args)`` is the one place where the model reads command-line options."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from models.criterion import SetCriterion
    from models.referformer import ReferFormer

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def build_weight_dict(args: argparse.Namespace) -> dict[str, float]:
    """Loss weights, with ``_i`` copies for the auxiliary outputs of decoder layers ``0..L-2``."""
    coefs = (args.cls_loss_coef, args.bbox_loss_coef, args.giou_loss_coef, args.mask_loss_coef, args.dice_loss_coef)
    weight_dict = dict(zip(LOSS_NAMES, coefs))
    if args.aux_loss:
        for layer in range(args.dec_layers - 1):
            weight_dict.update({f"{name}_{layer}": coef for name, coef in zip(LOSS_NAMES, coefs)})
    return weight_dict


def build_model(
    args: argparse.Namespace, *, text_encoder: nn.Module | None = None, tokenizer=None
) -> tuple[ReferFormer, SetCriterion, dict[str, nn.Module]]:
    """Build ``(model, criterion, postprocessors)`` from the options of ``opts.py``.

    ``model.config`` records the model's options (:func:`opts.model_options`) for
    :meth:`ReferFormer.save_pretrained`.

    ``text_encoder``/``tokenizer`` replace the ones named by ``--text_encoder`` (tests use tiny ones).
    """
    # imported here, not with the package: a script that needs one light module of the package (the
    # post-processors, the dataset readers through their evaluators) then does not load torchvision
    # and transformers, whose imports take seconds
    from models.backbone import build_backbone
    from models.criterion import SetCriterion
    from models.deformable_transformer import DeformableTransformer
    from models.matcher import HungarianMatcher
    from models.ms_deform_attn import set_core_impl
    from models.postprocessors import build_postprocessors
    from models.referformer import ReferFormer
    from models.text_encoder import load_text_encoder, load_tokenizer
    from opts import model_options, num_classes_for

    num_classes = num_classes_for(args)
    backbone = build_backbone(
        args.backbone,
        hidden_dim=args.hidden_dim,
        train_backbone=args.lr_backbone > 0,
        dilation=args.dilation,
        pretrained_path=args.backbone_pretrained,
        use_checkpoint=args.use_checkpoint,
        from_scratch=args.backbone_from_scratch,
    )
    transformer = DeformableTransformer(
        d_model=args.hidden_dim,
        nhead=args.nheads,
        num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers,
        dim_feedforward=args.dim_feedforward,
        dropout=args.dropout,
        num_feature_levels=args.num_feature_levels,
        dec_n_points=args.dec_n_points,
        enc_n_points=args.enc_n_points,
    )
    set_core_impl(transformer, args.msda_impl)
    if text_encoder is None:
        text_encoder = load_text_encoder(args.text_encoder)
    if tokenizer is None:
        tokenizer = load_tokenizer(args.text_encoder)
    model = ReferFormer(
        backbone,
        transformer,
        text_encoder,
        tokenizer,
        num_classes=num_classes,
        num_queries=args.num_queries,
        num_feature_levels=args.num_feature_levels,
        mask_dim=args.mask_dim,
        dim_feedforward=args.dim_feedforward,
        controller_layers=args.controller_layers,
        dynamic_mask_channels=args.dynamic_mask_channels,
        aux_loss=args.aux_loss,
        with_box_refine=args.with_box_refine,
        freeze_text_encoder=args.freeze_text_encoder,
        rel_coord=args.rel_coord,
        fpn_dropout=args.fpn_dropout,
    )
    # what save_pretrained writes to config.json, so that the model is rebuilt without flags
    model.config = model_options(args)
    matcher = HungarianMatcher(
        cost_class=args.set_cost_class,
        cost_bbox=args.set_cost_bbox,
        cost_giou=args.set_cost_giou,
        cost_mask=args.set_cost_mask,
        cost_dice=args.set_cost_dice,
        num_classes=num_classes,
    )
    criterion = SetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict=build_weight_dict(args),
        eos_coef=args.eos_coef,
        losses=["labels", "boxes", "masks"],
        focal_alpha=args.focal_alpha,
        mask_out_stride=args.mask_out_stride,
    )
    postprocessors = build_postprocessors(args.dataset_file, args.threshold)
    return model, criterion, postprocessors


def __getattr__(name: str):
    """``models.ReferFormer``, imported on first use (see :func:`build_model`)."""
    if name == "ReferFormer":
        from models.referformer import ReferFormer
        return ReferFormer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
