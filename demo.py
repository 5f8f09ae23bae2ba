"""Segment the object a sentence refers to in any video: a video file or a folder of frames.

    python demo.py --video clip.mp4 --text "a person riding a bike" --checkpoint weights/ytvos_r50.pth \\
        --text_encoder weights/roberta-base --output_dir demo_output

writes into ``--output_dir``:

    masks/<frame>.png     the binary mask of every frame (0/255, the frame's size)
    overlay/<frame>.png   the frame with the mask, the box and the reference point drawn
    overlay.gif, overlay.mp4
    frames/<frame>.png    the decoded frames (video files only)

``--video`` is a video file (mp4, avi, webm, … anything FFmpeg decodes) or a folder of images
(jpg/png, in name order). ``--checkpoint`` is a checkpoint file (official or ``main.py``'s), a model
folder (``tools/export_model.py``) or a Hugging Face Hub id; the model is built with the options
stored with it, so no model flag is needed (a given one must agree with them; ``--text_encoder`` may
point to another copy of the text encoder the checkpoint names). Preprocessing and query selection
are those of ``inference_ytvos.py``
(the shared :class:`~models.predictor.VideoPredictor`): frames resized to a short side of
``--short_side`` (default 360), one query chosen for each clip. The video runs in clips of
``--clip_len`` frames (default 36, as Ref-DAVIS17 inference; 0: the whole video in one pass, as
``inference_ytvos.py``), so memory does not grow with its length. It runs on the GPU when one is
present, else on the CPU (``--device`` overrides).
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from opts import inference_parser, validate_args
from util.logger import setup_logging
from util.video import DEFAULT_FPS, read_video, write_mp4
from video_inference import InferenceTask, OutputGroup, VideoInferenceRunner, VideoJob, remove_partial_root

logger = logging.getLogger("demo")

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Frames per forward pass: the Ref-DAVIS17 inference's clip length (the original's, below the
# CUDA deformable-attention kernel's batch limit of 64).
DEMO_CLIP_LEN = 36
MASKS_DIR = "masks"
OVERLAY_DIR = "overlay"
FRAMES_DIR = "frames"
LOG_FILE = "demo.log"


def get_parser() -> argparse.ArgumentParser:
    parser = inference_parser(
        "demo.py",
        "Segment the object a sentence refers to in any video (a video file or a folder of frames): masks and "
        "overlays. The model options are read from the checkpoint.",
    )
    demo = parser.add_argument_group("demo")
    demo.add_argument("--video", required=True, help="video file (mp4, avi, webm, …) or folder of frames")
    demo.add_argument("--text", required=True, help="the referring expression, e.g. 'the red car on the left'")
    demo.add_argument("--checkpoint", required=True,
                      help="the model: a checkpoint file (official or trained with main.py), a model folder "
                           "(tools/export_model.py) or a Hugging Face Hub id (owner/name)")
    demo.add_argument("--clip_len", default=DEMO_CLIP_LEN, type=int,
                      help="frames per forward pass, one query chosen per clip (0: the whole video at once)")
    parser.set_defaults(device="cuda" if torch.cuda.is_available() else "cpu", output_dir="demo_output")
    return parser


def frame_files(folder: Path) -> list[Path]:
    """The images of ``folder`` in name order.

    Raises:
        ValueError: the folder holds no image, naming it and the suffixes looked for.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"no frames ({', '.join(FRAME_SUFFIXES)}) in the folder {folder}")
    return files


def input_frames(video: Path, output_dir: Path) -> tuple[list[Path], float]:
    """Frame files of ``--video`` and the frame rate; a video file is decoded into ``<output_dir>/frames``."""
    if video.is_dir():
        return frame_files(video), DEFAULT_FPS
    frames, fps = read_video(video)
    folder = output_dir / FRAMES_DIR
    folder.mkdir(parents=True)
    paths = []
    for index, frame in enumerate(frames):
        paths.append(folder / f"{index:05d}.png")
        frame.save(paths[-1])
    return paths, fps


def check_inputs(args: argparse.Namespace) -> Path:
    """Fail before any work on an empty text, a missing checkpoint or video, or a bad clip length.

    Returns:
        the local checkpoint file or model folder (a Hub id is fetched into the Hugging Face cache).
    """
    from models.pretrained import resolve_source

    if not args.text.strip():
        raise ValueError("--text is empty: give the sentence that describes the object to segment")
    if not Path(args.video).exists():
        raise FileNotFoundError(f"video {args.video} does not exist (--video: a video file or a folder of frames)")
    if args.clip_len < 0:
        raise ValueError(f"--clip_len must be 0 (whole video) or positive, got {args.clip_len}")
    return resolve_source(args.checkpoint)  # last: a Hub id may be downloaded


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Run the demo; returns the written outputs (``masks``, ``overlay``, ``gif``, ``mp4``)."""
    from models.predictor import load_predictor

    args = get_parser().parse_args(argv)
    validate_args(args)
    checkpoint = check_inputs(args)
    output_dir = Path(args.output_dir)
    outputs = {"masks": output_dir / MASKS_DIR, "overlay": output_dir / OVERLAY_DIR,
               "gif": output_dir / f"{OVERLAY_DIR}.gif", "mp4": output_dir / f"{OVERLAY_DIR}.mp4"}
    # a previous run's outputs would be taken for finished work
    for stale in (*outputs.values(), output_dir / FRAMES_DIR):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    setup_logging(output_dir, file_name=LOG_FILE)

    frames, fps = input_frames(Path(args.video), output_dir)
    logger.info("%s: %d frames; text: %r; device %s", args.video, len(frames), args.text, args.device)
    predictor = load_predictor(args, checkpoint, args.device)
    job = VideoJob(
        video=Path(args.video).name,
        frame_paths=tuple(frames),
        output_names=tuple(path.stem for path in frames),
        captions=(args.text,),
        groups=(OutputGroup(folder=MASKS_DIR, expressions=(0,), visual_folder=OVERLAY_DIR),),
    )
    task = InferenceTask(clip_len=args.clip_len or None, merge_objects=False, threshold=args.threshold)
    VideoInferenceRunner(predictor, task, output_dir, visual_root=output_dir).run([job], progress=False)
    remove_partial_root(output_dir)
    write_mp4((Image.open(outputs["overlay"] / f"{name}.png") for name in job.output_names), outputs["mp4"], fps)
    for name, path in outputs.items():
        logger.info("%s: %s", name, path)
    return outputs


if __name__ == "__main__":
    main()
