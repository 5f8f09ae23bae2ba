"""The rule that picks a deformable-attention core, its errors, and the Triton core's tests.

The Triton kernel itself is tested by Triton's interpreter on the CPU, in a child process
(``triton_interpreter_cases.py``, see there why); the rest runs without any kernel.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import ms_deform_attn
from models.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn_core,
    ms_deform_attn_core_pytorch,
    ms_deform_attn_core_sparse,
    select_core_impl,
    set_core_impl,
)
from tests.models.test_ms_deform_attn import random_core_inputs

ROOT = Path(__file__).resolve().parents[2]
INTERPRETER_CASES = Path(__file__).with_name("triton_interpreter_cases.py")


def test_triton_kernels_under_the_interpreter() -> None:
    """Every case of triton_interpreter_cases.py passes (none skipped) under TRITON_INTERPRET=1."""
    pytest.importorskip("triton", reason="Triton is not installed: its kernels cannot run, not even interpreted")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETER_CASES)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0 and re.fullmatch(r"\d+ passed(, \d+ warnings?)? in [\d.]+s( \(.*\))?", summary), (
        done.stdout[-6000:] + done.stderr[-3000:]
    )


# GPUs the launch configurations are compiled for in the tests: T4 (sm_75), A100, RTX 30 (sm_86), H100/H200.
ARCHS = (75, 80, 86, 90)


@pytest.mark.parametrize("queries", ["many", "few"])
@pytest.mark.parametrize("pass_name", ["forward", "backward"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda arch: f"sm{arch}")
def test_triton_kernel_compiles_without_spilling(arch: int, pass_name: str, queries: str) -> None:
    """The interpreter does not compile: compile the kernel as a launch at the model's shapes would
    (Triton IR to PTX to cubin, no GPU needed) with the launch configuration in use on each GPU, in
    float32 and in the dtype --amp gives it there, and read the cubin's resources: no register
    spilled (no stack frame)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from models.ms_deform_attn_triton import launch_config
    from tools.triton_registers import QUERIES, compile_launch, resources

    config = launch_config(pass_name == "backward", QUERIES[queries], divmod(arch, 10))
    for value_dtype in (torch.float32, torch.bfloat16 if arch >= 80 else torch.float16):
        compiled = compile_launch(config, pass_name == "backward", value_dtype, queries, arch)
        ptx = compiled.asm["ptx"]
        assert f".target sm_{arch}" in ptx
        assert ("atom.global" in ptx) == (pass_name == "backward")  # only the backward scatters, with atomic adds
        # sm_90 adds four float32 values with one atomic instruction; older GPUs take four.
        assert ("atom.global.gpu.relaxed.add.v4.f32" in ptx) == (pass_name == "backward" and arch >= 90)
        usage = resources(compiled)
        assert usage.stack_bytes == 0 and 0 < usage.registers <= 255, (value_dtype, usage)


def test_launch_configuration_by_gpu_pass_and_queries() -> None:
    """Each GPU generation, pass and number of queries (the decoder's few, the encoder's many) has
    its configuration; the grid covers every query of every sample and head in blocks of its size."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from models.ms_deform_attn_triton import FEW_QUERIES, GENERATIONS, LAUNCH_CONFIGS, launch_arguments, launch_config

    assert sorted(LAUNCH_CONFIGS) == sorted(
        (gpu, pass_name, queries) for gpu in GENERATIONS for pass_name in ("forward", "backward")
        for queries in ("many", "few")
    )  # fmt: skip
    for capability, gpu in (((7, 0), "sm70-89"), ((8, 9), "sm70-89"), ((9, 0), "sm90+"), ((12, 0), "sm90+")):
        assert launch_config(True, 4820, capability) == LAUNCH_CONFIGS[(gpu, "backward", "many")]
        assert launch_config(False, 5, capability) == LAUNCH_CONFIGS[(gpu, "forward", "few")]

    # Tensors on the CPU (Triton's interpreter): the newest generation's configurations.
    n, m, d, levels, points = 2, 3, 8, [(5, 6), (2, 3)], 2
    s = sum(h * w for h, w in levels)
    shapes, starts = torch.tensor(levels, dtype=torch.int32), torch.tensor([0, 30], dtype=torch.int32)
    for lq, queries in ((1, "few"), (FEW_QUERIES, "few"), (FEW_QUERIES + 1, "many"), (500, "many")):
        value, output = torch.zeros(n, s, m, d), torch.zeros(n, lq, m * d)
        locations, weights = torch.zeros(n, lq, m, len(levels), points, 2), torch.zeros(n, lq, m, len(levels), points)
        grads = (torch.zeros(value.shape), torch.zeros(locations.shape), torch.zeros(weights.shape))
        for pass_name, pass_grads in (("forward", None), ("backward", grads)):
            config = LAUNCH_CONFIGS[("sm90+", pass_name, queries)]
            grid, args, kwargs = launch_arguments(value, shapes, starts, locations, weights, output, pass_grads)
            assert (kwargs["BLOCK_Q"], kwargs["num_warps"]) == (config.block_q, config.num_warps)
            assert grid == (-(-lq // config.block_q) * m * n,)
            assert kwargs["BACKWARD"] == (pass_grads is not None) and args[10] == lq


# The selection rule. The Triton kernel is not needed for these: availability and the GPU are
# monkeypatched, and no kernel runs.
CUDA = torch.device("cuda")
CPU = torch.device("cpu")
FLOAT32 = (torch.float32,) * 3


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Triton importable and an H100-class GPU (compute capability 9.0); returns a setter for both."""

    def configure(import_error: str | None = None, capability: tuple[int, int] = (9, 0)) -> None:
        monkeypatch.setattr(ms_deform_attn, "_triton_import_error", lambda: import_error)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    configure()
    ms_deform_attn._log_fallback.cache_clear()
    yield configure
    ms_deform_attn._log_fallback.cache_clear()


def test_auto_picks_triton_on_cuda(fake_gpu) -> None:
    for dtypes in (FLOAT32, (torch.bfloat16, torch.float32, torch.float32), (torch.float16,) * 3, (torch.float64,) * 3):
        assert select_core_impl("auto", CUDA, dtypes) == "triton"
    assert select_core_impl("triton", CUDA, FLOAT32) == "triton"


def test_auto_picks_pytorch_on_cpu(fake_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_core_impl("auto", CPU, FLOAT32) == "pytorch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter makes Triton runnable, not chosen
    assert select_core_impl("auto", CPU, FLOAT32) == "pytorch"
    assert select_core_impl("auto", torch.device("meta"), FLOAT32) == "pytorch"


def test_auto_on_cpu_trains_few_channels_per_head_with_grid_sample(fake_gpu, monkeypatch: pytest.MonkeyPatch) -> None:
    few, many = ms_deform_attn.CPU_REFERENCE_MAX_CHANNELS, 2 * ms_deform_attn.CPU_REFERENCE_MAX_CHANNELS
    assert select_core_impl("auto", CPU, FLOAT32, channels_per_head=few, backward=True) == "reference"
    assert select_core_impl("auto", CPU, FLOAT32, channels_per_head=few, backward=False) == "pytorch"
    assert select_core_impl("auto", CPU, FLOAT32, channels_per_head=many, backward=True) == "pytorch"
    assert select_core_impl("auto", CUDA, FLOAT32, channels_per_head=few, backward=True) == "triton"
    assert select_core_impl("pytorch", CPU, FLOAT32, channels_per_head=few, backward=True) == "pytorch"

    # ms_deform_attn_core asks with the value's channels and whether autograd records the call.
    ran = []
    for name in ("ms_deform_attn_core_sparse", "ms_deform_attn_core_pytorch"):
        monkeypatch.setattr(ms_deform_attn, name, lambda *args, _name=name: ran.append(_name))
    shapes = [(2, 3)]

    def call(channels: int, requires_grad: bool) -> str:
        value = torch.zeros(1, 6, 2, channels, requires_grad=requires_grad)
        ms_deform_attn_core(value, shapes, torch.zeros(1, 4, 2, 1, 1, 2), torch.zeros(1, 4, 2, 1, 1))
        return ran.pop()

    assert call(few, requires_grad=True) == "ms_deform_attn_core_pytorch"
    assert call(few, requires_grad=False) == "ms_deform_attn_core_sparse"
    assert call(many, requires_grad=True) == "ms_deform_attn_core_sparse"
    with torch.no_grad():
        assert call(few, requires_grad=True) == "ms_deform_attn_core_sparse"


@pytest.mark.parametrize(
    ("import_error", "capability", "dtypes", "reason"),
    [
        ("ModuleNotFoundError: No module named 'triton'", (9, 0), FLOAT32, "Triton cannot be imported"),
        (None, (6, 1), FLOAT32, r"compute capability \(6, 1\) is below \(7, 0\)"),
        (None, (7, 5), (torch.bfloat16, torch.float32, torch.float32), r"bfloat16 inputs need .* \(8, 0\)"),
        (None, (9, 0), (torch.float32, torch.float8_e4m3fn, torch.float32), "dtype torch.float8_e4m3fn"),
    ],
    ids=["no-triton", "old-gpu", "bf16-on-turing", "fp8"],
)
def test_auto_falls_back_to_grid_sample_on_cuda_with_one_log_line(
    fake_gpu, caplog: pytest.LogCaptureFixture, import_error, capability, dtypes, reason
) -> None:
    fake_gpu(import_error, capability)
    with caplog.at_level(logging.WARNING, logger="models.ms_deform_attn"):
        for _ in range(3):
            assert select_core_impl("auto", CUDA, dtypes) == "reference"
    assert len(caplog.records) == 1, caplog.text
    assert "grid_sample" in caplog.text
    with pytest.raises(RuntimeError, match=f"impl 'triton' cannot run: .*{reason}"):
        select_core_impl("triton", CUDA, dtypes)


def test_auto_falls_back_when_the_kernel_fails_to_build(
    fake_gpu, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU where Triton imports but its kernel cannot be built or launched (here: no C compiler for
    Triton's launcher): auto says why once and computes with grid_sample for the rest of the
    process; an explicit triton, a bad input and running out of memory raise."""
    triton_module = pytest.importorskip("models.ms_deform_attn_triton", reason="Triton is not installed")
    monkeypatch.setattr(ms_deform_attn, "_triton_failure", [])
    real_select = ms_deform_attn.select_core_impl
    # The tensors are on the CPU; the rule picks as for them on the (faked) GPU.
    monkeypatch.setattr(ms_deform_attn, "select_core_impl", lambda impl, device, *a, **k: real_select(impl, CUDA, *a, **k))
    no_compiler = RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    raised, attempts = [no_compiler], []

    def unbuildable(*args, **kwargs):
        attempts.append(kwargs)
        raise raised[0]

    monkeypatch.setattr(triton_module, "ms_deform_attn_core_triton", unbuildable)
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 1, 5, 2, 2, 1, seed=0, dtype=torch.float32)
    expected = ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights)

    with pytest.raises(RuntimeError, match="C compiler"):  # asked for explicitly: the error itself
        ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="triton")
    for error in (torch.OutOfMemoryError("CUDA out of memory"), ValueError("value: expected ...")):
        raised[0] = error
        with pytest.raises(type(error)):
            ms_deform_attn_core(value, spatial_shapes, locations, weights)
    assert ms_deform_attn._triton_failure == []

    raised[0] = no_compiler
    with caplog.at_level(logging.WARNING, logger="models.ms_deform_attn"):
        for _ in range(3):
            assert torch.equal(ms_deform_attn_core(value, spatial_shapes, locations, weights), expected)
    assert len(attempts) == 4 and attempts[-1]["fallback"] is ms_deform_attn_core_pytorch  # tried once under auto
    assert len(caplog.records) == 1, caplog.text
    assert re.search("failed to build or launch in this process .*RuntimeError: Failed to find C compiler", caplog.text)
    with pytest.raises(RuntimeError, match="impl 'triton' cannot run: .*failed to build or launch"):
        ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="triton")


def test_explicit_choices_run_as_asked(fake_gpu) -> None:
    fake_gpu("ModuleNotFoundError: No module named 'triton'")
    for device in (CPU, CUDA):
        assert select_core_impl("pytorch", device, FLOAT32) == "pytorch"
        assert select_core_impl("reference", device, FLOAT32) == "reference"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton", reason="without Triton the error names the import failure (tested above)")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 1, 4, 1, 2, 1, seed=0, dtype=torch.float32)
    message = "tensors are on cpu: the Triton kernel runs on CUDA GPUs.*TRITON_INTERPRET=1"
    with pytest.raises(RuntimeError, match=message):
        ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="triton")


def test_unknown_impl_is_rejected() -> None:
    value, spatial_shapes, locations, weights = random_core_inputs([(3, 4)], 1, 4, 1, 2, 1, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="must be one of .*'reference'.*got 'cuda'"):
        ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        set_core_impl(MSDeformAttn(16, 2, 2, 2), "fast")


def test_dispatch_runs_the_named_core_on_cpu() -> None:
    """auto on the CPU is the embedding_bag core, bit for bit; reference is grid_sample's."""
    value, spatial_shapes, locations, weights = random_core_inputs(
        [(5, 6), (2, 3)], 2, 7, 2, 4, 2, seed=1, dtype=torch.float32
    )
    sparse = ms_deform_attn_core_sparse(value, spatial_shapes, locations, weights)
    grid_sample = ms_deform_attn_core_pytorch(value, spatial_shapes, locations, weights)
    assert not torch.equal(sparse, grid_sample)  # the two differ in rounding, so the checks below tell them apart
    assert torch.equal(ms_deform_attn_core(value, spatial_shapes, locations, weights), sparse)
    assert torch.equal(ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="pytorch"), sparse)
    assert torch.equal(ms_deform_attn_core(value, spatial_shapes, locations, weights, impl="reference"), grid_sample)


def test_msda_impl_option_reaches_every_module() -> None:
    from tests.models.test_referformer import build_tiny_model

    model, _ = build_tiny_model(msda_impl="reference")
    impls = [module.core_impl for module in model.modules() if isinstance(module, MSDeformAttn)]
    assert impls == ["reference"] * 4  # 2 encoder layers + 2 decoder layers
    model, _ = build_tiny_model()
    assert {module.core_impl for module in model.modules() if isinstance(module, MSDeformAttn)} == {"auto"}
