"""Per-frame speed and peak memory of every backbone, with and without activation checkpointing.

    python benchmarks/backbones.py [--backbones resnet50 swin_t_p4w7 ...] [--frames 2]
                                   [--height 360 --width 640] [--repeat 1] [--warmup 0] [--threads N] [--device cpu]

For each backbone body (random weights) on one clip of ``--frames`` frames it measures
(1) the forward pass without gradients (eval mode), (2) forward + backward of a scalar made from
all four feature maps (train mode), (3) the same with ``--use_checkpoint`` (Swin/Video Swin only).
Each measurement runs in its own process, after ``--warmup`` untimed steps. Times are the fastest
of ``--repeat`` runs divided by the number of frames; memory is the peak above what the model and
input occupy (CUDA: ``max_memory_allocated``; CPU: peak resident set size, which includes
allocator slack). Ratios are relative to ResNet-50.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.backbone import BACKBONES  # noqa: E402

BASELINE = "resnet50"
MIB = 2**20
KIB = 2**10


@dataclass
class Measurement:
    ms_per_frame: float
    peak_mib: float


MODES = ("forward", "train", "ckpt")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_in_this_process(name: str, mode: str, args: argparse.Namespace) -> Measurement | None:
    """One measurement; run in a fresh process so that the CPU peak (``ru_maxrss``) is this step's alone.

    The warm-up run has the same peak as the timed ones, so the process maximum is the step's peak;
    the resident size after building the model and the input is subtracted.
    """
    device = torch.device(args.device)
    try:
        body = BACKBONES[name](name, train_backbone=True, use_checkpoint=mode == "ckpt").to(device)
    except ValueError:  # ResNet has no activation checkpointing
        return None
    frames = torch.randn(args.frames, 3, args.height, args.width, device=device)
    body.train(mode != "forward")

    def step() -> None:
        with torch.set_grad_enabled(mode != "forward"):
            features = body(frames, num_frames=args.frames)
            if mode != "forward":
                sum(feature.float().mean() for feature in features).backward()
                body.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else _resident_bytes()
    for _ in range(args.warmup):  # one-time allocations and kernel selection
        step()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB
    return Measurement(1000 * min(times) / args.frames, (peak - before) / MIB)


def measure(name: str, mode: str, args: argparse.Namespace) -> Measurement | None:
    """Run :func:`measure_in_this_process` in a child process and read its JSON answer."""
    command = [sys.executable, __file__, "--worker", name, mode, "--frames", str(args.frames), "--height",
               str(args.height), "--width", str(args.width), "--repeat", str(args.repeat), "--warmup",
               str(args.warmup), "--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    answer = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    return Measurement(**answer) if answer else None


def format_table(results: dict[str, dict[str, Measurement | None]], args: argparse.Namespace) -> str:
    base = results.get(BASELINE)
    header = (
        f"{'backbone':<18} | {'fwd ms/fr':>9} {'×r50':>5} {'fwd MiB':>8} | {'f+b ms/fr':>9} {'×r50':>5} "
        f"{'f+b MiB':>8} {'×r50':>5} | {'ckpt ms/fr':>10} {'×r50':>5} {'ckpt MiB':>8} {'×r50':>5} {'MiB/no-ckpt':>11}"
    )
    lines = [
        f"{args.frames} frames at {args.height}x{args.width}, device {args.device}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warm-up + best of {args.repeat}; ms per frame, MiB above model+input; ×r50 = ratio to {BASELINE}",
        header,
        "-" * len(header),
    ]

    def ratio(value: float, reference: Measurement | None, field: str) -> str:
        if reference is None or getattr(reference, field) <= 0:
            return f"{'-':>5}"
        return f"{value / getattr(reference, field):>5.2f}"

    for name, result in results.items():
        forward, train, ckpt = result["forward"], result["train"], result["ckpt"]
        row = (
            f"{name:<18} | {forward.ms_per_frame:>9.1f} {ratio(forward.ms_per_frame, base and base['forward'], 'ms_per_frame')} "
            f"{forward.peak_mib:>8.0f} | {train.ms_per_frame:>9.1f} "
            f"{ratio(train.ms_per_frame, base and base['train'], 'ms_per_frame')} {train.peak_mib:>8.0f} "
            f"{ratio(train.peak_mib, base and base['train'], 'peak_mib')} | "
        )
        if ckpt is None:
            row += f"{'n/a':>10} {'':>5} {'':>8} {'':>5} {'':>11}"
        else:
            row += (
                f"{ckpt.ms_per_frame:>10.1f} {ratio(ckpt.ms_per_frame, base and base['train'], 'ms_per_frame')} "
                f"{ckpt.peak_mib:>8.0f} {ratio(ckpt.peak_mib, base and base['train'], 'peak_mib')} "
                f"{ckpt.peak_mib / train.peak_mib:>11.2f}"
            )
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--frames", type=int, default=2, help="frames per clip (Video Swin attends across them)")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per measurement (fastest is kept)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed runs first (use 1 on a GPU; on a CPU the default keeps a full run short)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, metavar=("BACKBONE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = measure_in_this_process(*args.worker, args)
        print(json.dumps(asdict(result) if result else None))
        return
    results = {}
    for name in dict.fromkeys(args.backbones):
        results[name] = {mode: measure(name, mode, args) for mode in MODES}
        print(f"measured {name}", file=sys.stderr, flush=True)
    print(format_table(results, args))


if __name__ == "__main__":
    main()
