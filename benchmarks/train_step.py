"""Benchmark one training iteration (forward, losses, backward, clipping, AdamW step).

The released ResNet-50 configuration (hidden 256, 4+4 layers, 5 queries, box refinement, binary
class, frozen RoBERTa-base-sized text encoder with random weights) on one clip of 5 frames at the
original's typical training resolution: a 16:9 video resized to 360×640 (``--max_size 640``),
padded to 384×640. Each configuration runs in its own process, so the peak memory is its own:
``torch.cuda.max_memory_allocated`` on CUDA, the process's peak resident memory (ru_maxrss, includes
the Python/torch runtime) on the CPU.

Configurations: fp32 (the baseline); ``--amp`` (bfloat16/float16 autocast on CUDA, bfloat16 on CPUs
with native bfloat16, ``util/amp.py``; skipped with the reason elsewhere); activation
checkpointing (``--use_checkpoint``) exists for the Swin backbones only, so it is measured with
Swin-T at the same resolution, against Swin-T without it. Unavailable rows are printed as such.

    python benchmarks/train_step.py --device cpu --threads 2 --iterations 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.text_table import print_table  # noqa: E402
from util.amp import cpu_bfloat16_unsupported_reason  # noqa: E402

FRAMES, HEIGHT, WIDTH = 5, 360, 640
REFERENCE = ROOT / "tests" / "golden"
# (row name, backbone, --amp, --use_checkpoint)
CONFIGS = (
    ("R50 fp32", "resnet50", False, False),
    ("R50 AMP", "resnet50", True, False),
    ("Swin-T fp32", "swin_t_p4w7", False, False),
    ("Swin-T fp32 + act. ckpt", "swin_t_p4w7", False, True),
)


def run_one(backbone: str, amp: bool, use_checkpoint: bool, device_name: str, iterations: int) -> dict:
    """Time ``iterations`` training steps after one warm-up; returns seconds per step and peak memory."""
    from engine import train_one_epoch
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from opts import get_args_parser
    from util.nested_tensor import TRAIN_SIZE_DIVISIBILITY, nested_tensor_from_videos_list
    from util.optim import build_optimizer

    from util.amp import amp_settings
    from util.memory import reuse_freed_memory

    device = torch.device(device_name)
    if device.type == "cpu":
        reuse_freed_memory()  # as main.py does
    argv = ["--backbone", backbone, "--with_box_refine", "--binary", "--freeze_text_encoder", "--device", device_name]
    args = get_args_parser().parse_args(argv + (["--use_checkpoint"] if use_checkpoint else []))
    text_config = json.loads((REFERENCE / "roberta_base_config.json").read_text())
    torch.manual_seed(0)
    model, criterion, _ = build_model(args, text_encoder=text_encoder_from_config(text_config),
                                      tokenizer=load_tokenizer(str(REFERENCE / "tokenizer")))
    model.to(device)
    optimizer, _ = build_optimizer(model, args)
    amp_dtype, scaler = amp_settings(amp, device)

    clip = torch.randn(FRAMES, 3, HEIGHT, WIDTH)
    masks = torch.zeros(FRAMES, HEIGHT, WIDTH, dtype=torch.bool)
    masks[:, 100:220, 200:400] = True
    target = {"size": torch.tensor([HEIGHT, WIDTH]), "labels": torch.zeros(FRAMES, dtype=torch.long),
              "boxes": torch.tensor([[300 / WIDTH, 160 / HEIGHT, 200 / WIDTH, 120 / HEIGHT]] * FRAMES),
              "masks": masks, "valid": torch.ones(FRAMES, dtype=torch.int32), "caption": "a person riding a horse"}
    batch = (nested_tensor_from_videos_list([clip], TRAIN_SIZE_DIVISIBILITY), [target])

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_one_epoch(model, criterion, [batch], optimizer, device, 0, max_norm=0.1, num_iterations=1,
                        amp_dtype=amp_dtype, grad_scaler=scaler, print_freq=10**9)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(iterations)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"seconds": statistics.median(times), "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description="training-step benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--iterations", type=int, default=3, help="timed steps per configuration (median)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child process: one row
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only is not None:
        _, backbone, amp, ckpt = CONFIGS[int(args.only)]
        print(json.dumps(run_one(backbone, amp, ckpt, args.device, args.iterations)))
        return

    print(f"training step, 1 clip x {FRAMES} frames x {HEIGHT}x{WIDTH}, device {args.device}"
          f"{'' if args.device != 'cpu' else f', {torch.get_num_threads()} threads'}, median of {args.iterations}")
    rows, baseline = [], {}
    for index, (name, backbone, amp, ckpt) in enumerate(CONFIGS):
        if amp and args.device == "cpu" and cpu_bfloat16_unsupported_reason() is not None:
            rows.append((name, f"n/a: --amp is ignored: {cpu_bfloat16_unsupported_reason()}", "", "", ""))
            continue
        command = [sys.executable, __file__, "--device", args.device, "--iterations", str(args.iterations),
                   "--only", str(index)] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append((name, "failed: " + done.stderr.strip().splitlines()[-1], "", "", ""))
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        reference = baseline.setdefault(backbone, result)
        rows.append((name, f"{result['seconds']:.2f}", f"{result['seconds'] / reference['seconds']:.2f}x",
                     f"{result['peak_bytes'] / 2**30:.2f}", f"{result['peak_bytes'] / reference['peak_bytes']:.2f}x"))
    header = ("configuration", "s / iteration", "time ratio", "peak GiB", "memory ratio")
    print_table(header, rows)
    print("ratios are relative to the fp32 row of the same backbone")


if __name__ == "__main__":
    main()
