"""GPU benchmark: the deformable-attention core per implementation, the whole R50 model, a training
step and video inference, in one table.

    python benchmarks/gpu.py                     # a few minutes on one GPU
    python benchmarks/gpu.py --json gpu.json     # also save every number

Sections (``--sections``, all by default):

- ``core``: the core op at ReferFormer's shapes (5 frames of 360x640 → levels 45x80, 23x40,
  12x20, 6x10; 8 heads, 4 levels, 4 points, 32 channels per head). Encoder: Lq = S = 4820 queries
  per frame; decoder: 5 queries per frame. Per implementation (triton; triton with bfloat16 value
  and output gradient, as under ``--amp``; pytorch, the embedding_bag core; reference, grid_sample):
  forward, forward+backward, and the peak memory of forward+backward above its inputs (inputs and
  timing as ``benchmarks/msdeform_attn.py``). Also the largest difference of the Triton core's
  output and three gradients to the reference's, relative to each tensor's largest magnitude.
- ``model``: ReferFormer R50 (box refinement, binary class, frozen RoBERTa-base-sized text encoder,
  random weights, as ``benchmarks/inference.py`` builds it), one clip of ``--model_frames`` frames
  at ``--model_size``, one expression: forward (eval, no autograd) and forward+backward (training
  mode, surrogate loss: the sum of all outputs), each in float32 and under bfloat16 autocast, per
  core implementation. Peak memory here is the total allocated (weights included).
- ``train``: ``benchmarks/train_step.py``'s R50 training step (forward, losses, backward, clipping,
  AdamW), float32 and ``--amp``, each in its own process, with the default core (auto).
- ``inference``: one video (the model frames) with 4 expressions through ``VideoPredictor``
  (features reused, expressions batched, masks upsampled to 720x1280), per core implementation.
- ``tune``: the Triton kernel's launch configurations (queries per program, warps per program;
  ``CANDIDATE_CONFIGS`` of ``models/ms_deform_attn_triton.py``) at the core's encoder and decoder
  shapes, value in float32 and in what ``--amp`` gives the kernel (bfloat16; float16 on GPUs older
  than compute capability 8.0): forward and backward alone, each candidate checked against the
  reference core first. Ratios to the configuration in use on this GPU's generation
  (``LAUNCH_CONFIGS``); ends with the fastest as entries of that table (least time summed over the
  two dtypes). ``python tools/triton_registers.py --candidates`` shows what each candidate costs in
  registers. Not in the default sections (about a minute, mostly compiling).

Times are medians after one warm-up (the implementations take turns). Ratios: core, model and
inference rows to the pytorch row of the same measure; the ``--amp`` training step to the float32
one. Exits with a message when no CUDA device is available (``--device cpu`` runs the same
measurements without the Triton rows, slowly: for checking the script).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import inference as inference_bench  # noqa: E402
from benchmarks import msdeform_attn as core_bench  # noqa: E402
from benchmarks import train_step as train_bench  # noqa: E402
from models.ms_deform_attn import ms_deform_attn_core, set_core_impl  # noqa: E402

SECTIONS = ("core", "model", "train", "inference", "tune")
DEFAULT_SECTIONS = ("core", "model", "train", "inference")
# Largest difference of a launch candidate's output and gradients to the reference core's, relative
# to each tensor's largest magnitude, above which the candidate is reported wrong and not chosen:
# 100x the interpreter tests' float32 bound (1e-5), 2x their bfloat16 and float16 ones (1e-2, 1e-3).
TUNE_TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2, "fp16": 2e-3}
CAPTION = "a person riding a brown horse on the left"
NUM_EXPRESSIONS = 4
ORIGINAL_SIZE = (720, 1280)
MIB = 2**20


class Table:
    """Rows of (section, measure, implementation, ms, peak MiB, ratio of time, ratio of memory)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, section: str, measure: str, impl: str, ms: float, peak_mib: float | None, baseline: dict | None):
        row = {"section": section, "measure": measure, "impl": impl, "ms": ms, "peak_mib": peak_mib}
        row["time_ratio"] = ms / baseline["ms"] if baseline else None
        both = baseline and peak_mib is not None and baseline["peak_mib"]
        row["memory_ratio"] = peak_mib / baseline["peak_mib"] if both else None
        self.rows.append(row)
        return row

    def print(self) -> None:
        header = ("section", "measure", "impl", "ms", "peak MiB", "time ratio", "memory ratio")
        cells = [header] + [
            (
                r["section"], r["measure"], r["impl"], f"{r['ms']:.2f}",
                "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
                "-" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}x",
                "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}x",
            )
            for r in self.rows
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for index, row in enumerate(cells):
            # Text columns left-aligned, numbers right-aligned.
            print(" | ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
            if index == 0:
                print("-+-".join("-" * w for w in widths))


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable ({error})"
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return info


def peak_total_mib(step: Callable[[], None], device: torch.device) -> float | None:
    """Peak allocated GPU memory during ``step``, everything allocated included (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MIB


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def core_section(table: Table, impls: list[str], device: torch.device, repeat: int,
                 geometry: core_bench.Geometry) -> dict:
    """Core rows; returns the Triton core's largest differences to the reference (empty without Triton)."""
    for scenario in ("encoder", "decoder"):
        results = core_bench.measure_core(scenario, impls, device, repeat, geometry=geometry)
        if "triton" in impls:
            bf16 = core_bench.measure_core(scenario, ["triton"], device, repeat, value_dtype=torch.bfloat16,
                                           geometry=geometry)
            results["triton bf16"] = bf16["triton"]
        pytorch = results.get("pytorch")
        for key, measure in (("forward_ms", "forward"), ("forward_backward_ms", "forward+backward")):
            baseline = {"ms": pytorch[key], "peak_mib": pytorch["peak_mib"]} if pytorch else None
            for impl, result in results.items():
                peak = result["peak_mib"] if key == "forward_backward_ms" else None
                table.add(f"core {scenario}", measure, impl, result[key], peak, baseline)
    if "triton" not in impls:
        return {}
    value, shapes, locations, weights, grad = core_bench.make_inputs("encoder", device, geometry=geometry)
    differences = {}
    for dtype_name, dtype in (("float32", torch.float32), ("bfloat16 value", torch.bfloat16)):
        # The reference runs on the same (rounded) values, upcast.
        rounded_value, rounded_grad = value.to(dtype), grad.to(dtype)
        inputs = {"triton": (rounded_value, rounded_grad), "reference": (rounded_value.float(), rounded_grad.float())}
        outputs = {
            impl: run_core_with_grads(impl, impl_value, shapes.tolist(), locations, weights, impl_grad)
            for impl, (impl_value, impl_grad) in inputs.items()
        }
        names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
        differences[dtype_name] = {
            name: relative_error(a, e) for name, a, e in zip(names, outputs["triton"], outputs["reference"])
        }
    return differences


def build_model(device: torch.device):
    """The R50 model of benchmarks/inference.py (random weights, RoBERTa-base-sized text encoder)."""
    model = inference_bench.build_model(argparse.Namespace(tokenizer=inference_bench.DEFAULT_TOKENIZER))
    return model.to(device)


def model_section(table: Table, model, impls: list[str], device: torch.device, frames: int, size: tuple[int, int],
                  repeat: int) -> dict:
    """Whole-model rows; returns the largest output differences of each implementation to pytorch's."""
    clip = torch.randn(frames, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    target = {"size": torch.tensor(size, device=device)}

    def run(impl: str, dtype: torch.dtype, backward: bool) -> dict:
        set_core_impl(model, impl)
        model.train(backward)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()
        with torch.set_grad_enabled(backward), autocast:
            outputs = model([clip], [CAPTION], [target])
        if backward:
            loss = sum(v.float().sum() for v in outputs.values() if torch.is_tensor(v) and v.requires_grad)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return outputs

    differences = {}
    for dtype, dtype_name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for backward, measure in ((False, "forward"), (True, "forward+backward")):
            steps = {impl: (lambda impl=impl: run(impl, dtype, backward)) for impl in impls}
            seconds = core_bench.median_seconds(steps, device, repeat)
            peaks = {impl: peak_total_mib(steps[impl], device) for impl in impls}
            baseline = {"ms": 1e3 * seconds["pytorch"], "peak_mib": peaks["pytorch"]} if "pytorch" in impls else None
            for impl in impls:
                table.add("model", f"{measure} {dtype_name}", impl, 1e3 * seconds[impl], peaks[impl], baseline)
        if "pytorch" in impls:
            with torch.no_grad():
                reference = {k: v for k, v in run("pytorch", dtype, False).items() if torch.is_tensor(v)}
                for impl in impls:
                    outputs = run(impl, dtype, False)
                    differences[f"{impl} {dtype_name}"] = {
                        key: relative_error(outputs[key], value) for key, value in reference.items()
                    }
    set_core_impl(model, "auto")
    return differences


def train_section(table: Table, device: torch.device, iterations: int) -> None:
    """Training-step rows, from benchmarks/train_step.py's own worker processes."""
    baseline = None
    for amp in (False, True) if device.type == "cuda" else (False,):  # --amp is CUDA-only
        name = "R50 --amp" if amp else "R50 fp32"
        index = next(i for i, (_, backbone, a, ckpt) in enumerate(train_bench.CONFIGS)
                     if backbone == "resnet50" and a == amp and not ckpt)
        command = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", str(device),
                   "--iterations", str(iterations), "--only", str(index)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"train step {name} failed: {last}", file=sys.stderr)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        peak = result["peak_bytes"] / MIB if device.type == "cuda" else None
        row = table.add("train step", name, "auto", 1e3 * result["seconds"], peak, baseline)
        baseline = baseline or row


def inference_section(table: Table, model, impls: list[str], device: torch.device, frames: int,
                      size: tuple[int, int], repeat: int) -> None:
    from models.predictor import VideoPredictor

    predictor = VideoPredictor(model, device=device, expressions_per_batch=NUM_EXPRESSIONS)
    clip = torch.randn(frames, 3, *size, generator=torch.Generator().manual_seed(1))
    captions = list(inference_bench.CAPTIONS[:NUM_EXPRESSIONS])

    def run(impl: str) -> None:
        set_core_impl(model, impl)
        with torch.no_grad():
            inference_bench.run_video(predictor, clip, captions, ORIGINAL_SIZE)

    steps = {impl: (lambda impl=impl: run(impl)) for impl in impls}
    seconds = core_bench.median_seconds(steps, device, repeat)
    peaks = {impl: peak_total_mib(steps[impl], device) for impl in impls}
    baseline = {"ms": 1e3 * seconds["pytorch"], "peak_mib": peaks["pytorch"]} if "pytorch" in impls else None
    measure = f"1 video, {frames} frames, {NUM_EXPRESSIONS} expressions"
    for impl in impls:
        table.add("inference", measure, impl, 1e3 * seconds[impl], peaks[impl], baseline)
    set_core_impl(model, "auto")


def tune_section(table: Table, device: torch.device, repeat: int, geometry: core_bench.Geometry) -> dict:
    """Tune rows; returns the time of every candidate, its differences to the reference and the fastest."""
    from models import ms_deform_attn_triton as kernel

    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    gpu = kernel.generation(capability)
    # float32, and what --amp gives the kernel: bfloat16, or float16 where the GPU has no bfloat16.
    low = ("fp16", torch.float16) if capability is not None and capability < (8, 0) else ("bf16", torch.bfloat16)
    results: dict = {"generation": gpu, "candidates": {}, "wrong": [], "best": {}}
    totals: dict = {}  # LAUNCH_CONFIGS key -> {config: [ms per dtype]}
    for scenario in ("encoder", "decoder"):
        value, shapes, locations, weights, grad = core_bench.make_inputs(scenario, device, geometry=geometry)
        shape_list = shapes.tolist()
        queries = "few" if locations.shape[1] <= kernel.FEW_QUERIES else "many"
        for dtype_name, dtype in (("fp32", torch.float32), low):
            low_value, low_grad = value.to(dtype), grad.to(dtype)
            expected = run_core_with_grads("reference", low_value.float(), shape_list, locations, weights,
                                           low_grad.float())
            leaves = [t.clone().requires_grad_() for t in (low_value, locations, weights)]
            output = ms_deform_attn_core(leaves[0], shape_list, leaves[1], leaves[2], impl="triton")
            for pass_name in ("forward", "backward"):
                key = (gpu, pass_name, queries)
                in_use = kernel.LAUNCH_CONFIGS[key]

                def name(config: kernel.LaunchConfig, pass_name: str = pass_name) -> str:
                    return f"{scenario} {dtype_name} {pass_name} {config_label(config)}"

                def step(config: kernel.LaunchConfig, pass_name: str = pass_name, key: tuple = key) -> None:
                    with launch_config_set(key, config):
                        if pass_name == "forward":
                            with torch.no_grad():
                                ms_deform_attn_core(low_value, shape_list, locations, weights, impl="triton")
                        else:
                            torch.autograd.grad(output, leaves, low_grad, retain_graph=True)

                correct = []
                for config in dict.fromkeys([*kernel.CANDIDATE_CONFIGS, in_use]):
                    try:
                        with launch_config_set(key, config):
                            actual = run_core_with_grads("triton", low_value, shape_list, locations, weights, low_grad)
                    except Exception as error:  # e.g. more shared memory or registers than the GPU has
                        results["wrong"].append(f"{name(config)}: {type(error).__name__}: {error}")
                        continue
                    worst = max(relative_error(a, e) for a, e in zip(actual, expected))
                    results["candidates"][name(config)] = {"max_rel_diff": worst}
                    if worst > TUNE_TOLERANCE[dtype_name]:
                        results["wrong"].append(
                            f"{name(config)}: max|diff| / max|reference| {worst:.1e} > {TUNE_TOLERANCE[dtype_name]:.0e}"
                        )
                    else:
                        correct.append(config)
                # The configuration in use is timed even if wrong (it is the baseline), but not chosen.
                ran = name(in_use) in results["candidates"]
                timed = [*correct, in_use] if ran and in_use not in correct else correct
                seconds = core_bench.median_seconds(
                    {config: (lambda config=config: step(config)) for config in timed}, device, repeat
                )
                baseline = {"ms": 1e3 * seconds[in_use], "peak_mib": None} if in_use in seconds else None
                for config in timed:
                    ms = 1e3 * seconds[config]
                    label = config_label(config) + (" (in use)" if config == in_use else "")
                    table.add(f"tune {scenario} {dtype_name}", pass_name, label, ms, None, baseline)
                    results["candidates"].setdefault(name(config), {})["ms"] = ms
                    if config in correct:
                        totals.setdefault(key, {}).setdefault(config, []).append(ms)
    for key, times in totals.items():
        # Candidates wrong in one dtype have fewer times: only those timed in both compete.
        complete = {config: sum(ms) for config, ms in times.items() if len(ms) == max(map(len, times.values()))}
        fastest = min(complete, key=complete.get)
        results["best"][" ".join(key)] = {"block_q": fastest.block_q, "num_warps": fastest.num_warps}
    return results


@contextlib.contextmanager
def launch_config_set(key: tuple[str, str, str], config) -> Iterator[None]:
    """The Triton kernel's ``LAUNCH_CONFIGS[key]`` is ``config`` inside the block, as before after it."""
    from models.ms_deform_attn_triton import LAUNCH_CONFIGS

    in_use = LAUNCH_CONFIGS[key]
    LAUNCH_CONFIGS[key] = config
    try:
        yield
    finally:
        LAUNCH_CONFIGS[key] = in_use


def config_label(config) -> str:
    return f"BLOCK_Q {config.block_q}, {config.num_warps} warps"


def run_core_with_grads(impl: str, value, shape_list, locations, weights, grad) -> list[torch.Tensor]:
    """Output and the gradients of value, locations and weights of the core ``impl``."""
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    output = ms_deform_attn_core(leaves[0], shape_list, leaves[1], leaves[2], impl=impl)
    output.backward(grad)
    return [output.detach()] + [leaf.grad for leaf in leaves]


def print_best_configs(best: dict) -> None:
    """The fastest configurations (``tune_section``'s ``best``) as the module's ``LAUNCH_CONFIGS`` table."""
    from models.ms_deform_attn_triton import LAUNCH_CONFIGS, LaunchConfig

    print("fastest launch configurations on this GPU (least time summed over the two dtypes), as entries of "
          "LAUNCH_CONFIGS in models/ms_deform_attn_triton.py:")
    for key, in_use in LAUNCH_CONFIGS.items():
        if " ".join(key) not in best:  # another GPU generation, or shapes with no launch of that kind
            continue
        config = LaunchConfig(**best[" ".join(key)])
        note = "in use" if config == in_use else f"in use: {config_label(in_use)}"
        print(f"    {key!r}: LaunchConfig(block_q={config.block_q}, num_warps={config.num_warps}),  # {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda[:i] (cpu: the same without Triton, for checking the script)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS),
                        help=f"default: {' '.join(DEFAULT_SECTIONS)}")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each core measurement")
    parser.add_argument("--model_repeat", type=int, default=5,
                        help="timed runs of each model and inference measurement")
    parser.add_argument("--train_iterations", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--model_frames", type=int, default=5, help="frames of the model and inference clip")
    parser.add_argument("--model_size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"),
                        help="frame size of the model and inference clip")
    parser.add_argument("--core_frames", type=int, default=5, help="frames of the core and tune sections' inputs")
    parser.add_argument("--core_size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"),
                        help="image size of the core and tune sections' inputs (levels at strides 8 to 64)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: no CUDA device is available (torch.cuda.is_available() is False). It times the "
                 "GPU implementations; on the CPU run benchmarks/msdeform_attn.py for the core.")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    start = time.perf_counter()
    env = environment(device)
    print("GPU benchmark: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    impls = core_bench.runnable_impls(device)
    geometry = core_bench.Geometry(frames=args.core_frames, image_size=tuple(args.core_size))
    table = Table()
    results: dict = {"environment": env, "impls": impls}

    if "core" in args.sections:
        results["core_triton_vs_reference"] = core_section(table, impls, device, args.repeat, geometry)
    size = tuple(args.model_size)
    if "model" in args.sections or "inference" in args.sections:
        model = build_model(device)
        if "model" in args.sections:
            results["model_output_vs_pytorch"] = model_section(
                table, model, impls, device, args.model_frames, size, args.model_repeat
            )
        if "inference" in args.sections:
            inference_section(table, model, impls, device, args.model_frames, size, args.model_repeat)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()  # for the training-step processes
    if "train" in args.sections:
        train_section(table, device, args.train_iterations)
    if "tune" in args.sections:
        if "triton" in impls:
            results["tune"] = tune_section(table, device, args.repeat, geometry)
        else:
            print("tune: not run, the Triton kernel cannot run here (see above)")

    print()
    table.print()
    print("ratios: core, model and inference rows to the pytorch row of the same measure; train step to fp32; tune "
          "rows to the configuration in use. Core peak: above the inputs; other peaks: all allocated memory.")
    for dtype_name, diffs in results.get("core_triton_vs_reference", {}).items():
        print(f"Triton core vs reference, encoder shapes, {dtype_name}, max|diff| / max|reference|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    for impl, diffs in results.get("model_output_vs_pytorch", {}).items():
        print(f"model outputs, {impl} vs pytorch core, max|diff| / max|pytorch|: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    if "tune" in results:
        for wrong in results["tune"]["wrong"]:
            print(f"tune: not chosen: {wrong}")
        print_best_configs(results["tune"]["best"])
    results["rows"] = table.rows
    results["seconds"] = time.perf_counter() - start
    print(f"total {results['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
