"""Benchmark the CPU quick start's training iteration: where its time goes and what each setting changes.

The quick start's model and batches (``tools/quickstart.py``: ResNet-18 trained from scratch, a
64-wide transformer, one query, 1-frame clips of 128x128 in batches of 6) on a small generated
Ref-Shapes set. Each configuration runs in its own process and times ``--iterations`` iterations
after a warm-up, split into the steps of ``engine.train_one_epoch`` (loading the batch in the main process as the
quick start does, forward, losses, backward,
gradient clipping, optimizer step); the table gives medians in milliseconds and each total's ratio
to the first row, measured in the same run.

Rows:

* ``per-parameter AdamW, fp32``: the optimizer as the original runs it on the CPU (a loop of about
  ten operations per parameter tensor): the baseline;
* ``fused AdamW, fp32``: what ``util/optim.py`` builds now;
* ``fused AdamW, --amp``: bfloat16 autocast (n/a on CPUs without native bfloat16);
* ``fused AdamW, fp32, 4x threads``: four times as many compute threads as the process has CPUs,
  what a CPU quota that PyTorch does not see causes (``util/threads.py`` prevents it).

    python benchmarks/quickstart_train.py --iterations 40
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from util.amp import cpu_bfloat16_unsupported_reason  # noqa: E402
from util.threads import cpu_budget  # noqa: E402

PHASES = ("data", "forward", "losses", "backward", "clipping", "optimizer")
# (row name, fused AdamW, --amp, threads per CPU)
CONFIGS = (
    ("per-parameter AdamW, fp32", False, False, 1),
    ("fused AdamW, fp32", True, False, 1),
    ("fused AdamW, --amp", True, True, 1),
    ("fused AdamW, fp32, 4x threads", True, False, 4),
)
DATA_FLAGS = ("--seed", "0", "--num_train_videos", "12", "--num_valid_videos", "1", "--frames", "10",
              "--height", "128", "--width", "128", "--expressions_per_object", "2")


def make_data(directory: Path) -> Path:
    """A small Ref-Shapes set at the quick start's size and its text encoder (pre-trained for a few steps only)."""
    data = directory / "ref-shapes"
    for command in (["tools/data/make_ref_shapes.py", "--output", str(data), *DATA_FLAGS],
                    ["tools/data/train_text_encoder.py", "--data_root", str(data), "--output", str(data / "text_encoder"),
                     "--pretrain_steps", "2"]):
        subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], check=True, capture_output=True, cwd=ROOT)
    return data


def run_one(data: Path, fused: bool, amp: bool, iterations: int) -> dict:
    """Median milliseconds per phase over ``iterations`` iterations after 3 warm-up iterations."""
    from datasets import build_dataset
    from datasets.loader import build_train_loader, set_loader_epoch
    from engine import _to_float32, gradient_norm
    from models import build_model
    from opts import get_args_parser
    from tools.quickstart import QUICKSTART
    from util.amp import amp_settings, autocast
    from util.memory import reuse_freed_memory
    from util.optim import build_optimizer
    from util.random_state import seed_everything

    reuse_freed_memory()  # as main.py does
    flags = [*QUICKSTART.model, *QUICKSTART.train, "--text_encoder", str(data / "text_encoder"),
             "--ytvos_path", str(data), "--output_dir", str(data / "unused")] + (["--amp"] if amp else [])
    args = get_args_parser().parse_args(flags)
    seed_everything(args.seed)
    model, criterion, _ = build_model(args)
    optimizer, _ = build_optimizer(model, args)
    if not fused:
        optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "fused"} for g in optimizer.param_groups],
                                      lr=args.lr, weight_decay=args.weight_decay, fused=False)
    device = torch.device("cpu")
    amp_dtype, _ = amp_settings(args.amp, device)
    loader = build_train_loader(build_dataset(args.dataset_file, "train", args), batch_size=args.batch_size,
                                num_workers=0, seed=args.seed)
    set_loader_epoch(loader, 0)
    batches = iter(loader)
    weights = criterion.weight_dict
    model.train()
    times = {phase: [] for phase in PHASES}
    for index in range(iterations + 3):
        clock = [time.perf_counter()]
        samples, targets = next(batches)
        clock.append(time.perf_counter())
        with autocast(device, amp_dtype):
            outputs = model(samples, [t["caption"] for t in targets], targets)
        clock.append(time.perf_counter())
        losses = criterion(_to_float32(outputs), targets)
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        clock.append(time.perf_counter())
        loss.backward()
        clock.append(time.perf_counter())
        gradient_norm(model.parameters(), args.clip_max_norm)
        clock.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.append(time.perf_counter())
        if index >= 3:
            for phase, start, end in zip(PHASES, clock, clock[1:]):
                times[phase].append(1000 * (end - start))
    result = {phase: statistics.median(values) for phase, values in times.items()}
    result["total"] = statistics.median([sum(parts) for parts in zip(*times.values())])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="the CPU quick start's training iteration, per step and setting")
    parser.add_argument("--iterations", type=int, default=40, help="timed iterations per configuration (medians)")
    parser.add_argument("--only", type=int, default=None, help=argparse.SUPPRESS)  # child process: one row
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = cpu_budget()
    if args.only is not None:
        _, fused, amp, threads_per_cpu = CONFIGS[args.only]
        torch.set_num_threads(cpus * threads_per_cpu)
        print(json.dumps(run_one(Path(args.data), fused, amp, args.iterations)))
        return

    print(f"quick start training iteration (batch of 6 one-frame 128x128 clips), {cpus} CPU(s), "
          f"median of {args.iterations} iterations, milliseconds")
    header = ("configuration", "threads", *PHASES, "total", "ratio")
    rows, baseline = [], None
    with tempfile.TemporaryDirectory() as scratch:
        data = make_data(Path(scratch))
        for index, (name, _, amp, threads_per_cpu) in enumerate(CONFIGS):
            if amp and cpu_bfloat16_unsupported_reason() is not None:
                rows.append((name, "", *[""] * len(PHASES), f"n/a: {cpu_bfloat16_unsupported_reason()}", ""))
                continue
            command = [sys.executable, __file__, "--only", str(index), "--data", str(data),
                       "--iterations", str(args.iterations)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                rows.append((name, "", *[""] * len(PHASES), "failed: " + done.stderr.strip().splitlines()[-1], ""))
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            baseline = baseline or result["total"]
            rows.append((name, str(cpus * threads_per_cpu), *(f"{result[p]:.1f}" for p in PHASES),
                         f"{result['total']:.1f}", f"{result['total'] / baseline:.2f}x"))
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print("ratio: total time per iteration relative to the first row")


if __name__ == "__main__":
    main()
