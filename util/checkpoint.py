"""Reading, converting, loading and writing checkpoints: the one place that knows their layout.

A training checkpoint of the original (and of this re-implementation) is a dict
``{"model": state_dict, "optimizer": ..., "lr_scheduler": ..., "epoch": int,
"args": argparse.Namespace}``; the original wrote it with the legacy (non-zip) serialisation.
Loaders read ``"model"`` (and the rest only to resume training).

The three steps, each usable alone:

1. :func:`load_checkpoint` — ``torch.load`` on the CPU, ``weights_only=True`` by default with
   ``argparse.Namespace`` allowed (the only non-tensor class in the original's checkpoints).
2. :func:`model_state_from_checkpoint` — the single conversion from a checkpoint's state dict to
   this code base's parameter names: strips a DDP ``module.`` prefix and drops keys that older
   library versions persisted but the model no longer has.
3. :func:`load_model_state` — loads into a model, strict by default, with an error that lists
   missing, unexpected and wrongly shaped keys; keeps tied parameters tied.

:func:`load_trained_state` loads for inference, the demo and ``--eval``, adding to a mismatch error
the model options the checkpoint was trained with that differ from this run's;
:func:`infer_model_options` reads the model options off a state dict's keys and shapes (for
checkpoints that do not store them). Model folders (``models/pretrained.py``) keep their weights in
safetensors files: :func:`save_weights_file` and :func:`load_weights_file`.
:func:`save_checkpoint` writes atomically (temporary file + rename);
:func:`load_resnet_imagenet_weights` reads torchvision's ImageNet ResNet files and
:func:`torchvision_weights_file` finds (or downloads) them in the torch hub cache.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from opts import describe_model_option_differences, given_options
from util.io import atomic_write

logger = logging.getLogger(__name__)

# Classes a checkpoint may contain besides tensors and plain Python containers
# (``args`` is an argparse.Namespace in the original's training checkpoints).
SAFE_CHECKPOINT_GLOBALS = (argparse.Namespace,)
# Key prefix added by DistributedDataParallel when a wrapped model's state dict is saved.
DDP_PREFIX = "module."
# Keys some checkpoints hold that no module of ours has: RoBERTa buffers that older transformers
# versions persisted (position_ids before 4.31; token_type_ids only in some conversions).
STALE_KEYS = frozenset({"text_encoder.embeddings.position_ids", "text_encoder.embeddings.token_type_ids"})
# BatchNorm step counters: the ordinary BatchNorm of --backbone_from_scratch has one (loaded when the
# checkpoint holds it, so that a resumed run continues it), FrozenBatchNorm2d has none (torchvision's
# ImageNet files and from-scratch checkpoints carry them), and BatchNorm reads it only with
# momentum=None, which it does not use: so a counter is never required and is ignored where the
# model has none.
BATCHNORM_COUNTER_SUFFIX = "num_batches_tracked"
# Counters left by profiling hooks (thop).
STALE_KEY_SUFFIXES = ("total_ops", "total_params")
# The ImageNet classifier of torchvision ResNets, which the backbone body does not have.
RESNET_CLASSIFIER_PREFIX = "fc."
# Where torch.hub (and torchvision's weights API) keeps downloaded weights: <torch.hub.get_dir()>/checkpoints,
# i.e. $TORCH_HOME/hub/checkpoints.
HUB_CHECKPOINTS_DIR = "checkpoints"
# Key prefix of the text encoder in ReferFormer's state dict.
TEXT_ENCODER_PREFIX = "text_encoder."
# How many keys of each kind a mismatch error lists before summarising.
MAX_LISTED_KEYS = 20
# The first bytes of a zip file: torch.save's default format (the original's files use the legacy pickle format).
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model (missing, unexpected or wrongly shaped keys).

    ``keys`` names the offending state-dict keys (missing, unexpected and wrongly shaped ones).
    """

    def __init__(self, message: str, keys: Sequence[str] = ()):
        super().__init__(message)
        self.keys = tuple(keys)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs pickled objects that ``weights_only`` loading refuses."""


class DamagedCheckpointError(ValueError):
    """A weights file is truncated or corrupted: it cannot be read at all."""


@dataclass(frozen=True)
class LoadReport:
    """Keys that did not load (non-strict mode): model keys absent from the checkpoint, and
    checkpoint keys the model does not have. Tied aliases filled from each other are not missing."""

    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing_keys and not self.unexpected_keys


def load_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> dict:
    """Read a checkpoint file onto the CPU (zip or legacy serialisation).

    Args:
        path: checkpoint file.
        weights_only: refuse pickled objects other than tensors, plain containers and
            :data:`SAFE_CHECKPOINT_GLOBALS`. Pass ``False`` only for files you trust: unpickling can
            run arbitrary code.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: ``weights_only`` loading refused the file's contents.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        pickled_class = _refused_class(str(err))
        if not weights_only or pickled_class is None:
            raise _damaged(path, err) from err
        raise UnsafeCheckpointError(
            f"{path} could not be loaded with weights_only=True: it contains a pickled {pickled_class}, which is not "
            "allow-listed. If you trust this file, load it with weights_only=False (command line: --unsafe_load); "
            "unpickling an untrusted file can run arbitrary code."
        ) from err
    except (PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, struct.error) as err:
        # What torch.load raises on a file that ends early or has corrupted bytes depends on where the
        # damage is (miniz errors, EOFError, struct.error, IndexError, ...): none names the file.
        raise _damaged(path, err) from err


def _refused_class(message: str) -> str | None:
    """The class named by torch's "Unsupported global" weights-only error, or None if the error is another
    (a truncated pickle stream reads as a global with an empty or broken name)."""
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsupported and re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", unsupported.group(1)):
        return unsupported.group(1)
    return None


def _damaged(path: Path, error: BaseException) -> DamagedCheckpointError:
    """The error for a checkpoint that cannot be read: which file, its size, what kind of damage, what to do."""
    with open(path, "rb") as file:
        magic = file.read(len(ZIP_MAGIC))
    size = path.stat().st_size
    if size == 0:
        how = "it is empty"
    elif magic == ZIP_MAGIC and not zipfile.is_zipfile(path):
        how = ("it is a zip-format checkpoint without its closing index: the file ends early (an interrupted save, "
               "copy or download)")
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unexpected end of data"
        how = f"reading it failed with {type(error).__name__}: {reason[:200]}"
    return DamagedCheckpointError(
        f"checkpoint {path} ({size} bytes) is truncated or corrupted: {how}. Copy or download it again; for a "
        "training output directory, --resume auto takes the newest complete checkpoint."
    )


def model_state_from_checkpoint(checkpoint: Mapping[str, Any], *, source: str | None = None) -> dict[str, Tensor]:
    """The model state dict of a checkpoint, converted to this code base's key names.

    This is the one conversion every loader goes through; key renames for foreign checkpoints
    belong here. It

    * takes ``checkpoint["model"]``, or ``checkpoint`` itself if it is a bare state dict;
    * strips the DDP prefix ``module.`` when every key carries it;
    * drops :data:`STALE_KEYS` and keys ending in :data:`STALE_KEY_SUFFIXES`.

    The result keeps the state dict's ``_metadata`` (module versions), re-keyed the same way.

    Args:
        checkpoint: what :func:`load_checkpoint` returned.
        source: file name for error messages.
    """
    where = f" in {source}" if source else ""
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        top_level = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"no model state dict{where}: expected a dict of tensors, or a checkpoint whose 'model' entry is one; "
            f"found {top_level}"
        )
    strip_prefix = bool(state) and all(key.startswith(DDP_PREFIX) for key in state)
    converted: OrderedDict[str, Tensor] = OrderedDict()
    dropped = []
    for key, value in state.items():
        new_key = key[len(DDP_PREFIX):] if strip_prefix else key
        if new_key in STALE_KEYS or new_key.endswith(STALE_KEY_SUFFIXES):
            dropped.append(new_key)
        else:
            converted[new_key] = value
    if dropped:
        logger.info("dropped %d checkpoint keys%s that older library versions or profiling tools saved and no "
                    "module uses: %s", len(dropped), where, _first_keys(dropped))
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        converted._metadata = _convert_metadata(metadata, strip_prefix)  # type: ignore[attr-defined]
    return converted


def _convert_metadata(metadata: Mapping[str, Any], strip_prefix: bool) -> OrderedDict:
    """Re-key state-dict metadata (keys are module prefixes without the trailing dot, "" = root)."""
    if not strip_prefix:
        return OrderedDict(metadata)
    ddp_root = DDP_PREFIX[:-1]
    # The wrapped model's root "module" becomes the root; the DDP wrapper's own root entry goes.
    return OrderedDict(
        ("" if prefix == ddp_root else prefix[len(DDP_PREFIX):], value)
        for prefix, value in metadata.items()
        if prefix == ddp_root or prefix.startswith(DDP_PREFIX)
    )


def tied_key_groups(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict keys that name one and the same tensor, in state-dict order.

    With ``--with_box_refine`` the model's ``bbox_embed`` list is also registered as
    ``transformer.decoder.bbox_embed``; without it, ``class_embed.{l}`` and ``bbox_embed.{l}``
    repeat one module for every decoder layer.
    """
    groups: dict[int, list[str]] = defaultdict(list)
    for key, tensor in model.state_dict(keep_vars=True).items():
        groups[id(tensor)].append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def load_model_state(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True, source: str | None = None
) -> LoadReport:
    """Copy ``state_dict`` into ``model``, checking every key and shape.

    Tied parameters stay tied (they are one tensor, filled in place). Their checkpoint entries
    must agree: an original checkpoint stores the same tensor under every alias (and the golden
    reference weights copy ``bbox_embed.*`` over ``transformer.decoder.bbox_embed.*``), so
    disagreeing entries mean a corrupted or foreign file and are rejected rather than silently
    resolved. If only some aliases are present (a checkpoint that stored each tensor once), the
    others are filled from them.

    Args:
        model: the model to fill.
        state_dict: from :func:`model_state_from_checkpoint`.
        strict: raise if any key is missing or unexpected (BatchNorm step counters are neither: see
            :data:`BATCHNORM_COUNTER_SUFFIX`). Non-strict mode returns them instead.
        source: checkpoint file name for error messages.

    Returns:
        The keys that did not load (always empty in strict mode).

    Raises:
        CheckpointMismatchError: shapes differ (in either mode), tied entries disagree, or, in
            strict mode, keys are missing or unexpected.
    """
    where = f"checkpoint {source}" if source else "state dict"
    model_state = model.state_dict()
    state = dict(state_dict)
    conflicts = []
    for keys in tied_key_groups(model):
        present = [key for key in keys if key in state]
        if not present:
            continue
        reference = state[present[0]]
        conflicts += [
            f"{key} != {present[0]}"
            for key in present[1:]
            if state[key].shape != reference.shape or not torch.equal(state[key], reference)
        ]
        for key in keys:
            state.setdefault(key, reference)
    if conflicts:
        raise CheckpointMismatchError(
            f"{where} holds different values under names of one tied tensor (e.g. bbox_embed.* and "
            f"transformer.decoder.bbox_embed.* with --with_box_refine), so it cannot be loaded faithfully: "
            f"{len(conflicts)} conflicts: {_first_keys(conflicts)}"
        )

    missing = [key for key in model_state if key not in state and not key.endswith(BATCHNORM_COUNTER_SUFFIX)]
    unexpected = [key for key in state if key not in model_state and not key.endswith(BATCHNORM_COUNTER_SUFFIX)]
    wrong_shape = [key for key in model_state if key in state and state[key].shape != model_state[key].shape]
    mismatched = [f"{key}: checkpoint {list(state[key].shape)} vs model {list(model_state[key].shape)}"
                  for key in wrong_shape]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"{where} does not match the model:"]
        for label, keys in (
            ("missing keys (in the model, not in the checkpoint)", missing),
            ("unexpected keys (in the checkpoint, not in the model)", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                lines.append(f"  {len(keys)} {label}:")
                lines += [f"    {key}" for key in keys[:MAX_LISTED_KEYS]]
                if len(keys) > MAX_LISTED_KEYS:
                    lines.append(f"    ... and {len(keys) - MAX_LISTED_KEYS} more")
        raise CheckpointMismatchError("\n".join(lines), keys=[*missing, *unexpected, *wrong_shape])

    metadata = getattr(state_dict, "_metadata", None)
    loadable = OrderedDict((key, value) for key, value in state.items() if key in model_state)
    if metadata is not None:
        loadable._metadata = metadata  # type: ignore[attr-defined]
    model.load_state_dict(loadable, strict=False)
    return LoadReport(missing_keys=tuple(missing), unexpected_keys=tuple(unexpected))


def load_trained_state(model: nn.Module, state: Mapping[str, Tensor], args: argparse.Namespace, *,
                       saved_options: argparse.Namespace | Mapping[str, Any] | None, source: str) -> None:
    """Load a trained model's state dict strictly into ``model``, built from ``args`` (inference, the demo, ``--eval``).

    Args:
        model: built from ``args``.
        state: from :func:`model_state_from_checkpoint` or :func:`load_weights_file`.
        args: the options ``model`` was built from.
        saved_options: the options stored with the weights (a checkpoint's ``"args"``, a model folder's
            config), or None.
        source: the weights' file, for messages.

    Raises:
        CheckpointMismatchError: as :func:`load_model_state`. With ``saved_options``, the message ends
            with the model options whose values differ from ``args``
            (:func:`opts.describe_model_option_differences`): the key lists alone do not say which
            flags to change. Text-encoder keys that do not fit are described by the text encoder's size.
    """
    try:
        load_model_state(model, state, source=source)
    except CheckpointMismatchError as error:
        text_encoder_differs = any(key.startswith(TEXT_ENCODER_PREFIX) for key in error.keys)
        hint = None
        if saved_options is not None:
            hint = describe_model_option_differences(saved_options, args, text_encoder_differs=text_encoder_differs)
        sizes = describe_text_encoder(state), describe_text_encoder(model.state_dict())
        if hint is None and text_encoder_differs and None not in sizes:
            hint = (f"Its text encoder ({sizes[0]}) is not the one of --text_encoder {args.text_encoder} ({sizes[1]}): "
                    "pass the text encoder it was trained with.")
        if hint is None:
            raise
        raise CheckpointMismatchError(f"{error}\n{hint}", keys=error.keys) from None


def describe_text_encoder(state: Mapping[str, Tensor]) -> str | None:
    """The size of the RoBERTa text encoder in a ReferFormer state dict, "N layers, width C, vocabulary V"; None
    if it has no RoBERTa word embeddings."""
    layers = 0
    while f"{TEXT_ENCODER_PREFIX}encoder.layer.{layers}.output.dense.weight" in state:
        layers += 1
    embeddings = state.get(f"{TEXT_ENCODER_PREFIX}embeddings.word_embeddings.weight")
    if embeddings is None:
        return None
    vocabulary, width = embeddings.shape
    return f"{layers} layers, width {width}, vocabulary {vocabulary}"


def load_resnet_imagenet_weights(body: nn.Module, path: str | os.PathLike) -> None:
    """Fill a ResNet body (torchvision module names, no ``fc``) from a torchvision ImageNet file.

    The file is a bare state dict as torchvision publishes it (e.g. ``resnet50-0676ba61.pth``,
    ``ResNet50_Weights.IMAGENET1K_V1``, which the original used), with the classifier ``fc.*`` and
    possibly BatchNorm step counters. The classifier is dropped, the counters are ignored; every
    other key must match.
    """
    state = model_state_from_checkpoint(load_checkpoint(path), source=str(path))
    state = {key: value for key, value in state.items() if not key.startswith(RESNET_CLASSIFIER_PREFIX)}
    load_model_state(body, state, source=str(path))


def torchvision_weights_file(weights: torchvision.models.WeightsEnum, *, download: bool) -> Path:
    """The file of torchvision ``weights`` in the torch hub cache, where torchvision's weights API keeps it.

    Args:
        weights: e.g. ``torchvision.models.ResNet50_Weights.IMAGENET1K_V1``.
        download: fetch the file into the cache when it is not there (checking the hash its name
            carries); ``main.py`` lets one process per machine download while the others wait.

    Returns:
        ``<torch.hub.get_dir()>/checkpoints/<file name>`` (e.g. ``resnet50-0676ba61.pth``).

    Raises:
        FileNotFoundError: the file is not in the cache and was not, or could not be, downloaded;
            the message names the file, the directory to put it in, and the alternatives.
    """
    directory = Path(torch.hub.get_dir()) / HUB_CHECKPOINTS_DIR
    name = os.path.basename(urlparse(weights.url).path)
    path = directory / name
    if path.is_file():
        return path
    failure = "it was not downloaded"
    if download:
        directory.mkdir(parents=True, exist_ok=True)
        hash_prefix = torch.hub.HASH_REGEX.search(name)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix.group(1) if hash_prefix else None)
            return path
        except (OSError, RuntimeError) as error:  # no network (URLError is an OSError), or a wrong hash
            failure = f"downloading {weights.url} failed ({error})"
    raise FileNotFoundError(
        f"{name} ({weights}, torchvision's ImageNet weights, which a ResNet backbone starts training from) is not in "
        f"{directory}, and {failure}. Put the file there (on a machine with internet access torchvision downloads it "
        "to the same place under TORCH_HOME), or pass --backbone_pretrained FILE with a torchvision ResNet weights "
        "file, or --backbone_from_scratch to train the ResNet from random weights."
    )


def _first_keys(keys: list[str]) -> str:
    listed = ", ".join(keys[:MAX_LISTED_KEYS])
    return listed + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path`` (:func:`util.io.atomic_write`): if
    serialisation fails, ``path`` keeps its previous content. Parent directories are created."""
    with atomic_write(path, binary=True) as file:
        torch.save(obj, file)


# ----------------------------------------------------------------------------- training checkpoints
# File names in a training output directory: the latest state (rewritten at every save) and one
# file per finished epoch, as the original.
LATEST_CHECKPOINT = "checkpoint.pth"
EPOCH_CHECKPOINT_PATTERN = re.compile(r"checkpoint(\d{4,})\.pth")
# Class-head keys that --pretrained_weights does not load (the original deletes them so that a
# model trained on other classes can be fine-tuned).
CLASS_HEAD_KEY = re.compile(r"class_embed\.\d+\.(weight|bias)")


def epoch_checkpoint_name(epoch: int) -> str:
    """``checkpoint{epoch:04}.pth``."""
    return f"checkpoint{epoch:04}.pth"


def _is_complete(path: Path) -> bool:
    """A zip-serialised checkpoint is complete iff its central directory is readable."""
    return path.is_file() and zipfile.is_zipfile(path)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a training output directory (``--resume auto``).

    ``checkpoint.pth`` is always the newest save (mid-epoch or end of epoch); if it is missing or
    damaged, the highest-numbered ``checkpointNNNN.pth`` is used. Returns None if there is none.
    """
    output_dir = Path(output_dir)
    candidates = [output_dir / LATEST_CHECKPOINT]
    if output_dir.is_dir():
        numbered = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := EPOCH_CHECKPOINT_PATTERN.fullmatch(p.name))]
        candidates += [path for _, path in sorted(numbered, reverse=True)]
    for path in candidates:
        if _is_complete(path):
            return path
        if path.exists():
            logger.warning("ignoring incomplete or damaged checkpoint %s", path)
    return None


def load_pretrained_weights(model: nn.Module, path: str | os.PathLike, *, weights_only: bool = True) -> LoadReport:
    """``--pretrained_weights``: the model weights of a checkpoint, without its class head.

    As in the original, ``class_embed.{l}.weight/bias`` are dropped (the class head keeps its
    fresh initialisation, so checkpoints with another class count load) and the rest loads
    non-strictly; shapes must still match. Missing keys other than the class head are logged.
    """
    state = model_state_from_checkpoint(load_checkpoint(path, weights_only=weights_only), source=str(path))
    state = {key: value for key, value in state.items() if not CLASS_HEAD_KEY.fullmatch(key)}
    report = load_model_state(model, state, strict=False, source=str(path))
    missing = [key for key in report.missing_keys if not CLASS_HEAD_KEY.fullmatch(key)]
    if missing or report.unexpected_keys:
        logger.warning("pretrained weights %s: %d missing keys %s, %d unexpected keys %s", path, len(missing),
                       _first_keys(missing), len(report.unexpected_keys), _first_keys(list(report.unexpected_keys)))
    return report


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


# ============================================================================= Model folders: weights as safetensors
# A model folder's weights (models/pretrained.py writes the folder): a safetensors file, which holds only
# tensors and a string header, so reading it runs no code. Each tied tensor is stored once.
WEIGHTS_FORMAT = "pt"
# Header entry listing, for each tied name left out, the name it is stored under (JSON).
TIED_KEYS_METADATA = "tied_keys"


def save_weights_file(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model``'s state dict as a safetensors file, atomically, each tied tensor once.

    Of every group of :func:`tied_key_groups` only the alphabetically first name is stored
    (``bbox_embed.*`` of the box-refinement heads, not ``transformer.decoder.bbox_embed.*``;
    ``class_embed.0.*`` of heads repeated without box refinement); the header's
    :data:`TIED_KEYS_METADATA` maps each name left out to the stored one, which
    :func:`load_weights_file` gives back under both names; loading into the model keeps its tied
    parameters one tensor.
    """
    from safetensors.torch import save

    state = model.state_dict()
    aliases = {alias: min(keys) for keys in tied_key_groups(model) for alias in keys if alias != min(keys)}
    tensors = {key: value.detach().contiguous() for key, value in state.items() if key not in aliases}
    header = {"format": WEIGHTS_FORMAT, TIED_KEYS_METADATA: json.dumps(aliases), **(metadata or {})}
    with atomic_write(path, binary=True) as file:
        file.write(save(tensors, metadata=header))


def load_weights_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a safetensors weights file onto the CPU (no unpickling), with every tied name.

    The names :func:`save_weights_file` left out (the header's :data:`TIED_KEYS_METADATA`) name the
    tensor of the name they are tied to, so the state dict has the keys of the model.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        DamagedCheckpointError: the file is truncated or not a safetensors file (naming it and the reason).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist or is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            header = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}
        aliases = json.loads(header.get(TIED_KEYS_METADATA, "{}"))
        state.update({alias: state[stored] for alias, stored in aliases.items()})
    except (SafetensorError, json.JSONDecodeError, KeyError) as error:
        raise DamagedCheckpointError(
            f"weights file {path} ({path.stat().st_size} bytes) is truncated or not a safetensors file of this "
            f"code base: {type(error).__name__}: {error}. Copy or download it again."
        ) from error
    return state


# ============================================================================= Model options from keys and shapes
# For a bare state dict (no stored options): the keys and shapes fix every model option but two. --dilation
# changes no parameter (it is not read, this run's value is kept). Deformable attention stores heads x levels x
# points as one dimension, so the heads are this run's --nheads (default 8, as every released model) and the
# sampling points follow from them.
BACKBONE_BODY_PREFIX = "backbone.0.body."
# The controller (an MLP of this many layers) predicts the dynamic mask head's parameters.
CONTROLLER_MLP_LAYERS = 3
# Widest dynamic mask head and most layers tried when solving for the controller's output size.
MAX_DYNAMIC_MASK_CHANNELS = 64
MAX_CONTROLLER_LAYERS = 8


def infer_model_options(state: Mapping[str, Tensor], *, run_options: argparse.Namespace,
                        source: str = "the state dict") -> dict[str, Any]:
    """The model options a ReferFormer state dict was built with, read off its keys and shapes.

    Args:
        state: from :func:`model_state_from_checkpoint` (tensors on any device; only shapes are read).
        run_options: this run's options: its ``nheads`` splits the attention's heads x points, its
            ``dataset_file`` names the class count if it fits (:func:`opts.class_count_options`), and the
            dynamic-mask-head options break a tie between head layouts of the same parameter count.
        source: the file, for messages.

    Returns:
        ``{dest: value}`` for ``backbone``, ``backbone_from_scratch``, ``hidden_dim``,
        ``num_feature_levels``, ``enc_layers``, ``dec_layers``, ``dim_feedforward``, ``nheads``,
        ``enc_n_points``, ``dec_n_points``, ``num_queries``, ``with_box_refine``, ``mask_dim``,
        ``controller_layers``, ``dynamic_mask_channels``, ``rel_coord``, ``binary``, ``dataset_file``
        (not ``dilation`` and ``text_encoder``, which the weights do not tell).

    Raises:
        ValueError: the state dict is not ReferFormer's, its backbone is none of the known ones, or an
            option cannot be told apart; the message names the file and the flags to pass.
    """
    from opts import class_count_options

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise ValueError(f"{source} is not a ReferFormer state dict: it has no {key} (its first keys: "
                             f"{_first_keys(list(state)[:5])})")
        return state[key].shape

    def count(pattern: str) -> int:
        found = 0
        while pattern.format(found) in state:
            found += 1
        return found

    num_levels, hidden_dim = shape("transformer.level_embed")
    options: dict[str, Any] = {"hidden_dim": hidden_dim, "num_feature_levels": num_levels}
    options.update(_infer_backbone(state, source))
    options["enc_layers"] = count("transformer.encoder.layers.{}.norm1.weight")
    options["dec_layers"] = count("transformer.decoder.layers.{}.norm1.weight")
    options["dim_feedforward"] = shape("transformer.decoder.layers.0.linear1.weight")[0]
    heads = run_options.nheads
    for part, key in (("enc", "transformer.encoder.layers.0.self_attn.attention_weights.weight"),
                      ("dec", "transformer.decoder.layers.0.cross_attn.attention_weights.weight")):
        if part == "enc" and not options["enc_layers"]:
            options["enc_n_points"] = run_options.enc_n_points
            continue
        heads_times_points = shape(key)[0] // num_levels
        if heads_times_points % heads:
            raise ValueError(f"{source}: the {part}oder's deformable attention has heads x sampling points = "
                             f"{heads_times_points}, which --nheads {heads} does not divide; pass the --nheads it "
                             "was trained with")
        options[f"{part}_n_points"] = heads_times_points // heads
    options["nheads"] = heads
    options["num_queries"] = shape("query_embed.weight")[0]
    options["with_box_refine"] = "transformer.decoder.bbox_embed.0.layers.0.weight" in state
    options["mask_dim"] = shape("pixel_decoder.mask_features.weight")[0]
    controller_output = shape(f"controller.layers.{CONTROLLER_MLP_LAYERS - 1}.weight")[0]
    options.update(_infer_dynamic_mask_head(controller_output, options["mask_dim"], run_options, source))
    options.update(class_count_options(shape("class_embed.0.weight")[0], run_options.dataset_file))
    return options


def _infer_backbone(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """``backbone`` (and ``backbone_from_scratch``) from the ``backbone.0.body.*`` keys and shapes."""
    from models.swin_transformer import SWIN_VARIANTS
    from models.video_swin_transformer import VIDEO_SWIN_VARIANTS

    body = {key[len(BACKBONE_BODY_PREFIX):]: value for key, value in state.items()
            if key.startswith(BACKBONE_BODY_PREFIX)}
    shapes = {key: tuple(value.shape) for key, value in body.items() if not key.endswith(BATCHNORM_COUNTER_SUFFIX)}
    for name, expected in _resnet_body_shapes().items():
        if shapes == expected:
            # only the ordinary BatchNorm of --backbone_from_scratch counts its steps
            return {"backbone": name,
                    "backbone_from_scratch": any(key.endswith(BATCHNORM_COUNTER_SUFFIX) for key in body)}
    layout = swin_layout(body)
    if layout is not None:
        variants = SWIN_VARIANTS if layout.family == "Swin" else VIDEO_SWIN_VARIANTS
        for name, variant in variants.items():
            if (variant.embed_dim, variant.depths, variant.num_heads) == (layout.embed_dim, layout.depths,
                                                                          layout.num_heads):
                return {"backbone": name, "backbone_from_scratch": False}
    found = str(layout) if layout is not None else (
        f"{len(shapes)} keys such as {_first_keys(sorted(shapes)[:3])}" if shapes else "no backbone.0.body.* keys")
    raise ValueError(f"the backbone weights of {source} are none of the known backbones (ResNet-18/34/50/101, "
                     f"Swin-T/S/B/L, Video-Swin-T/S/B): {found}. Pass --backbone and the other model flags it was "
                     "trained with")


@functools.cache
def _resnet_body_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """``{name: {key: shape}}`` of every ResNet body (FrozenBatchNorm2d, no step counters), built without memory."""
    from models.backbone import RESNET_CHANNELS, FrozenBatchNorm2d, ResNetBody

    layouts = {}
    for name in RESNET_CHANNELS:
        with torch.device("meta"):
            body = ResNetBody(getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d))
        layouts[name] = {key: tuple(value.shape) for key, value in body.state_dict().items()}
    return layouts


def _infer_dynamic_mask_head(controller_output: int, mask_dim: int, run_options: argparse.Namespace,
                             source: str) -> dict[str, Any]:
    """``controller_layers``, ``dynamic_mask_channels`` and ``rel_coord`` whose head has ``controller_output``
    parameters; a tie between layouts of the same count is broken by this run's flags, then by its values."""
    from models.dynamic_mask_head import DynamicMaskHead

    fits = [
        {"controller_layers": layers, "dynamic_mask_channels": channels, "rel_coord": rel_coord}
        for rel_coord in (True, False)
        for channels in range(1, MAX_DYNAMIC_MASK_CHANNELS + 1)
        for layers in range(2, MAX_CONTROLLER_LAYERS + 1)
        if DynamicMaskHead(in_channels=mask_dim, dynamic_mask_channels=channels, num_layers=layers,
                           rel_coord=rel_coord).num_gen_params == controller_output
    ]
    given = given_options(run_options)
    if len(fits) > 1:  # the run's flags choose
        fits = [fit for fit in fits if all(value == getattr(run_options, dest) for dest, value in fit.items()
                                           if dest in given)]
    if len(fits) > 1:  # then the run's values (the defaults unless given), which every released model has
        fits = [fit for fit in fits if all(value == getattr(run_options, dest) for dest, value in fit.items())] or fits
    if len(fits) == 1:
        return fits[0]
    candidates = "; ".join(", ".join(f"{dest} {value}" for dest, value in fit.items()) for fit in fits) or "none"
    raise ValueError(f"{source}: the controller predicts {controller_output} parameters per query, which fit these "
                     f"dynamic mask heads over {mask_dim} mask channels: {candidates}. Pass the checkpoint's "
                     "--controller_layers, --dynamic_mask_channels and (if it had no relative coordinates) "
                     "--no_rel_coord")
