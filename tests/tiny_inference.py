"""Tiny models, checkpoints and generated Ref-YTVOS / Ref-DAVIS17 splits for the inference tests.

The model is the tiny configuration of ``tests/models/test_referformer.py`` with its default
random initialisation (seeded): unlike the golden fill rule, it gives queries with different
scores and masks with both foreground and background, so comparisons of masks mean something.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.golden import TOKENIZER_DIR, load_case

TINY_MODEL_OPTIONS = {
    "backbone": "resnet50", "with_box_refine": True, "binary": True, "freeze_text_encoder": True,
    "hidden_dim": 64, "dim_feedforward": 64, "enc_layers": 2, "dec_layers": 2, "num_queries": 3, "mask_dim": 64,
}
TINY_MODEL_FLAGS = [
    "--backbone", "resnet50", "--with_box_refine", "--binary", "--freeze_text_encoder", "--hidden_dim", "64",
    "--dim_feedforward", "64", "--enc_layers", "2", "--dec_layers", "2", "--num_queries", "3", "--mask_dim", "64",
    "--device", "cpu", "--ngpu", "1",
]
# Frames are resized to this short side in the tests instead of 360 (same code path, less compute).
TEST_SHORT_SIDE = 64


def text_encoder_config() -> dict:
    return load_case("model_eval_r50.pt")["text_encoder_config"]


def build_random_tiny_model(seed: int = 0, dataset_file: str = "ytvos"):
    """The tiny model with its default initialisation under ``torch.manual_seed(seed)``, in eval mode."""
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from tools.run_reference_case import build_args

    torch.manual_seed(seed)
    args = build_args({**TINY_MODEL_OPTIONS, "device": "cpu", "dataset_file": dataset_file})
    model, _, _ = build_model(
        args, text_encoder=text_encoder_from_config(text_encoder_config()), tokenizer=load_tokenizer(str(TOKENIZER_DIR))
    )
    return model.eval()


def save_tiny_assets(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Save the tiny text encoder + tokenizer (``save_pretrained``) and a checkpoint ``{"model": state}``.

    Returns:
        ``(text_encoder_dir, checkpoint_path)`` for ``--text_encoder`` and ``--resume``.
    """
    from models.text_encoder import load_tokenizer
    from util.checkpoint import save_checkpoint

    model = build_random_tiny_model(seed)
    text_dir = directory / "tiny-roberta"
    model.text_encoder.save_pretrained(text_dir)
    load_tokenizer(str(TOKENIZER_DIR)).save_pretrained(text_dir)
    checkpoint = directory / "tiny.pth"
    save_checkpoint({"model": model.state_dict()}, checkpoint)
    return text_dir, checkpoint


def save_training_checkpoint(directory: Path, *flags: str, seed: int = 0) -> tuple[Path, Path, Path]:
    """:func:`save_tiny_assets`, and the tiny model as ``main.py`` saves it: ``{"model", "args", "epoch": 0}``, its
    options (``TINY_MODEL_FLAGS``, the text encoder, then ``flags``) under ``args``.

    Returns:
        ``(text_encoder_dir, bare_checkpoint, training_checkpoint)``; the last is ``directory/run/checkpoint.pth``.
    """
    from opts import get_args_parser
    from util.checkpoint import load_checkpoint, save_checkpoint

    text_dir, bare = save_tiny_assets(directory, seed)
    args = get_args_parser().parse_args([*TINY_MODEL_FLAGS, "--text_encoder", str(text_dir), *flags])
    checkpoint = directory / "run" / "checkpoint.pth"
    save_checkpoint({"model": load_checkpoint(bare)["model"], "args": args, "epoch": 0}, checkpoint)
    return text_dir, bare, checkpoint


def write_frame(path: Path, width: int, height: int, seed: int) -> None:
    """A smooth random RGB frame as JPEG."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)


def write_meta_expressions(path: Path, videos: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"videos": videos}))


# Ref-YTVOS: two validation videos and one test video that the valid file also lists.
YTVOS_VIDEOS = {
    "vid_b": {"size": (56, 40), "frames": ["00000", "00005"], "expressions": ["a person riding a horse"]},
    "vid_a": {
        "size": (64, 48), "frames": ["00000", "00005", "00010"],
        "expressions": ["a dog", "the cat on the left of the sofa", "a bird"],
    },
    "vid_test": {"size": (48, 48), "frames": ["00000"], "expressions": ["a car"]},
}
YTVOS_TEST_VIDEOS = ("vid_test",)


def make_ytvos(root: Path) -> Path:
    """A miniature Ref-YouTube-VOS with ``valid`` (3 videos, one of them also in ``test``) and ``test``."""
    valid, test = {}, {}
    for index, (video, spec) in enumerate(YTVOS_VIDEOS.items()):
        width, height = spec["size"]
        for t, frame in enumerate(spec["frames"]):
            write_frame(root / "valid" / "JPEGImages" / video / f"{frame}.jpg", width, height, seed=100 * index + t)
        entry = {"expressions": {str(i): {"exp": e} for i, e in enumerate(spec["expressions"])}, "frames": spec["frames"]}
        valid[video] = entry
        if video in YTVOS_TEST_VIDEOS:
            test[video] = entry
    write_meta_expressions(root / "meta_expressions" / "valid" / "meta_expressions.json", valid)
    write_meta_expressions(root / "meta_expressions" / "test" / "meta_expressions.json", test)
    return root


# Ref-DAVIS17: video -> (frame size, frame count, objects); 4 expressions per object.
DAVIS_VIDEOS = {"bear": ((64, 48), 5, 2), "car": ((56, 40), 3, 1)}
ANNOTATOR_WORDS = ("first frame", "whole video", "second person", "second person whole video")


def make_davis(root: Path) -> Path:
    """A miniature converted Ref-DAVIS17 ``valid`` split (no ground truth, no palette file)."""
    videos = {}
    for index, (video, ((width, height), num_frames, num_objects)) in enumerate(DAVIS_VIDEOS.items()):
        frames = [f"{t:05d}" for t in range(num_frames)]
        for t, frame in enumerate(frames):
            write_frame(root / "valid" / "JPEGImages" / video / f"{frame}.jpg", width, height, seed=10 * index + t)
        expressions = {}
        for k in range(num_objects):
            for a, words in enumerate(ANNOTATOR_WORDS):
                expressions[str(4 * k + a)] = {"exp": f"object {k} of the {video} described by the {words}"}
        videos[video] = {"expressions": expressions, "frames": frames}
    write_meta_expressions(root / "meta_expressions" / "valid" / "meta_expressions.json", videos)
    return root
