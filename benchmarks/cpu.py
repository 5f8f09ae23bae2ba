"""CPU benchmark: the whole model's forward in float32 and bfloat16 with 1 and 2 threads, per-module
times, the demo on a generated video and a training step, in one table with ratios measured in the
same run.

    python benchmarks/cpu.py                            # about 10 minutes on 2 cores
    python benchmarks/cpu.py --demo_frames 300          # the demo on a 10-second 720p video (longer)
    python benchmarks/cpu.py --compare-original PATH    # also the original ReferFormer from a local checkout
    python benchmarks/cpu.py --baseline PATH            # also another checkout of this implementation

Model: ReferFormer R50 with box refinement and a RoBERTa-base-sized text encoder, random weights
(seeded; ``benchmarks/inference.py``'s model), one clip of ``--frames`` frames at ``--height`` x
``--width`` (default 5 at 360x640, the size every frame is resized to at inference), one expression,
eval mode, no autograd. Sections (``--sections``, all by default):

- ``forward``: ``model([clip], [caption], [target])`` (the forward the inference scripts and the
  original run, auxiliary decoder layers' masks included), in float32 and under the ``--amp`` policy
  (bfloat16 autocast, ``util/amp.py``; skipped with the reason on CPUs without native bfloat16), for
  each ``--threads`` count. Per-module times of the same runs: backbone, input projections, text
  encoder, early fusion, encoder, decoder, cross-modal FPN, dynamic mask head (with its controller),
  the rest (box heads, flattening, position encodings), and the postprocessing of the inference
  scripts (best query, its mask logits upsampled to ``--orig_height`` x ``--orig_width`` and
  thresholded). How far each output is from the float32 one: the largest difference relative to
  the output's largest magnitude, and the IoU of the binary masks (logit > 0) of all queries.
- ``demo``: ``demo.py`` on a generated ``--demo_frames``-frame 720p MP4 (moving shapes), float32 and
  ``--amp``, with the model saved as a model folder: decoding, 36-frame clips, masks, overlays, GIF
  and MP4 included.
- ``train``: one training iteration of ``benchmarks/train_step.py`` (forward, losses, backward,
  clipping, AdamW) at the same size, float32 and ``--amp``.

Each implementation runs in its own worker process with the same weights; all measurements of a
section take turns (float32 / bfloat16, thread counts, implementations), ``--repeat`` rounds after
one warm-up, and the table shows medians, so that another program on the machine slows them alike.
Ratios are to this implementation's float32 time at the same thread count (to the original's with
``--compare-original``). ``--json OUT`` also saves every measurement.

``--compare-original PATH`` imports the original's ``models`` package from a checkout at PATH in a
worker process and loads the same weights. The original needs its compiled CUDA op, the
``roberta-base`` download and older library versions; the worker replaces the op by the original's
own pure-PyTorch ``ms_deform_attn_core_pytorch`` and the text encoder by a randomly initialised
RoBERTa-base of this repository's config (its weights are then loaded from ours), and papers over
the library changes listed in :func:`import_original` (the original's models also need ``fvcore`` on
``PYTHONPATH``). If the import fails, the table says so and the rest of the benchmark runs. ``--baseline PATH``
does the same with another checkout of this re-implementation (for example the commit before a
change; its forward, modules and outputs are measured like ours).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CAPTION = "a person riding a brown horse on the left"
# Worker replies are the stdout lines starting with this marker (libraries may print other lines).
REPLY = "@@cpu-benchmark "
DEMO_SIZE = (720, 1280)
DEMO_FPS = 30
# Modules timed inside the forward: (row name, attribute path from the model, method). A row may
# have several entries; none of them runs inside another.
MODULES = (
    ("backbone", "backbone", "forward"),
    ("input projections", "input_proj.0", "forward"),
    ("input projections", "input_proj.1", "forward"),
    ("input projections", "input_proj.2", "forward"),
    ("input projections", "input_proj.3", "forward"),
    ("text encoder", "", "forward_text"),
    ("early fusion", "fusion_module", "forward"),
    ("encoder", "transformer.encoder", "forward"),
    ("decoder", "transformer.decoder", "forward"),
    ("cross-modal FPN", "pixel_decoder", "forward"),
    ("cross-modal FPN", "pixel_decoder", "forward_visual"),
    ("dynamic mask head", "mask_head", "forward"),
    ("dynamic mask head", "controller", "forward"),
)
OTHER = "other (box heads, flattening, positions)"
POSTPROCESS = "postprocess (best query, upsample, threshold)"


# --------------------------------------------------------------------------------------------------
# Timing helpers (used in the worker processes)


class ModuleTimer:
    """Wall time spent in each of :data:`MODULES` during a ``with`` block, summed per row name.

    The timed methods are wrapped by instance attributes, removed again on exit; attributes missing
    from a model (another implementation) are skipped.
    """

    def __init__(self, model: Any, modules: tuple[tuple[str, str, str], ...] = MODULES):
        self.model = model
        self.modules = modules
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _resolve(model: Any, path: str) -> Any:
        target = model
        for name in filter(None, path.split(".")):
            target = getattr(target, name, None)
            if target is None:
                return None
        return target

    def __enter__(self) -> "ModuleTimer":
        self.seconds = {}
        self._patched = []
        for row, path, method in self.modules:
            target = self._resolve(self.model, path)
            if target is None or not hasattr(target, method) or method in vars(target):
                continue
            setattr(target, method, self._timed(row, getattr(target, method)))
            self._patched.append((target, method))
        return self

    def _timed(self, row: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[row] = self.seconds.get(row, 0.0) + time.perf_counter() - start

        return timed

    def __exit__(self, *exc) -> None:
        for target, method in self._patched:
            delattr(target, method)


# --------------------------------------------------------------------------------------------------
# Models (built in the worker processes, from the code under ``root``)


def model_argv() -> list[str]:
    """Options of the benchmarked model (the released Ref-YouTube-VOS R50 configuration)."""
    return ["--backbone", "resnet50", "--with_box_refine", "--binary", "--freeze_text_encoder", "--device", "cpu"]


def build_this_model(torch: Any) -> Any:
    """This implementation's model (whichever checkout is first on ``sys.path``), random weights, eval mode."""
    from models import build_model
    from models.text_encoder import load_tokenizer, text_encoder_from_config
    from opts import get_args_parser

    config = json.loads((GOLDEN / "roberta_base_config.json").read_text())
    torch.manual_seed(0)
    args = get_args_parser().parse_args(model_argv())
    model, _, _ = build_model(args, text_encoder=text_encoder_from_config(config),
                              tokenizer=load_tokenizer(str(GOLDEN / "tokenizer")))
    return model.eval()


def import_original(root: Path) -> Any:
    """Import the original ReferFormer's ``models`` package from the checkout ``root``, with shims for
    what no longer works there (run against the original's last commit, 06fc218):

    - its compiled ``MultiScaleDeformableAttention`` op → its own ``ms_deform_attn_core_pytorch``;
    - ``RobertaModel/RobertaTokenizerFast.from_pretrained("roberta-base")`` (a download) → a randomly
      initialised model of this repository's roberta-base config and its test tokenizer (the weights
      are replaced by ours afterwards);
    - transformers 5 removed ``batch_encode_plus`` → the tokenizer's ``__call__``;
    - torchvision: ``resnet*(pretrained=...)`` no longer exists → no download, random weights;
      ``torchvision.ops.misc.interpolate`` → ``torch.nn.functional.interpolate``.
    """
    import types

    import torch
    import torchvision
    import transformers

    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    config = json.loads((GOLDEN / "roberta_base_config.json").read_text())
    config.pop("architectures", None)
    random_roberta = lambda *a, **k: transformers.RobertaModel(transformers.RobertaConfig(**config))  # noqa: E731
    transformers.RobertaModel.from_pretrained = random_roberta
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(GOLDEN / "tokenizer"))  # before the patch below
    tokenizer_class = transformers.RobertaTokenizerFast
    tokenizer_class.from_pretrained = classmethod(lambda cls, *a, **k: tokenizer)
    for cls in {tokenizer_class, type(tokenizer)}:
        if not hasattr(cls, "batch_encode_plus"):
            cls.batch_encode_plus = lambda self, texts, **kwargs: self(texts, **kwargs)
    if not hasattr(torchvision.ops.misc, "interpolate"):
        torchvision.ops.misc.interpolate = torch.nn.functional.interpolate
    for name in ("resnet50", "resnet101"):
        builder = getattr(torchvision.models, name)
        setattr(torchvision.models, name,
                lambda *a, _builder=builder, **k: _builder(*a, **{key: v for key, v in k.items() if key != "pretrained"}))
    sys.path.insert(0, str(root))
    import models as original_models
    from models.ops.functions import ms_deform_attn_func
    from models.ops.modules import ms_deform_attn as original_msda

    original_msda.MSDeformAttnFunction = types.SimpleNamespace(
        apply=lambda value, shapes, lsi, loc, att, step: ms_deform_attn_func.ms_deform_attn_core_pytorch(
            value, shapes, loc, att))
    return original_models


def build_original_model(torch: Any, root: Path) -> Any:
    """The original's R50 model (its ``opts.py`` defaults plus :func:`model_argv`), eval mode."""
    original_models = import_original(root)
    import opts as original_opts

    parser = argparse.ArgumentParser(parents=[original_opts.get_args_parser()])
    args = parser.parse_args(model_argv() + ["--masks"])
    model, _, _ = original_models.build_model(args)
    return model.eval()


def load_weights(model: Any, state_path: Path, torch: Any) -> None:
    state = torch.load(state_path, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights from {state_path} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


# --------------------------------------------------------------------------------------------------
# Worker process: builds one implementation's model and answers commands on stdin


class Worker:
    """One implementation in a child process (``--worker KIND``), driven by JSON commands."""

    def __init__(self, kind: str, root: Path, args: argparse.Namespace, state_path: Path):
        command = [sys.executable, __file__, "--worker", kind, "--root", str(root), "--state", str(state_path),
                   "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
                   "--orig_height", str(args.orig_height), "--orig_width", str(args.orig_width)]
        self.kind = kind
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        raise RuntimeError(f"the {self.kind} worker exited (code {self.process.wait()}); see its messages above")

    def ask(self, **command: Any) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def reply(message: dict) -> None:
    print(REPLY + json.dumps(message), flush=True)


def use_checkout(root: Path | None) -> None:
    """Import this repository's top-level packages (``models``, ``util``, …) from ``root`` only (or from no
    checkout: ``None``): first on ``sys.path``, and without an editable install's import hook, which would
    otherwise supply the modules missing there (an older checkout) from the installed one."""
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not getattr(finder, "__module__", "").startswith("__editable__")]
    if root is not None:
        sys.path.insert(0, str(root))


def worker_main(args: argparse.Namespace) -> None:
    """Build the model of ``args.worker`` and answer ``forward``/``demo``/``train`` commands until stdin closes."""
    root = Path(args.root).resolve()
    use_checkout(root if args.worker != "original" else None)
    import torch

    try:
        if args.worker == "original":
            model = build_original_model(torch, root)
            load_weights(model, args.state, torch)
        else:
            model = build_this_model(torch)
            if args.worker == "ours":
                torch.save(model.state_dict(), args.state)
            else:
                load_weights(model, args.state, torch)
        if args.worker == "ours":
            from util.memory import reuse_freed_memory

            reuse_freed_memory()  # as the entry points do
    except Exception:
        traceback.print_exc()
        reply({"error": traceback.format_exc().strip().splitlines()[-1]})
        return
    forward_context = nullcontext if args.worker == "original" else inference_setup(model)
    reply({"ready": True, "native_bf16": native_bfloat16(root if args.worker != "original" else ROOT),
           "code": str(Path(sys.modules["models"].__file__).parent), "setup": forward_context is not nullcontext})
    clip = torch.randn(args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    target = {"size": torch.tensor([args.height, args.width])}
    for line in sys.stdin:
        command = json.loads(line)
        torch.set_num_threads(command["threads"])
        if command["cmd"] == "forward":
            reply(time_forward(torch, model, clip, target, command, args, forward_context))
        elif command["cmd"] == "demo":
            reply(time_demo(torch, model, command))
        elif command["cmd"] == "train":
            reply(time_train_step(command))


def inference_setup(model: Any) -> Callable:
    """Prepare ``model`` as the video predictor of the checkout on ``sys.path`` does on the CPU, and return
    a factory of the context its forward passes run in (nothing for checkouts without ``models.cpu_inference``)."""
    try:
        from models.cpu_inference import cpu_inference, use_channels_last
    except ImportError:
        return nullcontext
    use_channels_last(model)
    return lambda: cpu_inference(model)


def native_bfloat16(root: Path) -> bool:
    try:
        from util.amp import cpu_bfloat16_unsupported_reason
    except ImportError:  # an older checkout: the same test, inline
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return cpu_bfloat16_unsupported_reason() is None


def amp_context(torch: Any, dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def time_forward(torch: Any, model: Any, clip: Any, target: dict, command: dict, args: argparse.Namespace,
                 forward_context: Callable) -> dict:
    """One timed forward (and postprocessing) with per-module times; saves the outputs if asked."""
    import torch.nn.functional as F

    with torch.no_grad(), ModuleTimer(model) as timer:
        start, cpu_start = time.perf_counter(), time.process_time()
        with amp_context(torch, command["dtype"]), forward_context():
            outputs = model([clip], [CAPTION], [target])
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        start = time.perf_counter()
        logits = outputs["pred_logits"][0].float()  # [T, Q, K]
        query = int(logits.sigmoid().mean(0).max(-1).values.argmax())
        chosen = outputs["pred_masks"][0, :, query].float()  # [T, h, w]
        upsampled = F.interpolate(chosen[None], size=(args.orig_height, args.orig_width), mode="bilinear",
                                  align_corners=False)
        masks = upsampled.sigmoid() > 0.5  # [1, T, H, W]
        postprocess = time.perf_counter() - start
    if command.get("save"):
        torch.save({key: outputs[key].float() for key in ("pred_logits", "pred_boxes", "pred_masks")}
                   | {"masks": masks}, command["save"])
    modules = dict(timer.seconds)
    modules[OTHER] = seconds - sum(modules.values())
    modules[POSTPROCESS] = postprocess
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "modules": modules}


def write_demo_video(path: Path, frames: int) -> None:
    """A ``frames``-frame 720p MP4: coloured discs and squares moving over a smooth background."""
    import numpy as np
    from PIL import Image, ImageDraw

    from util.video import write_mp4

    height, width = DEMO_SIZE
    rng = np.random.default_rng(0)
    background = Image.fromarray(rng.integers(60, 200, size=(9, 16, 3), dtype=np.uint8)).resize((width, height))

    def frame(t: int) -> Image.Image:
        image = background.copy()
        draw = ImageDraw.Draw(image)
        x = 100 + (t * 7) % (width - 300)
        draw.ellipse((x, 200, x + 160, 360), fill=(200, 30, 30))
        draw.rectangle((width - x - 150, 420, width - x, 570), fill=(30, 60, 200))
        return image

    write_mp4((frame(t) for t in range(frames)), path, fps=DEMO_FPS)


def time_demo(torch: Any, model: Any, command: dict) -> dict:
    """``demo.py`` on the video of ``command["video"]`` with the model saved in ``command["model_dir"]``."""
    import demo

    model_dir = Path(command["model_dir"])
    if not (model_dir / "config.json").is_file():
        model.save_pretrained(model_dir)
    argv = ["--video", command["video"], "--text", CAPTION, "--checkpoint", str(model_dir), "--device", "cpu",
            "--output_dir", command["output_dir"]] + (["--amp"] if command["amp"] else [])
    start = time.perf_counter()
    demo.main(argv)
    return {"seconds": time.perf_counter() - start}


def time_train_step(command: dict) -> dict:
    from benchmarks import train_step

    result = train_step.run_one("resnet50", command["amp"], False, "cpu", command["iterations"])
    return {"seconds": result["seconds"]}


# --------------------------------------------------------------------------------------------------
# The parent: schedules the measurements, prints the table


def output_differences(torch: Any, path: Path, reference_path: Path) -> dict:
    """Largest output differences relative to the reference's largest magnitude, and the mask IoUs."""
    actual, reference = torch.load(path, weights_only=True), torch.load(reference_path, weights_only=True)
    result = {}
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        scale = reference[key].abs().max().clamp_min(1e-30)
        result[key] = ((actual[key] - reference[key]).abs().max() / scale).item()
    result["iou_all_queries"] = mask_iou(actual["pred_masks"] > 0, reference["pred_masks"] > 0)
    result["iou_chosen"] = mask_iou(actual["masks"], reference["masks"])
    return result


def mask_iou(a: Any, b: Any) -> float:
    """IoU of two boolean tensors (1 when both are empty)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


class Table:
    """Measurements pivoted into one table: a row per (section, measure, threads), a column per
    configuration (implementation and dtype, in the order of ``columns``), each cell the median
    seconds and their ratio to the row's reference, its first measured column; a note per row."""

    def __init__(self, columns: list[str]) -> None:
        self.cells: dict[tuple[str, str, str], dict[str, float | None]] = {}
        self.notes: dict[tuple[str, str, str], str] = {}
        self.columns = list(columns)

    def add(self, section: str, measure: str, threads: int | str, column: str, seconds: float | None,
            note: str | None = None) -> None:
        row = (section, measure, str(threads))
        self.cells.setdefault(row, {})[column] = seconds
        if column not in self.columns:
            self.columns.append(column)
        if note is not None:
            self.notes[row] = note

    def rows(self) -> list[dict]:
        return [{"section": s, "measure": m, "threads": t, "seconds": cells, "note": self.notes.get((s, m, t), "")}
                for (s, m, t), cells in self.cells.items()]

    def print(self) -> None:
        header = ("section", "measure", "threads", *self.columns, "note")
        lines = [header]
        for row, cells in self.cells.items():
            reference = next((column for column in self.columns if cells.get(column)), None)
            formatted = []
            for column in self.columns:
                value = cells.get(column)
                if value is None:
                    formatted.append("-")
                elif column == reference:
                    formatted.append(f"{value:.3f}")
                else:
                    formatted.append(f"{value:.3f} ({value / cells[reference]:.2f}x)")
            lines.append((*row, *formatted, self.notes.get(row, "")))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        numeric = range(3, 3 + len(self.columns))
        for index, line in enumerate(lines):
            print(" | ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())
            if index == 0:
                print("-+-".join("-" * w for w in widths))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: list[float]) -> float:
    """Range of repeated measurements relative to their median (0 for fewer than two), a noise indicator."""
    return (max(values) - min(values)) / median(values) if len(values) > 1 else 0.0


def forward_section(table: Table, workers: dict[str, Worker], args: argparse.Namespace, dtypes: list[str],
                    scratch: Path, results: dict) -> None:
    """Whole-model forward and per-module rows; output differences to the reference's float32 outputs."""
    import torch

    configs = [(name, dtype, threads) for threads in args.threads for name in workers for dtype in dtypes]
    for name, dtype, threads in configs:  # warm-up (first calls allocate and pick kernels); keeps the outputs
        workers[name].ask(cmd="forward", threads=threads, dtype=dtype,
                          save=str(scratch / f"{name}-{dtype}.pt") if threads == args.threads[-1] else None)
    runs: dict[tuple[str, str, int], list[dict]] = {config: [] for config in configs}
    for round_index in range(args.repeat):
        for name, dtype, threads in configs:
            runs[(name, dtype, threads)].append(workers[name].ask(cmd="forward", threads=threads, dtype=dtype))
        print(f"forward: round {round_index + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    for threads in args.threads:
        spreads = []
        for name in workers:
            for dtype in dtypes:
                seconds = [r["seconds"] for r in runs[(name, dtype, threads)]]
                table.add("forward", "whole model", threads, f"{name} {dtype}", median(seconds))
                spreads.append(spread(seconds))
        table.add("forward", "whole model", threads, f"{name} {dtype}", median(seconds),
                  note=f"noise: the {args.repeat} runs of a cell span up to {100 * max(spreads):.0f}% of their median")
    for threads in args.threads:
        ours_total = median([r["seconds"] for r in runs[("ours", "fp32", threads)]])
        for name in workers:
            for dtype in dtypes:
                module_runs = runs[(name, dtype, threads)]
                for module in dict.fromkeys(k for r in module_runs for k in r["modules"]):
                    seconds = median([r["modules"].get(module, 0.0) for r in module_runs])
                    share = None
                    if (name, dtype) == ("ours", "fp32"):
                        share = f"{100 * seconds / ours_total:.0f}% of ours fp32"
                    table.add("module", module, threads, f"{name} {dtype}", seconds, note=share)
    results["forward_runs"] = {f"{n} {d} {t}": r for (n, d, t), r in runs.items()}
    reference_name = "original" if "original" in workers else "ours"
    reference = scratch / f"{reference_name}-fp32.pt"
    results["output_reference"] = f"{reference_name} fp32"
    results["output_differences"] = {
        f"{name} {dtype}": output_differences(torch, scratch / f"{name}-{dtype}.pt", reference)
        for name in workers for dtype in dtypes if (name, dtype) != (reference_name, "fp32")
    }


def demo_section(table: Table, worker: Worker, args: argparse.Namespace, dtypes: list[str], scratch: Path) -> None:
    """``demo.py`` once per dtype on a generated video."""
    video = scratch / "demo.mp4"
    write_demo_video(video, args.demo_frames)
    threads = args.threads[-1]
    for dtype in dtypes:
        result = worker.ask(cmd="demo", threads=threads, amp=dtype == "bf16", video=str(video),
                            model_dir=str(scratch / "model"), output_dir=str(scratch / f"demo-{dtype}"))
        table.add("demo", f"{args.demo_frames} frames of 720p", threads, f"ours {dtype}", result["seconds"],
                  note="one run each")


def train_section(table: Table, worker: Worker, args: argparse.Namespace, dtypes: list[str]) -> None:
    """One training iteration per dtype (median of ``--train_iterations`` after a warm-up)."""
    threads = args.threads[-1]
    for dtype in dtypes:
        result = worker.ask(cmd="train", threads=threads, amp=dtype == "bf16", iterations=args.train_iterations)
        table.add("train step", "R50, 1 clip", threads, f"ours {dtype}", result["seconds"],
                  note=f"{train_size()}; median of {args.train_iterations}")


def train_size() -> str:
    from benchmarks import train_step

    return f"{train_step.FRAMES}x{train_step.HEIGHT}x{train_step.WIDTH}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=("forward", "demo", "train"),
                        default=["forward", "demo", "train"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds of the forward section (medians)")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--orig_height", type=int, default=720, help="frame size the chosen mask is upsampled to")
    parser.add_argument("--orig_width", type=int, default=1280)
    parser.add_argument("--demo_frames", type=int, default=30,
                        help="frames of the generated demo video (300: ten seconds at 30 fps)")
    parser.add_argument("--train_iterations", type=int, default=2, help="timed training steps (median)")
    parser.add_argument("--no_bf16", action="store_true", help="float32 only")
    parser.add_argument("--compare-original", dest="original", type=Path, default=None, metavar="PATH",
                        help="a checkout of the original ReferFormer to time on the same inputs and weights")
    parser.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                        help="another checkout of this implementation to time side by side")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also save every number here")
    parser.add_argument("--worker", choices=("ours", "baseline", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    sys.path.insert(0, str(ROOT))
    import torch

    from util.amp import cpu_bfloat16_unsupported_reason

    start = time.perf_counter()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
                               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory(prefix="cpu-benchmark-") as tmp, workers_for(args, Path(tmp)) as workers:
        scratch = Path(tmp)
        reason = "--no_bf16" if args.no_bf16 else cpu_bfloat16_unsupported_reason()
        dtypes = ["fp32"] if reason else ["fp32", "bf16"]
        if reason:
            print(f"bfloat16 not measured: {reason}", flush=True)
        order = [name for name in ("original", "ours", "baseline") if name in workers]
        table = Table([f"{name} {dtype}" for name in order for dtype in dtypes])
        print(f"CPU benchmark: torch {torch.__version__}, {results['cpu_capability']}, {', '.join(order)}; "
              f"{args.frames} frames {args.height}x{args.width}, threads {args.threads}", flush=True)
        if "forward" in args.sections:
            forward_section(table, workers, args, dtypes, scratch, results)
        if "demo" in args.sections:
            demo_section(table, workers["ours"], args, dtypes, scratch)
        if "train" in args.sections:
            train_section(table, workers["ours"], args, dtypes)
    print()
    table.print()
    print("cells: median seconds (ratio to the first column of the row); module rows sum to the whole model")
    for name, diff in results.get("output_differences", {}).items():
        print(f"outputs of {name} vs {results['output_reference']}: max|diff|/max|ref| logits {diff['pred_logits']:.1e}, "
              f"boxes {diff['pred_boxes']:.1e}, masks {diff['pred_masks']:.1e}; mask IoU of all queries "
              f"{diff['iou_all_queries']:.4f}, of the chosen query at {args.orig_height}x{args.orig_width} "
              f"{diff['iou_chosen']:.4f}")
    results["rows"] = table.rows()
    results["seconds"] = time.perf_counter() - start
    print(f"total {results['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


class workers_for:
    """Start the workers (ours first: it writes the weights the others load); close them on exit."""

    def __init__(self, args: argparse.Namespace, scratch: Path):
        self.args, self.scratch = args, scratch

    def __enter__(self) -> dict[str, Worker]:
        state = self.scratch / "weights.pt"
        self.workers = {"ours": Worker("ours", ROOT, self.args, state)}
        if "error" in self.workers["ours"].ready:
            raise RuntimeError(f"building the model failed: {self.workers['ours'].ready['error']}")
        for kind, root in (("baseline", self.args.baseline), ("original", self.args.original)):
            if root is None:
                continue
            worker = Worker(kind, root, self.args, state)
            if "error" in worker.ready:
                print(f"--{kind} {root}: not timed, the worker failed: {worker.ready['error']}", file=sys.stderr)
                worker.close()
                continue
            self.workers[kind] = worker
        return self.workers

    def __exit__(self, *exc) -> None:
        for worker in self.workers.values():
            worker.close()


if __name__ == "__main__":
    main()
