"""Export a trained model as a portable model folder, ready to share or to publish on the Hugging Face Hub.

    python tools/export_model.py output/quickstart/train/checkpoint.pth models/referformer-quickstart \\
        --score "J&F=61.1" --score "J=55.9" --score "F=66.3"
    python tools/export_model.py weights/ytvos_r50.pth models/referformer-r50-ytvos \\
        --text_encoder weights/roberta-base --repo_id OWNER/referformer-r50-ytvos

``CHECKPOINT`` is anything the entry points load: a checkpoint of ``main.py`` or of the original
ReferFormer, a bare state dict (its model options are read off its keys and shapes), a model
folder or a Hugging Face Hub id. ``OUT_DIR`` receives (``models/pretrained.py``):

    model.safetensors   the weights, each tied tensor once (no pickle: loading runs no code)
    config.json         the model options only (nothing about the training run)
    text_encoder/       the RoBERTa config and tokenizer; with --text_encoder_name NAME the folder names
                        the text encoder instead (loaded from the local Hugging Face cache by that name)
    README.md           the model card: training data, training facts, scores, options, how to load

The scores come from ``--score NAME=VALUE``, else from the run's ``eval.json`` or the last
evaluated epoch of its ``log.txt`` beside the checkpoint. The folder is reloaded after writing and
checked to hold the same weights. Model flags are needed only where a checkpoint cannot tell them
(a bare state dict: ``--text_encoder``, and ``--nheads`` / ``--dilation`` if not the defaults).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.pretrained import (ModelCard, build_trained_model, read_trained_weights, resolve_source,  # noqa: E402
                               save_pretrained)
from opts import inference_parser  # noqa: E402
from util.checkpoint import tied_key_groups  # noqa: E402

logger = logging.getLogger("export_model")

# --dataset_file → the training data, in words, for the model card.
DATASET_NAMES = {
    "ytvos": "Ref-YouTube-VOS",
    "davis": "Ref-DAVIS17",
    "ref_shapes": "Ref-Shapes, the synthetic dataset of the CPU quick start (tools/data/make_ref_shapes.py)",
    "a2d": "A2D-Sentences",
    "jhmdb": "JHMDB-Sentences",
    "refcoco": "RefCOCO",
    "refcoco+": "RefCOCO+",
    "refcocog": "RefCOCOg",
    "all": "RefCOCO, RefCOCO+ and RefCOCOg (the image pretraining)",
    "joint": "Ref-YouTube-VOS and RefCOCO/+/g as pseudo-videos (joint training)",
    "mevis": "MeViS",
    "mevis_ytvos": "MeViS and Ref-YouTube-VOS",
}
# Files of a main.py output directory that hold evaluation results (main.py --eval, and per-epoch logs).
EVAL_FILE = "eval.json"
EPOCH_LOG = "log.txt"
TEST_PREFIX = "test_"


def get_parser() -> argparse.ArgumentParser:
    parser = inference_parser(
        "tools/export_model.py",
        "Export a checkpoint (main.py's, the original's, a bare state dict, a model folder or a Hub id) as a model "
        "folder: model.safetensors, config.json, text_encoder/, README.md.",
    )
    export = parser.add_argument_group("export")
    export.add_argument("checkpoint", help="the model: a checkpoint file, a model folder or a Hugging Face Hub id")
    export.add_argument("out_dir", type=Path, help="the model folder to write (created; same-named files replaced)")
    export.add_argument("--text_encoder_name", default=None, metavar="NAME",
                        help="name the text encoder (e.g. roberta-base, loaded from the local Hugging Face cache) "
                             "instead of saving its config and tokenizer in OUT_DIR/text_encoder (the default, which "
                             "makes the folder self-contained; the weights are in model.safetensors either way)")
    export.add_argument("--score", action="append", default=[], metavar="NAME=VALUE",
                        help="a score for the model card (repeatable), e.g. --score 'J&F=61.1'; replaces the scores "
                             "found beside the checkpoint")
    export.add_argument("--trained_on", default=None, help="the training data, in words (default: from the "
                                                           "checkpoint's --dataset_file)")
    export.add_argument("--title", default=None, help="the model card's heading")
    export.add_argument("--repo_id", default=None, metavar="OWNER/NAME",
                        help="the Hugging Face Hub id the folder will be published as (shown in the card's loading "
                             "commands; default: OUT_DIR)")
    return parser


def parse_scores(pairs: Sequence[str]) -> dict[str, float]:
    """``["J&F=61.1", ...]`` → ``{"J&F": 61.1, ...}``.

    Raises:
        ValueError: an entry is not NAME=NUMBER.
    """
    scores = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not name.strip():
            raise ValueError(f"--score {pair!r}: expected NAME=NUMBER, e.g. --score 'J&F=61.1'")
        scores[name.strip()] = number
    return scores


def scores_beside(checkpoint: Path) -> tuple[dict[str, float], str | None]:
    """The scores a main.py run wrote beside ``checkpoint``: its ``eval.json``, else the ``test_*`` entries of the
    last line of ``log.txt`` that has them; ``({}, None)`` if there are none."""
    folder = checkpoint.parent if checkpoint.is_file() else checkpoint
    eval_file = folder / EVAL_FILE
    if eval_file.is_file():
        results = json.loads(eval_file.read_text())
        return {name: value for name, value in results.items() if isinstance(value, (int, float))}, EVAL_FILE
    log = folder / EPOCH_LOG
    if log.is_file():
        for line in reversed(log.read_text().splitlines()):
            record = json.loads(line) if line.strip() else {}
            tests = {name[len(TEST_PREFIX):]: value for name, value in record.items()
                     if name.startswith(TEST_PREFIX) and isinstance(value, (int, float))}
            if tests:
                return tests, f"{EPOCH_LOG}, epoch {record.get('epoch')}"
    return {}, None


def training_facts(checkpoint: Path, training: dict[str, Any]) -> dict[str, Any]:
    """What the card says about the training run, from a checkpoint's stored options and epoch."""
    facts: dict[str, Any] = {"exported from": f"`{checkpoint.name}`"}
    saved = training.get("args", {})
    if "epoch" in training and "epochs" in saved:
        facts["epochs"] = f"{training['epoch'] + 1} of {saved['epochs']}"
    for name, dest in (("frames per clip", "num_frames"), ("clips per GPU", "batch_size"), ("learning rate", "lr"),
                       ("started from", "pretrained_weights")):
        if saved.get(dest) not in (None, ""):
            facts[name] = Path(saved[dest]).name if dest == "pretrained_weights" else saved[dest]
    return facts


def main(argv: Sequence[str] | None = None) -> Path:
    """Export; returns the model folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_parser().parse_args(argv)
    scores = parse_scores(args.score)
    source = resolve_source(args.checkpoint)
    weights = read_trained_weights(source, weights_only=not args.unsafe_load)
    model, options = build_trained_model(args, weights)
    scores_source = "given when exporting"
    if not scores:
        scores, scores_source = scores_beside(source)
    saved = weights.training.get("args", {})
    trained_on = args.trained_on or (DATASET_NAMES.get(saved["dataset_file"]) if "dataset_file" in saved else None)
    card = ModelCard(title=args.title, trained_on=trained_on, scores=scores, scores_source=scores_source,
                     training=training_facts(source, weights.training), load_name=args.repo_id or str(args.out_dir))
    save_pretrained(model, args.out_dir, text_encoder_name=args.text_encoder_name, card=card)

    # the folder must give back exactly these weights: each stored once, the tied names left out
    reloaded = read_trained_weights(args.out_dir).state
    original = model.state_dict()
    tied_aliases = {alias for keys in tied_key_groups(model) for alias in sorted(keys)[1:]}
    wrong = [key for key in original if key not in tied_aliases
             and (key not in reloaded or not torch.equal(original[key], reloaded[key]))]
    if wrong:
        raise RuntimeError(f"{args.out_dir}: {len(wrong)} tensors are missing or differ after writing, e.g. "
                           f"{wrong[:3]}")
    logger.info("wrote %s (%s, %d classes); load it with --checkpoint/--resume %s or "
                "ReferFormer.from_pretrained(%r)", args.out_dir, options.backbone, model.class_embed[0].out_features,
                args.out_dir, str(args.out_dir))
    return args.out_dir


if __name__ == "__main__":
    main()
