"""Benchmark the CPU quick start's training iteration: where its time goes and what each setting changes.

The quick start's model and batches (``tools/quickstart.py``: ResNet-18 trained from scratch, a
64-wide transformer, one query, batches of 3 one-frame clips of 96x96, each shared by up to 4
expressions) on a small generated Ref-Shapes set. Each configuration runs in its own process; the
processes take turns, one at a time, for ``--rounds`` rounds (so that a machine whose speed drifts
slows every row alike), timing ``--iterations`` iterations in all after a warm-up, split into the
steps of ``engine.train_one_epoch`` (loading the batch in the main process as the quick start does,
forward, losses, backward, gradient clipping, optimizer step); the table gives medians in
milliseconds, the mean number of expressions per batch, the time per expression and its ratio to
the first row's (an epoch's time, since an epoch is the same set of expressions and frames
whatever the batches), measured in the same run. A second table splits the forward of the quick
start's configuration by module (forward hooks; the transformer's encoder and decoder are also in
its row).

Rows:

* ``before``: the optimizer as the original runs it on the CPU (a loop of about ten operations per
  parameter tensor), the embedding_bag deformable-attention core (``--msda_impl pytorch``) and
  ``nn.Dropout``'s masks (one Bernoulli draw per element): the baseline;
* ``fused AdamW``: the update of ``util/optim.py`` (one pass over all parameters);
* ``... auto core``: also the core ``--msda_impl auto`` picks (grid_sample, for training with 8
  channels per head; ``models/ms_deform_attn.py:select_core_impl``);
* ``... CPU dropout masks``: also the dropout masks of ``models/dropout.py`` (four elements per
  random word); these four rows with the original's ``--mask_out_stride 4``;
* ``... --mask_out_stride 2``: the mask losses on 2x-upsampled masks; these five rows with batches
  of 12 one-expression clips (``--expressions_per_clip 1``);
* ``... --expressions_per_clip 4``: batches of 3 clips, each shared by up to 4 expressions; these
  six rows with the quick start's earlier 6 decoder layers and dropout 0.1;
* ``... 4 decoder layers, no dropout in the transformer``: these seven rows with the FPN's dropout
  of 0.1 (the original's);
* ``... no dropout in the cross-modal FPN``: ``--fpn_dropout 0``, the quick start's recipe, what
  ``main.py`` runs; without dropout every attention takes PyTorch's fused kernel in training too;
* ``... --amp``: bfloat16 autocast (n/a on CPUs without native bfloat16);
* ``... a data-loader worker process``: ``--num_workers 1`` instead of loading in the main process;
* ``... 4x threads``: four times as many compute threads as the process has CPUs, what a CPU quota
  that PyTorch does not see causes (``util/threads.py`` prevents it);
* ``... 2 data-parallel processes``: ``main.py`` under ``torch.distributed.run --nproc_per_node 2``
  (gloo), the CPUs shared as threads; an iteration trains on both processes' batches, so the time
  per expression is what an epoch costs; the row before it with the buffers broadcast before every
  forward, ``DistributedDataParallel``'s default (``util/dist.py:wrap_data_parallel`` turns it off).

    python benchmarks/quickstart_train.py --iterations 40
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from benchmarks.text_table import print_table  # noqa: E402
from tools.quickstart import QUICKSTART  # noqa: E402
from util.amp import cpu_bfloat16_unsupported_reason  # noqa: E402
from util.threads import cpu_budget  # noqa: E402

PHASES = ("data", "forward", "losses", "backward", "clipping", "optimizer")


@dataclass(frozen=True)
class Config:
    """One row: how it differs from what ``main.py`` runs for the quick start."""

    name: str
    fused: bool = True
    """The fused AdamW of ``util/optim.py`` (False: the per-parameter loop)."""
    msda_impl: str = "auto"
    cpu_dropout: bool = True
    """The dropout masks of ``models/dropout.py`` (False: ``nn.Dropout``'s)."""
    amp: bool = False
    threads_per_cpu: int = 1
    num_workers: int = 0
    flags: tuple[str, ...] = ()
    """``main.py`` flags that replace the quick start's."""
    processes: int = 1
    """Data-parallel processes (gloo, wrapped as ``main.py`` wraps the model under ``torchrun``), sharing the
    CPUs as threads; the row times rank 0, whose iterations include waiting for the others."""
    sync_buffers: bool = False
    """With several processes: broadcast rank 0's buffers before every forward (``DistributedDataParallel``'s
    default, which ``util/dist.py:wrap_data_parallel`` turns off)."""

    def threads(self, cpus: int) -> int:
        """Compute threads of each process."""
        return max(1, cpus // self.processes) * self.threads_per_cpu


FPN_DROPOUT = ("--fpn_dropout", "0.1")
"""The cross-modal FPN's dropout before the quick start turned it off (the original's)."""
EARLIER_DECODER = ("--dec_layers", "6", "--dropout", "0.1", *FPN_DROPOUT)
"""The quick start's decoder before it dropped to 4 layers without dropout."""
ONE_EXPRESSION_PER_CLIP = ("--batch_size", "12", "--expressions_per_clip", "1", *EARLIER_DECODER)
CONFIGS = (
    Config("before: per-parameter AdamW, embedding_bag core, nn.Dropout masks, --mask_out_stride 4", fused=False,
           msda_impl="pytorch", cpu_dropout=False, flags=("--mask_out_stride", "4", *ONE_EXPRESSION_PER_CLIP)),
    Config("fused AdamW, embedding_bag core, nn.Dropout masks, --mask_out_stride 4", msda_impl="pytorch",
           cpu_dropout=False, flags=("--mask_out_stride", "4", *ONE_EXPRESSION_PER_CLIP)),
    Config("fused AdamW, auto core, nn.Dropout masks, --mask_out_stride 4", cpu_dropout=False,
           flags=("--mask_out_stride", "4", *ONE_EXPRESSION_PER_CLIP)),
    Config("fused AdamW, auto core, CPU dropout masks, --mask_out_stride 4",
           flags=("--mask_out_stride", "4", *ONE_EXPRESSION_PER_CLIP)),
    Config("... --mask_out_stride 2, batches of 12 one-expression clips", flags=ONE_EXPRESSION_PER_CLIP),
    Config("... --expressions_per_clip 4, batches of 3 clips", flags=EARLIER_DECODER),
    Config("... 4 decoder layers, no dropout in the transformer", flags=FPN_DROPOUT),
    Config("... no dropout in the cross-modal FPN (now)"),
    Config("... --amp", amp=True),
    Config("... a data-loader worker process", num_workers=1),
    Config("... 4x threads", threads_per_cpu=4),
    Config("... 2 data-parallel processes, buffers broadcast before every forward", processes=2, sync_buffers=True),
    Config("... 2 data-parallel processes", processes=2),
)
NOW = 7
"""The row of what ``main.py`` runs for the quick start; its forward is also timed per module."""
# Modules whose children are timed one by one in the forward (the model's; the transformer's encoder and
# decoder); the ModuleLists of per-layer heads are never called as a whole and fall into "other".
TIMED_PARENTS = ("", "transformer")
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


def time_modules(model: nn.Module, times: dict[str, list[float]]) -> None:
    """Add each call's milliseconds of the children of ``TIMED_PARENTS`` to ``times[name]`` (forward hooks)."""
    starts = {}

    def before(name):
        return lambda module, inputs: starts.__setitem__(name, time.perf_counter())

    def after(name):
        return lambda module, inputs, output: times[name].append(1000 * (time.perf_counter() - starts[name]))

    for parent in TIMED_PARENTS:
        for name, module in model.get_submodule(parent).named_children():
            if isinstance(module, nn.ModuleList):
                continue
            full_name = f"{parent}.{name}" if parent else name
            times.setdefault(full_name, [])
            module.register_forward_pre_hook(before(full_name))
            module.register_forward_hook(after(full_name))


def iteration_counts(rank: int, processes: int) -> Iterator[int]:
    """The iterations to run next: read by rank 0 from stdin (one count per line) and sent to the other
    ranks; it ends when stdin does."""
    while True:
        count = None
        if rank == 0:
            line = sys.stdin.readline()
            count = int(line) if line.strip() else 0
        if processes > 1:
            shared = [count]
            torch.distributed.broadcast_object_list(shared, 0)
            count = shared[0]
        if not count:
            return
        yield count


def serve(data: Path, config: Config, rank: int = 0) -> None:
    """Child process: build the quick start's model, optimizer and loader, then for every line ``K`` read
    from stdin run K iterations and print their per-phase milliseconds as one JSON line (``{phase: [ms]}``,
    and ``{"modules": {name: [ms per iteration]}}`` for the modules' forward times). With several
    ``config.processes``, rank 0 starts the others, which take their counts from it; it prints the
    expressions of all ranks' batches."""
    from datasets import build_dataset
    from datasets.loader import build_train_loader, set_loader_epoch
    from engine import _to_float32, gradient_norm
    from models import build_model
    from models.dropout import Dropout
    from opts import get_args_parser
    from util.amp import amp_settings, autocast
    from util.dist import all_gather_object, wrap_data_parallel
    from util.memory import reuse_freed_memory
    from util.optim import build_optimizer
    from util.random_state import seed_everything

    torch.set_num_threads(config.threads(cpu_budget()))
    if config.processes > 1:
        if rank == 0:
            for other in range(1, config.processes):
                multiprocessing.get_context("spawn").Process(target=serve, args=(data, config, other), daemon=True).start()
        rendezvous = data / f"rendezvous-{CONFIGS.index(config)}"
        torch.distributed.init_process_group("gloo", init_method=rendezvous.as_uri(), rank=rank,
                                             world_size=config.processes)
    reuse_freed_memory()  # as main.py does
    flags = [*QUICKSTART.model, *QUICKSTART.train, "--text_encoder", str(data / "text_encoder"),
             "--ytvos_path", str(data), "--output_dir", str(data / "unused"), "--msda_impl", config.msda_impl,
             *config.flags]
    args = get_args_parser().parse_args(flags + (["--amp"] if config.amp else []))
    seed_everything(args.seed + rank)
    model, criterion, _ = build_model(args)
    if not config.cpu_dropout:
        for module in model.modules():
            if isinstance(module, Dropout):
                module.forward = nn.Dropout.forward.__get__(module)
    optimizer, _ = build_optimizer(model, args)
    if not config.fused:
        optimizer = torch.optim.AdamW([{k: v for k, v in g.items() if k != "fused"} for g in optimizer.param_groups],
                                      lr=args.lr, weight_decay=args.weight_decay, fused=False)
    device = torch.device("cpu")
    amp_dtype, _ = amp_settings(args.amp, device)
    loader = build_train_loader(build_dataset(args.dataset_file, "train", args), batch_size=args.batch_size,
                                num_workers=config.num_workers, seed=args.seed, rank=rank, world_size=config.processes)
    weights = criterion.weight_dict
    model.train()
    trained = model
    if config.processes > 1:
        trained = DistributedDataParallel(model) if config.sync_buffers else wrap_data_parallel(model, device)

    def batches():
        for epoch in itertools.count():
            set_loader_epoch(loader, epoch)
            yield from loader

    stream = batches()
    calls: dict[str, list[float]] = {}
    time_modules(model, calls)
    for count in iteration_counts(rank, config.processes):
        times = {phase: [] for phase in PHASES}
        modules = {name: [] for name in calls}
        expressions = []
        for _ in range(count):
            for name in calls:
                calls[name].clear()
            clock = [time.perf_counter()]
            samples, targets = next(stream)
            expressions.append(len(targets))
            clock.append(time.perf_counter())
            with autocast(device, amp_dtype):
                outputs = trained(samples, [t["caption"] for t in targets], targets)
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
            for phase, begin, end in zip(PHASES, clock, clock[1:]):
                times[phase].append(1000 * (end - begin))
            for name, durations in calls.items():
                modules[name].append(sum(durations))
        expressions = [sum(counts) for counts in zip(*all_gather_object(expressions))]
        if rank == 0:
            print(json.dumps({**times, "modules": modules, "expressions": expressions}), flush=True)
    if config.processes > 1:
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description="the CPU quick start's training iteration, per step and setting")
    parser.add_argument("--iterations", type=int, default=40, help="timed iterations per configuration (medians)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="the iterations are split into this many rounds, the configurations taking turns")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # child process: one row
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = cpu_budget()
    if args.serve is not None:
        serve(Path(args.data), CONFIGS[args.serve])
        return

    recipe = dict(zip(QUICKSTART.train[::2], QUICKSTART.train[1::2]))
    print(f"quick start training iteration (batch of {recipe['--batch_size']} one-frame clips at most "
          f"{recipe['--max_size']} pixels wide, each shared by up to {recipe['--expressions_per_clip']} expressions), "
          f"{cpus} CPU(s), median of "
          f"{args.iterations} iterations in {args.rounds} interleaved rounds, milliseconds")
    header = ("configuration", "threads", *PHASES, "total", "expressions", "per expression", "ratio")
    rows, children = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        data = make_data(Path(scratch))
        for index, config in enumerate(CONFIGS):
            if config.amp and cpu_bfloat16_unsupported_reason() is not None:
                continue
            command = [sys.executable, __file__, "--serve", str(index), "--data", str(data)]
            children[index] = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL, text=True)
        times = {index: {phase: [] for phase in PHASES} for index in children}
        expressions = {index: [] for index in children}
        module_times: dict[str, list[float]] = {}
        per_round = max(1, args.iterations // args.rounds)
        for round_index in range(args.rounds + 1):  # round 0: warm-up, not timed
            for index, child in children.items():
                child.stdin.write(f"{3 if round_index == 0 else per_round}\n")
                child.stdin.flush()
                reply = child.stdout.readline()
                if not reply:
                    raise RuntimeError(f"configuration {CONFIGS[index].name!r} failed (run it alone with --serve {index})")
                if round_index > 0:
                    reply = json.loads(reply)
                    expressions[index] += reply.pop("expressions")
                    for name, values in reply.pop("modules").items():
                        if index == NOW:
                            module_times.setdefault(name, []).extend(values)
                    for phase, values in reply.items():
                        times[index][phase] += values
        for child in children.values():
            child.stdin.close()
            child.wait()
    baseline = None
    for index, config in enumerate(CONFIGS):
        if index not in children:
            rows.append((config.name, "", *[""] * len(PHASES), f"n/a: {cpu_bfloat16_unsupported_reason()}", "", "", ""))
            continue
        phases = times[index]
        total = statistics.median([sum(parts) for parts in zip(*phases.values())])
        per_batch = statistics.mean(expressions[index])
        per_expression = total / per_batch
        baseline = baseline or per_expression
        threads = f"{config.processes}x{config.threads(cpus)}" if config.processes > 1 else str(config.threads(cpus))
        rows.append((config.name, threads, *(f"{statistics.median(phases[p]):.1f}" for p in PHASES),
                     f"{total:.1f}", f"{per_batch:.1f}", f"{per_expression:.1f}", f"{per_expression / baseline:.2f}x"))
    print_table(header, rows)
    print("expressions: mean per batch (each a one-frame clip, or sharing one: --expressions_per_clip); "
          "per expression: total / expressions; ratio: time per expression relative to the first row, i.e. of an "
          "epoch")
    forward = statistics.median(times[NOW]["forward"])
    module_rows = [(name, f"{statistics.median(values):.1f}", f"{statistics.median(values) / forward:.0%}")
                   for name, values in module_times.items() if statistics.median(values) >= 0.05]
    module_rows.sort(key=lambda row: -float(row[1]))
    top_level = sum(statistics.median(values) for name, values in module_times.items() if "." not in name)
    module_rows.append(("outside these modules (per-layer heads, flattening)", f"{forward - top_level:.1f}",
                        f"{(forward - top_level) / forward:.0%}"))
    print(f"\nforward of {CONFIGS[NOW].name!r} by module, milliseconds (median over the iterations)")
    print_table(("module", "forward", "share"), module_rows)


if __name__ == "__main__":
    main()
