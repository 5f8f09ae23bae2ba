"""SCRATCH: to be appended to util/checkpoint.py (section "Backbone pretrained weights")."""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from util.checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    _first_keys,
    load_checkpoint,
    load_model_state,
    logger,
)

# ============================================================================= Backbone pretrained weights
# The backbones' own pretrained files, as their authors publish them (``--backbone_pretrained``):
# ImageNet-1k/22k Swin classifiers (weights under "model") and Kinetics/SSv2 Video Swin recognisers
# trained with mmaction (weights under "state_dict", backbone keys prefixed "backbone.").
SWIN_IMAGENET_ENTRY = "model"
VIDEO_SWIN_KINETICS_ENTRY = "state_dict"
VIDEO_SWIN_KINETICS_PREFIX = "backbone."
# Classifier head and final norm of ImageNet Swin: the backbone returns per-stage normed features instead.
SWIN_CLASSIFIER_PREFIXES = ("head.", "norm.")
# Final norm of Video Swin: ReferFormer takes the stage outputs without any norm.
VIDEO_SWIN_FINAL_NORM_PREFIX = "norm."
# Buffers the backbone builds itself: the relative-position index (a function of the window) and the
# shifted-window masks of ImageNet Swin (a function of the 224/384 training resolution).
BUILT_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
# Per-stage output norms of the Swin backbone, which ImageNet classifiers do not have.
SWIN_STAGE_NORM_PATTERN = re.compile(r"norm\d\.(weight|bias)")
_STAGE_DOWNSAMPLE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")


@dataclass(frozen=True)
class SwinLayout:
    """The architecture a Swin / Video Swin state dict encodes, read off its key names and shapes."""

    family: str
    patch: tuple[int, ...]
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    bias_table_rows: int

    def __str__(self) -> str:
        def dashed(values: tuple[int, ...]) -> str:
            return "-".join(map(str, values))

        side = math.isqrt(self.bias_table_rows)
        window = f"window {(side + 1) // 2}" if len(self.patch) == 2 and side * side == self.bias_table_rows else (
            f"bias table {self.bias_table_rows} rows"
        )
        return (
            f"{self.family} (patch {'x'.join(map(str, self.patch))}, embed {self.embed_dim}, depths "
            f"{dashed(self.depths)}, heads {dashed(self.num_heads)}, {window})"
        )


def swin_layout(state: Mapping[str, Tensor]) -> SwinLayout | None:
    """The :class:`SwinLayout` of a backbone state dict (our key names), or None if it is not a Swin."""
    patch_weight = state.get("patch_embed.proj.weight")
    if patch_weight is None or patch_weight.ndim not in (4, 5):
        return None
    depths, heads, rows = [], [], 0
    while f"layers.{len(depths)}.blocks.0.attn.relative_position_bias_table" in state:
        stage = len(depths)
        table = state[f"layers.{stage}.blocks.0.attn.relative_position_bias_table"]
        depth = 0
        while f"layers.{stage}.blocks.{depth}.norm1.weight" in state:
            depth += 1
        depths.append(depth)
        heads.append(table.shape[1])
        rows = table.shape[0]
    return SwinLayout(
        family="Swin" if patch_weight.ndim == 4 else "Video Swin",
        patch=tuple(patch_weight.shape[2:]),
        embed_dim=patch_weight.shape[0],
        depths=tuple(depths),
        num_heads=tuple(heads),
        bias_table_rows=rows,
    )


def _weights_entry(checkpoint: Any, entry: str, path: str | os.PathLike, kind: str) -> Mapping[str, Tensor]:
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(entry), Mapping):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointMismatchError(
            f"{path} is not {kind}: expected the weights under a {entry!r} entry; found top-level {found}"
        )
    return checkpoint[entry]


def _check_layout(body: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike, backbone: str) -> None:
    expected = swin_layout(body.state_dict())
    found = swin_layout(state)
    if found != expected:
        found_text = str(found) if found else f"no Swin layout (keys: {_first_keys(sorted(state)[:5])})"
        raise CheckpointMismatchError(
            f"{path} does not fit --backbone {backbone}: it expects {expected}, the file holds {found_text}. "
            "Pass the pretrained file of this backbone's architecture and size."
        )


def _keep_built_buffers(body: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The converted file state plus the body's own relative-position indices (kept as built)."""
    built = {key: value for key, value in body.state_dict().items() if key.endswith(BUILT_BUFFER_SUFFIXES)}
    return {**state, **built}


def convert_swin_imagenet_state(checkpoint: Mapping[str, Any], path: str | os.PathLike = "") -> dict[str, Tensor]:
    """ImageNet Swin classifier file → Swin backbone state dict (our names; may lack ``norm0..3``).

    Takes the ``"model"`` entry and drops the classifier head, the final norm and the buffers the
    backbone builds itself (relative-position indices, shifted-window masks).
    """
    state = _weights_entry(checkpoint, SWIN_IMAGENET_ENTRY, path, "an ImageNet Swin checkpoint")
    return {
        key: value
        for key, value in state.items()
        if not key.startswith(SWIN_CLASSIFIER_PREFIXES) and not key.endswith(BUILT_BUFFER_SUFFIXES)
    }


def convert_video_swin_kinetics_state(
    checkpoint: Mapping[str, Any], path: str | os.PathLike = ""
) -> dict[str, Tensor]:
    """Kinetics/SSv2 Video Swin recogniser file → Video Swin backbone state dict (our names).

    Keeps the ``"state_dict"`` keys under ``backbone.`` (dropping the classification head), sums the
    patch-embedding kernel over its temporal axis (``[C, 3, 2, 4, 4]`` → ``[C, 3, 1, 4, 4]``, as the
    original does for its (1, 4, 4) patches), drops the final norm and the relative-position index
    buffers, and moves ``layers.{s}.downsample.*`` to ``downsamples.{s}.*``.
    """
    state = _weights_entry(checkpoint, VIDEO_SWIN_KINETICS_ENTRY, path, "a Kinetics Video Swin checkpoint")
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(VIDEO_SWIN_KINETICS_PREFIX):
            continue
        key = key[len(VIDEO_SWIN_KINETICS_PREFIX):]
        if key.startswith(VIDEO_SWIN_FINAL_NORM_PREFIX) or key.endswith(BUILT_BUFFER_SUFFIXES):
            continue
        if key == "patch_embed.proj.weight" and value.ndim == 5:
            value = value.sum(dim=2, keepdim=True)  # [C, 3, 1, 4, 4]
        downsample = _STAGE_DOWNSAMPLE.fullmatch(key)
        if downsample:
            key = f"downsamples.{downsample.group(1)}.{downsample.group(2)}"
        converted[key] = value
    return converted


def load_swin_imagenet_weights(body: nn.Module, path: str | os.PathLike, *, backbone: str) -> LoadReport:
    """Fill a Swin backbone from an official ImageNet-1k/22k Swin classifier file.

    Loaded non-strictly, as the original does: the per-stage output norms ``norm0..3`` are not in
    these files and keep their initialisation; other missing or unexpected keys are logged.

    Raises:
        CheckpointMismatchError: the file has no ``"model"`` entry, or holds another Swin size or
            another architecture (the message names both layouts), or a shape differs.
    """
    state = convert_swin_imagenet_state(load_checkpoint(path), path)
    _check_layout(body, state, path, backbone)
    report = load_model_state(body, _keep_built_buffers(body, state), strict=False, source=str(path))
    unexpected_missing = [key for key in report.missing_keys if not SWIN_STAGE_NORM_PATTERN.fullmatch(key)]
    if unexpected_missing or report.unexpected_keys:
        logger.warning(
            "%s: %d backbone keys not in the file: %s; %d file keys not used: %s", path,
            len(unexpected_missing), _first_keys(unexpected_missing),
            len(report.unexpected_keys), _first_keys(list(report.unexpected_keys)),
        )
    logger.info("loaded %s ImageNet weights from %s (stage norms norm0..3 keep their initialisation)", backbone, path)
    return report


def load_video_swin_kinetics_weights(body: nn.Module, path: str | os.PathLike, *, backbone: str) -> LoadReport:
    """Fill a Video Swin backbone from an official Kinetics-400/600 (or SSv2) Video Swin file, strictly.

    Raises:
        CheckpointMismatchError: the file has no ``"state_dict"`` entry, holds another Video Swin size
            or another architecture (the message names both layouts), or keys are missing/unexpected.
    """
    state = convert_video_swin_kinetics_state(load_checkpoint(path), path)
    _check_layout(body, state, path, backbone)
    report = load_model_state(body, _keep_built_buffers(body, state), strict=True, source=str(path))
    logger.info("loaded %s Kinetics weights from %s", backbone, path)
    return report
