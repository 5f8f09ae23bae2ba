"""Video inference speed and memory: feature reuse + expression batching vs one full forward per expression.

    python benchmarks/inference.py                       # N = 1, 4, 8 expressions, 5 frames 360x640, 2 threads
    python benchmarks/inference.py --long_video          # also: peak memory of a 100-frame 720p video
    python benchmarks/inference.py --expressions --whole_video --long_frames 72 --short_side 180
                                                         # a whole-video pass, without and with --frames_per_pass

For each N a fresh process builds a ReferFormer with ResNet-50 and a RoBERTa-base-sized text
encoder (random weights, seeded) and times, on the CPU, one "video" of ``--frames`` frames at the
model-input size ``--height``x``--width`` with N expressions, including upsampling every
expression's chosen mask to the original size ``--orig_height``x``--orig_width`` and thresholding:

* straightforward: ``VideoPredictor(reuse_features=False)``, one full forward per expression (with
  the auxiliary decoder layers' masks) and the per-level ``grid_sample`` deformable-attention core
  (the original's pure-PyTorch formulation), as the original's inference scripts do;
* reuse: the backbone once per clip, the rest in batches of ``--expressions_per_batch`` expressions,
  auxiliary masks skipped.

After one untimed warm-up run of each, the two alternate ``--repeat`` times and the fastest run of
each is reported (the machine may be shared), as wall-clock seconds and as CPU seconds of the
process (all threads; less sensitive to other programs on the machine). Peak memory is the largest
resident set size seen by a 5 ms sampler during a run, minus the resident size before it (the
model's weights are not counted). The table also says whether the binary masks are identical and
the largest logit difference.

``--long_video`` writes a ``--long_frames``-frame video of ``--long_size`` JPEGs and runs the
Ref-DAVIS17 path on it (36-frame clips, chunked upsampling and writing, one object): its peak,
next to the same run on the first 36 frames only, shows that memory does not grow with length.

``--whole_video`` runs the Ref-YouTube-VOS / MeViS path on the same kind of video (the whole video in
one pass, one expression, frames resized to ``--short_side``): once whole and once with
``--frames_per_pass``, next to a video of ``--frames_per_pass`` frames alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DEFAULT_TOKENIZER = ROOT / "tests" / "golden" / "tokenizer"
CAPTIONS = (
    "a person riding a brown horse on the left",
    "the dog running",
    "a white car parked next to the tree in the back",
    "the man in a red shirt",
    "a small bird",
    "the second zebra from the right walking towards the water",
    "a skateboard",
    "the woman holding an umbrella",
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


class PeakRss:
    """Samples this process's resident set size every ``interval`` seconds inside a ``with`` block."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE

    def __enter__(self) -> "PeakRss":
        self.start = self.current()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MIB


def build_model(args: argparse.Namespace):
    from transformers import RobertaConfig

    from models import build_model as build
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from opts import get_args_parser

    torch.manual_seed(0)
    model_args = get_args_parser().parse_args(
        ["--backbone", "resnet50", "--with_box_refine", "--binary", "--freeze_text_encoder", "--device", "cpu"]
    )
    config = RobertaConfig().to_dict()  # roberta-base dimensions
    model, _, _ = build(model_args, text_encoder=text_encoder_from_config(config), tokenizer=load_tokenizer(str(args.tokenizer)))
    return model.eval()


def use_reference_deformable_core(model, enabled: bool) -> None:
    from models.ms_deform_attn import set_core_impl

    set_core_impl(model, "reference" if enabled else "auto")


def run_video(predictor, clip, captions, orig_size, threshold=0.5):
    """Predict one clip for all captions and bring every chosen mask to the original size; returns the
    low-resolution logits and the binary masks (only for comparison)."""
    from models.postprocessors import binarize_mask_logits
    from models.predictor import frames_per_chunk, iter_upsampled_logits

    logits, masks = [], []
    for batch in predictor.predict_clip(clip, captions):
        for prediction in batch:
            chunks = [
                binarize_mask_logits(up[0], threshold)
                for _, up in iter_upsampled_logits([prediction.mask_logits], orig_size, frames_per_chunk(1))
            ]
            logits.append(prediction.mask_logits)
            masks.append(torch.cat(chunks))
    return logits, masks


def worker_expressions(args: argparse.Namespace) -> dict:
    from models.predictor import VideoPredictor

    torch.set_num_threads(args.threads)
    model = build_model(args)
    clip = torch.randn(args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    captions = list(CAPTIONS[: args.num_expressions])
    orig_size = (args.orig_height, args.orig_width)
    predictors = {
        "straightforward": VideoPredictor(model, reuse_features=False),
        "reuse": VideoPredictor(model, expressions_per_batch=args.expressions_per_batch),
    }
    seconds = {name: float("inf") for name in predictors}
    cpu_seconds = {name: float("inf") for name in predictors}
    peak = {name: 0.0 for name in predictors}
    outputs = {}
    with torch.no_grad():
        for name, predictor in predictors.items():  # warm-up: first calls allocate and pick kernels
            use_reference_deformable_core(model, name == "straightforward")
            run_video(predictor, clip, captions[:1], orig_size)
        for _ in range(args.repeat):
            for name, predictor in predictors.items():
                use_reference_deformable_core(model, name == "straightforward")
                with PeakRss() as rss:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    outputs[name] = run_video(predictor, clip, captions, orig_size)
                    seconds[name] = min(seconds[name], time.perf_counter() - start)
                    cpu_seconds[name] = min(cpu_seconds[name], time.process_time() - cpu_start)
                peak[name] = max(peak[name], rss.growth_mib)
    (ref_logits, ref_masks), (fast_logits, fast_masks) = outputs["straightforward"], outputs["reuse"]
    return {
        "n": args.num_expressions,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mib": peak,
        "same_masks": all(torch.equal(a, b) for a, b in zip(ref_masks, fast_masks)),
        "max_logit_diff": max((a - b).abs().max().item() for a, b in zip(ref_logits, fast_logits)),
    }


def worker_long_video(args: argparse.Namespace) -> dict:
    """Run the Ref-DAVIS17 path (one object; ``--clip_len 0``: the Ref-YouTube-VOS path, the whole video in one
    pass, ``--frames_per_pass`` frames per forward) on a generated long video; returns its peak memory growth."""
    import numpy as np
    from PIL import Image

    from models.predictor import VideoPredictor
    from util.visualize import davis_palette
    from video_inference import InferenceTask, OutputGroup, VideoInferenceRunner, VideoJob

    torch.set_num_threads(args.threads)
    model = build_model(args)
    height, width = args.long_size
    with tempfile.TemporaryDirectory() as tmp:
        frames = []
        rng = np.random.default_rng(0)
        for t in range(args.long_frames):
            path = Path(tmp) / "frames" / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path)
            frames.append(path)
        job = VideoJob(
            video="long", frame_paths=tuple(frames), output_names=tuple(f"{t:05d}" for t in range(len(frames))),
            captions=(CAPTIONS[0],), groups=(OutputGroup(folder="anno_0/long", expressions=(0,), visual_folder="x"),),
        )
        if args.clip_len:
            task = InferenceTask(clip_len=args.clip_len, merge_objects=True, palette=davis_palette())
        else:
            task = InferenceTask(clip_len=None, merge_objects=False, threshold=0.5)
        predictor = VideoPredictor(model, short_side=args.short_side,
                                   frames_per_pass=0 if args.clip_len else args.frames_per_pass)
        runner = VideoInferenceRunner(predictor, task, Path(tmp) / "out")
        warm_up = VideoJob(job.video, job.frame_paths[:2], job.output_names[:2], job.captions,
                           (OutputGroup(folder="warm_up", expressions=(0,), visual_folder="x"),))
        runner.run([warm_up], progress=False)  # first calls allocate and pick kernels
        with torch.no_grad(), PeakRss() as rss:
            start = time.perf_counter()
            runner.run([job], progress=False)
            seconds = time.perf_counter() - start
    return {"frames": args.long_frames, "seconds": seconds, "peak_mib": rss.growth_mib}


def spawn(args: argparse.Namespace, *extra: str) -> dict:
    command = [sys.executable, __file__, "--worker", *extra, "--threads", str(args.threads), "--tokenizer", str(args.tokenizer),
               "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
               "--orig_height", str(args.orig_height), "--orig_width", str(args.orig_width), "--repeat", str(args.repeat),
               "--expressions_per_batch", str(args.expressions_per_batch), "--long_size", *map(str, args.long_size),
               "--short_side", str(args.short_side)]
    if "--clip_len" not in extra:
        command += ["--clip_len", str(args.clip_len)]
    result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expressions", type=int, nargs="*", default=[1, 4, 8], help="values of N (none: skip)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=360, help="model-input height (Resize(360) of the frames)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--orig_height", type=int, default=720, help="original frame size the masks are upsampled to")
    parser.add_argument("--orig_width", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each path (after one warm-up run)")
    parser.add_argument("--expressions_per_batch", type=int, default=4)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="a RoBERTa tokenizer directory")
    parser.add_argument("--long_video", action="store_true", help="also measure the long-video peak memory")
    parser.add_argument("--long_frames", type=int, default=100)
    parser.add_argument("--long_size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    parser.add_argument("--clip_len", type=int, default=36, help="frames per clip of the long video (Ref-DAVIS17)")
    parser.add_argument("--whole_video", action="store_true",
                        help="also measure a long video in one pass, whole and with --frames_per_pass")
    parser.add_argument("--frames_per_pass", type=int, default=12, help="slice length of --whole_video")
    parser.add_argument("--short_side", type=int, default=360, help="frames are resized to this short side")
    parser.add_argument("--worker", choices=("expressions", "long"), help=argparse.SUPPRESS)
    parser.add_argument("--num_expressions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "expressions":
        print(json.dumps(worker_expressions(args)))
        return
    if args.worker == "long":
        print(json.dumps(worker_long_video(args)))
        return

    print(f"ReferFormer R50 + RoBERTa-base size (random weights), CPU, {args.threads} threads, {args.frames} frames "
          f"{args.height}x{args.width} -> masks at {args.orig_height}x{args.orig_width}, best of {args.repeat}; "
          f"reuse batches {args.expressions_per_batch} expressions")
    header = (f"{'N':>3} | {'straightforward s':>17} | {'reuse s':>7} | {'speed-up':>8} | {'CPU s straight':>14} | "
              f"{'CPU s reuse':>11} | {'CPU speed-up':>12} | {'peak MiB straight':>17} | {'peak MiB reuse':>14} | "
              f"same masks | max |dlogit|")
    print(header)
    print("-" * len(header))
    for n in args.expressions:
        r = spawn(args, "expressions", "--num_expressions", str(n))
        s, c, p = r["seconds"], r["cpu_seconds"], r["peak_mib"]
        print(f"{n:>3} | {s['straightforward']:>17.2f} | {s['reuse']:>7.2f} | {s['straightforward'] / s['reuse']:>7.2f}x | "
              f"{c['straightforward']:>14.2f} | {c['reuse']:>11.2f} | {c['straightforward'] / c['reuse']:>11.2f}x | "
              f"{p['straightforward']:>17.0f} | {p['reuse']:>14.0f} | {str(r['same_masks']):>10} | {r['max_logit_diff']:.1e}",
              flush=True)
    if args.long_video:
        print(f"\nRef-DAVIS17 path, one object, {args.clip_len}-frame clips, {args.long_size[0]}x{args.long_size[1]} frames:")
        for frames in (args.clip_len, args.long_frames):
            r = spawn(args, "long", "--long_frames", str(frames))
            print(f"  {r['frames']:>4} frames: {r['seconds']:.1f} s, peak memory growth {r['peak_mib']:.0f} MiB", flush=True)
    if args.whole_video:
        print(f"\nRef-YouTube-VOS / MeViS path, whole video in one pass, one expression, short side {args.short_side}:")
        for frames, per_pass in ((args.frames_per_pass, 0), (args.long_frames, 0), (args.long_frames, args.frames_per_pass)):
            r = spawn(args, "long", "--long_frames", str(frames), "--clip_len", "0", "--frames_per_pass", str(per_pass))
            print(f"  {r['frames']:>4} frames, --frames_per_pass {per_pass:>3}: {r['seconds']:.1f} s, peak memory growth "
                  f"{r['peak_mib']:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
