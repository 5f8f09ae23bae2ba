"""Trained models without flags: a checkpoint, a model folder or a Hugging Face Hub id → a ready ReferFormer.

Every entry point that loads weights (``demo.py --checkpoint``, ``inference_*.py --resume``,
``main.py --eval --resume``) and :meth:`ReferFormer.from_pretrained` accept three kinds of source:

* a **checkpoint file** written by ``main.py`` or by the original ReferFormer (``.pth``): the model
  options come from the training options it stores (``"args"``); a bare state dict's are read off
  its keys and shapes (:func:`util.checkpoint.infer_model_options`);
* a **model folder**, as :func:`save_pretrained` and ``tools/export_model.py`` write it::

      model.safetensors   the weights; each tied tensor once (re-tied on loading); reading runs no code
      config.json         the model options (:data:`opts.STORED_MODEL_OPTIONS`) and the class count
      text_encoder/       the RoBERTa config and tokenizer (its weights are in model.safetensors), unless
                          config.json names a text encoder instead ("roberta-base": from the local
                          Hugging Face cache)
      README.md           the model card

* a **Hugging Face Hub repository id** (``owner/name``) holding such a folder: fetched into the
  Hugging Face cache with ``huggingface_hub`` (with ``HF_HUB_OFFLINE=1`` only the cache is read).

The model is built with the stored options wherever the command line does not give one; a given
flag that contradicts a stored option is an error if the option shapes the weights, else a warning
(:func:`opts.merge_model_options`). A text encoder stored as a relative directory is looked for from
the working directory, then from each folder above the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from models.referformer import ReferFormer
from opts import (DATASETS, GIVEN_OPTIONS, MODEL_OPTIONS, STORED_MODEL_OPTIONS, format_flags, get_args_parser,
                  given_options, merge_model_options, num_classes_for)
from util.checkpoint import (CheckpointMismatchError, infer_model_options, load_checkpoint, load_trained_state,
                             load_weights_file, model_state_from_checkpoint, save_weights_file)
from util.io import atomic_write

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TEXT_ENCODER_DIR = "text_encoder"
CARD_FILE = "README.md"
# config.json: what kind of model, and the layout version of this folder format.
MODEL_TYPE = "referformer"
FORMAT_VERSION = 1
CONFIG_HEADER = ("model_type", "format_version", "num_classes")
# owner/name, as the Hugging Face Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
# Suffixes of weight files: a missing file with one of them is never taken for a Hub id.
WEIGHTS_SUFFIXES = (".pth", ".pt", ".pkl", ".bin", ".safetensors")


@dataclass(frozen=True)
class TrainedWeights:
    """What a checkpoint file or a model folder holds.

    Attributes:
        path: the checkpoint file or the model folder.
        weights_file: the file the tensors were read from (for messages).
        state: the model state dict, in this code base's key names.
        options: the stored model options (a checkpoint's ``"args"``, a folder's config), with a stored
            text-encoder directory resolved to where it is found; None for a bare state dict.
        training: a checkpoint's training record (its ``"args"`` as a dict and ``"epoch"``); empty for folders.
    """

    path: Path
    weights_file: Path
    state: dict[str, Tensor]
    options: dict[str, Any] | None
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """What the README.md of a model folder says beyond its options (all optional).

    Attributes:
        title: the heading (default: "ReferFormer" and the backbone).
        trained_on: the training data, in words.
        scores: metric name → value (e.g. ``{"J&F": 61.1}``), with ``scores_source`` saying where they come from.
        training: further facts about the training run (name → value), e.g. epochs.
        load_name: how users name the model when loading it: a Hub id or a folder path.
    """

    title: str | None = None
    trained_on: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    scores_source: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    load_name: str | None = None


# ----------------------------------------------------------------------------- where the weights are
def resolve_source(source: str | os.PathLike, *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """The local checkpoint file or model folder that ``source`` names.

    Args:
        source: a checkpoint file, a model folder, or a Hugging Face Hub repository id (``owner/name``), which
            is used only when no such local path exists.
        revision: the Hub revision (branch, tag or commit; default ``main``).
        cache_dir: the Hugging Face cache (default: ``HF_HUB_CACHE``, i.e. ``$HF_HOME/hub``).
        local_files_only: never download, only read the cache (as ``HF_HUB_OFFLINE=1`` does).

    Raises:
        FileNotFoundError: no such local path, and no such Hub repository (in the cache, when offline);
            the message says what was tried.
    """
    path = Path(source)
    if path.exists():
        return path
    text = str(source)
    if not HUB_ID.fullmatch(text) or text.lower().endswith(WEIGHTS_SUFFIXES):
        raise FileNotFoundError(f"{text} does not exist: pass a checkpoint file (.pth), a model folder "
                                f"({CONFIG_FILE} + {WEIGHTS_FILE}) or a Hugging Face Hub repository id (owner/name)")
    import huggingface_hub

    offline = local_files_only or huggingface_hub.constants.is_offline_mode()
    try:
        return Path(huggingface_hub.snapshot_download(text, revision=revision, cache_dir=cache_dir,
                                                      local_files_only=offline))
    except (OSError, ValueError) as error:
        where = ("in the local Hugging Face cache (offline: nothing is downloaded)" if offline
                 else "on the Hugging Face Hub")
        raise FileNotFoundError(f"{text} is neither a local file or folder nor a model {where}: "
                                f"{type(error).__name__}: {error}") from error


def read_trained_weights(path: str | os.PathLike, *, weights_only: bool = True) -> TrainedWeights:
    """Read a checkpoint file or a model folder (see the module docstring) onto the CPU.

    Args:
        path: a local checkpoint file, model folder, or a folder's ``model.safetensors``.
        weights_only: for checkpoint files: refuse pickled objects other than tensors and the options
            (:func:`util.checkpoint.load_checkpoint`). Model folders never unpickle.

    Raises:
        FileNotFoundError: a folder lacks ``config.json`` or ``model.safetensors``.
        ValueError: ``config.json`` is not a ReferFormer config (naming the file and the problem), or the
            checkpoint holds no model state dict.
        util.checkpoint.DamagedCheckpointError: a truncated or corrupted file.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise FileNotFoundError(
                    f"{path} is not a model folder: it has no {needed.name}. A model folder holds {CONFIG_FILE} (the "
                    f"model options) and {WEIGHTS_FILE} (tools/export_model.py or save_pretrained writes one)"
                )
        options = read_config(config_path)
        stored_encoder = path / options["text_encoder"]
        if stored_encoder.is_dir():
            options["text_encoder"] = str(stored_encoder)
        return TrainedWeights(path, weights_path, load_weights_file(weights_path), options)
    checkpoint = load_checkpoint(path, weights_only=weights_only)
    state = model_state_from_checkpoint(checkpoint, source=str(path))
    saved = checkpoint.get("args") if isinstance(checkpoint, Mapping) else None
    if not isinstance(saved, (argparse.Namespace, Mapping)):
        return TrainedWeights(path, path, state, None)
    saved = dict(vars(saved) if isinstance(saved, argparse.Namespace) else saved)
    options = {dest: saved[dest] for dest in STORED_MODEL_OPTIONS if dest in saved}
    if "text_encoder" in options:
        options["text_encoder"] = locate_text_encoder(options["text_encoder"], path)
    training = {"args": saved, **({"epoch": checkpoint["epoch"]} if "epoch" in checkpoint else {})}
    return TrainedWeights(path, path, state, options, training)


def locate_text_encoder(stored: str, checkpoint: Path) -> str:
    """Where the text encoder a checkpoint names is: ``stored`` if it is a directory from the working directory
    (or absolute), else the first folder above the checkpoint that holds ``stored``; ``stored`` unchanged when
    none does (a Hugging Face model name, or a directory that is missing, which loading reports)."""
    candidates = [Path(stored)]
    if not Path(stored).is_absolute():
        candidates += [folder / stored for folder in checkpoint.resolve().parents]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate)
    return stored


def read_config(path: Path) -> dict[str, Any]:
    """The model options of a model folder's ``config.json``, checked against the options of ``opts.py``.

    Raises:
        ValueError: not JSON, not a ReferFormer config, options missing or unknown, a value of the wrong type or
            an unknown backbone, or a class count that the options do not give; naming the file.
    """
    from models.backbone import BACKBONES

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} is not a ReferFormer config: its model_type is {found!r}, not {MODEL_TYPE!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config.get('format_version')!r}; this code reads version "
                         f"{FORMAT_VERSION}")
    missing = [dest for dest in STORED_MODEL_OPTIONS if dest not in config]
    unknown = sorted(set(config) - set(STORED_MODEL_OPTIONS) - set(CONFIG_HEADER))
    if missing or unknown:
        raise ValueError(f"{path}: " + "; ".join(
            part for part in (missing and f"options missing: {', '.join(missing)}",
                              unknown and f"unknown entries: {', '.join(unknown)}") if part))
    defaults = vars(get_args_parser(add_help=False).parse_args([]))
    wrong = [f"{dest} = {config[dest]!r} (expected {type(defaults[dest]).__name__})" for dest in STORED_MODEL_OPTIONS
             if type(config[dest]) is not type(defaults[dest])]
    if wrong:
        raise ValueError(f"{path}: values of the wrong type: {', '.join(wrong)}")
    if config["backbone"] not in BACKBONES:
        raise ValueError(f"{path} names an unknown backbone {config['backbone']!r}; known: {', '.join(BACKBONES)}")
    if config["dataset_file"] not in DATASETS:
        raise ValueError(f"{path} names an unknown dataset_file {config['dataset_file']!r}; known: "
                         f"{', '.join(DATASETS)}")
    options = {dest: config[dest] for dest in STORED_MODEL_OPTIONS}
    num_classes = num_classes_for(argparse.Namespace(**options))
    if config.get("num_classes") != num_classes:
        raise ValueError(f"{path}: num_classes is {config.get('num_classes')!r}, but binary = {options['binary']} and "
                         f"dataset_file = {options['dataset_file']!r} give {num_classes} classes")
    return options


# ----------------------------------------------------------------------------- building
def trained_model_args(args: argparse.Namespace, weights: TrainedWeights) -> argparse.Namespace:
    """``args`` with the model options of ``weights`` wherever the command line does not give them
    (:func:`opts.merge_model_options`); for a bare state dict, the options read off its keys and shapes."""
    if weights.options is not None:
        return merge_model_options(args, weights.options, source=str(weights.path))
    inferred = infer_model_options(weights.state, run_options=args, source=str(weights.path))
    logger.info("%s stores no model options; its keys and shapes give them (--dilation, which changes no "
                "parameter, and the text encoder cannot be read off them)", weights.path)
    return merge_model_options(args, inferred, source=str(weights.path), inferred=True)


def build_trained_model(args: argparse.Namespace, weights: TrainedWeights) -> tuple[ReferFormer, argparse.Namespace]:
    """The model of ``weights`` in eval mode, built with :func:`trained_model_args` and loaded strictly.

    The text encoder is built from its config (its weights, pooler included, are in ``weights``).

    Returns:
        ``(model, options)``: the options it was built with.

    Raises:
        FileNotFoundError: the text encoder is not found (naming where it was looked for).
        ValueError: contradicting flags (:func:`opts.merge_model_options`).
        util.checkpoint.CheckpointMismatchError: the weights do not fit the options (naming the flags).
    """
    from models import build_model
    from models.text_encoder import load_text_encoder, load_tokenizer

    options = trained_model_args(args, weights)
    try:
        text_encoder = load_text_encoder(options.text_encoder, pretrained=False)
        tokenizer = load_tokenizer(options.text_encoder)
    except FileNotFoundError as error:
        if "text_encoder" in given_options(args) or weights.options is None:
            raise
        if weights.path.is_dir():
            named = (f"{weights.path / CONFIG_FILE} names the text encoder {options.text_encoder}, which is neither a "
                     f"folder of {weights.path} nor a model in the local Hugging Face cache")
        else:
            named = (f"{weights.path} was trained with --text_encoder {options.text_encoder}, which is neither a "
                     "directory from the working directory or from a folder above the checkpoint nor a model in the "
                     "local Hugging Face cache")
        raise FileNotFoundError(f"{named}. Pass --text_encoder DIR (a RoBERTa config and tokenizer in save_pretrained "
                                f"layout). ({error})") from error
    model, _, _ = build_model(options, text_encoder=text_encoder, tokenizer=tokenizer)
    try:
        load_trained_state(model, weights.state, options, saved_options=weights.options,
                           source=str(weights.weights_file))
    except CheckpointMismatchError as error:
        if not weights.path.is_dir():
            raise
        raise CheckpointMismatchError(f"{error}\n{_config_mismatch(weights, options)}", keys=error.keys) from None
    logger.info("model of %s: %s", weights.path, describe_model_options(vars(options)))
    return model.eval(), options


def _config_mismatch(weights: TrainedWeights, options: argparse.Namespace) -> str:
    """Why a model folder's weights do not fit its config.json: the options the weights' shapes give instead."""
    config = weights.path / CONFIG_FILE
    try:
        fitting = infer_model_options(weights.state, run_options=options, source=str(weights.weights_file))
    except ValueError as error:
        return f"{config} does not describe these weights ({error})."
    differing = [dest for dest in fitting if fitting[dest] != getattr(options, dest)]
    return (f"{config} does not describe these weights: they fit {format_flags(fitting, differing)}, where the model "
            f"was built with {format_flags(vars(options), differing)}. {CONFIG_FILE} and {WEIGHTS_FILE} must come "
            "from one export.")


def load_trained_model(args: argparse.Namespace, source: str | os.PathLike) -> tuple[ReferFormer, argparse.Namespace]:
    """The model of ``source`` (checkpoint file, model folder, Hub id) for this run's ``args``, in eval mode.

    Returns:
        ``(model, options)`` as :func:`build_trained_model`.
    """
    weights = read_trained_weights(resolve_source(source), weights_only=not args.unsafe_load)
    return build_trained_model(args, weights)


def describe_model_options(options: Mapping[str, Any]) -> str:
    """The model options as flags, e.g. ``--backbone resnet18 --hidden_dim 64 ... --binary``."""
    return format_flags(options, [*MODEL_OPTIONS, "binary", "dataset_file"])


def from_pretrained(source: str | os.PathLike, *, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                    unsafe_load: bool = False, **options: Any) -> ReferFormer:
    """The model of a checkpoint file, a model folder or a Hub id, ready for inference (eval mode, CPU).

    Args:
        source, revision, cache_dir, local_files_only: as :func:`resolve_source`.
        unsafe_load: allow pickled objects in a checkpoint file (only for trusted files).
        **options: options of ``opts.py`` by name (``text_encoder="weights/roberta-base"``, ``nheads=4``),
            as if given on the command line: they replace what the source stores, and must not contradict
            its options that shape the weights.

    Raises:
        TypeError: an option name that ``opts.py`` does not have.
        and the errors of :func:`resolve_source` and :func:`build_trained_model`.
    """
    defaults = vars(get_args_parser(add_help=False).parse_args([]))
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"unknown options {unknown}: pass options of opts.py by their names (e.g. text_encoder)")
    given = tuple(sorted(options))
    args = argparse.Namespace(**{**defaults, **options, "unsafe_load": unsafe_load, GIVEN_OPTIONS: given})
    path = resolve_source(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    model, _ = build_trained_model(args, read_trained_weights(path, weights_only=not unsafe_load))
    return model


# ----------------------------------------------------------------------------- writing a model folder
def save_pretrained(model: ReferFormer, directory: str | os.PathLike, *, text_encoder_name: str | None = None,
                    card: ModelCard | None = None) -> Path:
    """Write ``model`` as a model folder (see the module docstring) that :func:`from_pretrained` reads.

    Args:
        model: built by :func:`models.build_model` (which records its options in ``model.config``).
        directory: created if missing; files of the same names are replaced.
        text_encoder_name: reference the text encoder by this name (e.g. ``roberta-base``, loaded from the
            Hugging Face cache) instead of saving its config and tokenizer in ``text_encoder/``.
        card: what the model card says beyond the options.

    Returns:
        ``directory``.
    """
    options = getattr(model, "config", None)
    if not isinstance(options, Mapping):
        raise ValueError("this model records no options (model.config): build it with models.build_model or load it "
                         "with ReferFormer.from_pretrained")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights_file(model, directory / WEIGHTS_FILE)
    if text_encoder_name is None:
        # the config and tokenizer only: every text-encoder weight (the pooler too) is in model.safetensors
        model.text_encoder.config.save_pretrained(directory / TEXT_ENCODER_DIR)
        model.tokenizer.save_pretrained(directory / TEXT_ENCODER_DIR)
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **dict(options),
              "text_encoder": TEXT_ENCODER_DIR if text_encoder_name is None else text_encoder_name,
              "num_classes": num_classes_for(argparse.Namespace(**options))}
    with atomic_write(directory / CONFIG_FILE) as file:
        json.dump(config, file, indent=2)
        file.write("\n")
    with atomic_write(directory / CARD_FILE) as file:
        file.write(model_card(config, card or ModelCard(), load_name=(card and card.load_name) or str(directory)))
    return directory


def model_card(config: Mapping[str, Any], card: ModelCard, load_name: str) -> str:
    """The README.md of a model folder: what it is, how it was trained, its scores and options, how to load it."""
    title = card.title or f"ReferFormer ({config['backbone']})"
    lines = [
        "---", "library_name: referformer", "tags:", "- referring-video-object-segmentation", "- video-segmentation",
        "---", "", f"# {title}", "",
        'ReferFormer ("Language as Queries for Referring Video Object Segmentation", Wu et al., CVPR 2022) segments '
        "the object a sentence describes in every frame of a video. These weights are for the ReferFormer "
        "re-implementation whose `demo.py`, `inference_*.py` and `ReferFormer.from_pretrained` read this folder.",
        "",
    ]
    if card.trained_on or card.training:
        lines += ["## Training", ""]
        if card.trained_on:
            lines.append(f"- data: {card.trained_on}")
        lines += [f"- {name}: {value}" for name, value in card.training.items()]
        lines.append("")
    lines += ["## Scores", ""]
    if card.scores:
        lines += ["| metric | value |", "|---|---|",
                  *(f"| {name} | {value:g} |" for name, value in card.scores.items())]
        if card.scores_source:
            lines += ["", f"Source: {card.scores_source}."]
    else:
        lines.append("Not measured yet.")
    text_encoder = config["text_encoder"]
    lines += [
        "", "## Model options", "",
        "The options the model was built with (`config.json`, named as the command-line flags); every loader reads "
        "them, so no model flag is needed.",
        "", "| option | value |", "|---|---|",
        *(f"| {dest} | {json.dumps(config[dest])} |" for dest in STORED_MODEL_OPTIONS if dest != "text_encoder"),
        f"| classes | {config['num_classes']} |",
        "| text encoder | "
        + ("`text_encoder/` (its config and tokenizer; its weights are in `model.safetensors`) |"
           if text_encoder == TEXT_ENCODER_DIR else
           f"`{text_encoder}`: its config and tokenizer come from the local Hugging Face cache, its weights from "
           "`model.safetensors` |"),
        "", "## How to load", "", "```bash",
        f'python demo.py --video VIDEO --text "the person riding a bike" --checkpoint {load_name}',
        f"python inference_ytvos.py --resume {load_name} --ytvos_path data/ref-youtube-vos --ngpu 1",
        "```", "", "```python", "from models import ReferFormer", "",
        f'model = ReferFormer.from_pretrained("{load_name}")  # eval mode, on the CPU', "```", "",
        "## Files", "",
        f"- `{WEIGHTS_FILE}`: the weights (tied tensors stored once: `transformer.decoder.bbox_embed.*` is "
        "`bbox_embed.*`); reading it runs no code",
        f"- `{CONFIG_FILE}`: the model options",
        *([f"- `{TEXT_ENCODER_DIR}/`: the RoBERTa config and tokenizer"] if text_encoder == TEXT_ENCODER_DIR else []),
        f"- `{CARD_FILE}`: this card", "",
    ]
    return "\n".join(lines)
