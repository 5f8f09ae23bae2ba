"""The launchers in ``scripts/`` and the original ReferFormer's documented commands.

Every command of the original's docs is run as typed there (placeholders filled in), with Python,
the launchers and ``nvidia-smi`` replaced by stubs on ``PATH`` that record their arguments; every
recorded ``main.py`` / inference call must parse with the entry point's parser and pass
``validate_args`` (a misspelt or dropped flag fails here, not after hours of queueing). The real
``torch.distributed.launch`` is run too, with and without ``--use_env``.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import inference_davis
import inference_mevis
import inference_ytvos
from opts import get_args_parser, validate_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
# The parser of each entry point; the inference scripts add their own defaults to opts'.
PARSERS = {"main.py": get_args_parser, "inference_ytvos.py": inference_ytvos.get_parser,
           "inference_davis.py": inference_davis.get_parser, "inference_mevis.py": inference_mevis.get_parser}
# Scripts whose second argument is the weights they start from (the others take OUTPUT_DIR only,
# except dist_train_test_ytvos.sh, where the weights are optional).
WEIGHTS_REQUIRED = {"dist_train_a2d.sh", "dist_train_davis.sh", "dist_test_davis.sh", "dist_test_jhmdb.sh",
                    "dist_test_refcoco.sh", "dist_test_mevis.sh"}
WEIGHTS_OPTIONAL = {"dist_train_test_ytvos.sh", "dist_train_mevis.sh"}
NO_WEIGHTS = {"dist_train_test_ytvos_scratch.sh", "dist_joint_train_ytvos.sh", "dist_pretrain.sh"}
# Environment variables the scripts read; cleared so that the caller's do not leak into the tests.
SCRIPT_ENVIRONMENT = ("GPUS", "GPUS_PER_NODE", "PORT", "CPUS_PER_TASK", "ACCUM_ITER", "OMP_NUM_THREADS")

# Python stub: answers the GPU count query (python3 -c ...) with $STUB_CUDA_DEVICES (fails if unset,
# like a Python without torch) and records every other call with OMP_NUM_THREADS.
PYTHON_STUB = """\
#!{python}
import json, os, sys
if sys.argv[1:2] == ["-c"]:
    if "STUB_CUDA_DEVICES" not in os.environ:
        sys.exit(1)
    print(os.environ["STUB_CUDA_DEVICES"])
    sys.exit(0)
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps({{"program": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
"""
# nvidia-smi stub: $STUB_NVIDIA_GPUS lines "GPU i: ...", or fails like a machine without the driver.
NVIDIA_SMI_STUB = """\
#!/usr/bin/env bash
[[ -n ${STUB_NVIDIA_GPUS:-} ]] || exit 9
for ((i = 0; i < STUB_NVIDIA_GPUS; i++)); do echo "GPU $i: Stub GPU (UUID: GPU-$i)"; done
"""


class Workspace:
    """A folder laid out like the repository root for the commands (``scripts/`` is a link to the
    real one, weights files are empty), with the stubs first on ``PATH``."""

    def __init__(self, tmp_path: Path):
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        (self.cwd / "scripts").symlink_to(ROOT / "scripts")
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        for program in ("python", "python3", "torchrun"):
            (stubs / program).write_text(PYTHON_STUB.format(python=sys.executable))
        (stubs / "nvidia-smi").write_text(NVIDIA_SMI_STUB)
        for stub in stubs.iterdir():
            stub.chmod(0o755)
        self.log = tmp_path / "calls.jsonl"
        self.env = {key: value for key, value in os.environ.items() if key not in SCRIPT_ENVIRONMENT}
        self.env.update(PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", STUB_LOG=str(self.log),
                        STUB_CUDA_DEVICES="8")

    def file(self, relative: str) -> Path:
        """Create an empty file (a weights file) under the workspace; returns its absolute path."""
        path = self.cwd / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def run(self, command: str, *, cwd: Path | None = None, **env: str) -> tuple[subprocess.CompletedProcess, list]:
        """Run ``command`` with bash; returns the process and the recorded calls."""
        self.log.unlink(missing_ok=True)
        process = subprocess.run(["bash", "-c", command], cwd=cwd or self.cwd, env={**self.env, **env},
                                 capture_output=True, text=True, timeout=60)
        calls = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return process, calls


@pytest.fixture()
def workspace(tmp_path):
    return Workspace(tmp_path)


def entry_point_call(call: dict) -> tuple[str, list[str], list[str]]:
    """``(entry point, its arguments, the launcher's arguments before it)`` of a recorded call."""
    for position, word in enumerate(call["argv"]):
        if Path(word).name in PARSERS:
            return Path(word).name, call["argv"][position + 1:], call["argv"][:position]
    raise AssertionError(f"no entry point in {call}")


def parsed_calls(process: subprocess.CompletedProcess, calls: list) -> list[tuple[str, object, list[str]]]:
    """``(entry point, parsed and validated args, launcher arguments)`` of every call; the command succeeded."""
    assert process.returncode == 0, process.stdout + process.stderr
    assert calls, "the command called nothing"
    parsed = []
    for call in calls:
        entry, arguments, launcher = entry_point_call(call)
        args = PARSERS[entry]().parse_args(arguments)
        validate_args(args)
        parsed.append((entry, args, launcher))
    return parsed


def option(launcher: list[str], name: str) -> str:
    """The value of ``--name V`` or ``--name=V`` in a launcher's arguments."""
    for position, word in enumerate(launcher):
        if word == name:
            return launcher[position + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {launcher}")


# ----------------------------------------------------------------------------- the original's commands
def test_ytvos_inference_commands(workspace):
    workspace.file("ytvos_swin_tiny.pth")
    for command, output_dir, weights, backbone in (
        ("python3 inference_ytvos.py --with_box_refine --binary --freeze_text_encoder --output_dir=out/dir "
         "--resume=weights/model.pth --backbone resnet50", "out/dir", "weights/model.pth", "resnet50"),
        ("python3 inference_ytvos.py --with_box_refine --binary --freeze_text_encoder "
         "--output_dir=ytvos_dirs/swin_tiny --resume=ytvos_swin_tiny.pth --backbone swin_t_p4w7",
         "ytvos_dirs/swin_tiny", "ytvos_swin_tiny.pth", "swin_t_p4w7"),
    ):
        ((entry, args, _),) = parsed_calls(*workspace.run(command))
        assert entry == "inference_ytvos.py"
        assert (args.output_dir, args.resume, args.backbone) == (output_dir, weights, backbone)
        assert args.with_box_refine and args.binary and args.freeze_text_encoder


@pytest.mark.parametrize("example", [False, True], ids=["placeholders", "example"])
def test_ytvos_fine_tuning_script(workspace, example):
    if example:
        weights = workspace.file("pretrained_weights/video_swin_tiny_pretrained.pth")
        command = ("./scripts/dist_train_test_ytvos.sh ytvos_dirs/video_swin_tiny "
                   "pretrained_weights/video_swin_tiny_pretrained.pth --backbone video_swin_t_p4w7")
        output_dir, backbone = workspace.cwd / "ytvos_dirs/video_swin_tiny", "video_swin_t_p4w7"
    else:
        weights = workspace.file("weights/r50_pretrained.pth")
        command = "./scripts/dist_train_test_ytvos.sh /abs/output/dir weights/r50_pretrained.pth --backbone resnet50"
        output_dir, backbone = Path("/abs/output/dir"), "resnet50"
    (train, train_args, launcher), (predict, predict_args, _) = parsed_calls(*workspace.run(command))
    assert (train, predict) == ("main.py", "inference_ytvos.py")
    assert launcher[:2] == ["-m", "torch.distributed.run"]
    assert (train_args.dataset_file, train_args.epochs, train_args.lr_drop) == ("ytvos", 6, [3, 5])
    assert train_args.with_box_refine and train_args.binary and train_args.freeze_text_encoder
    assert train_args.pretrained_weights == str(weights) and train_args.backbone == backbone
    assert train_args.output_dir == str(output_dir) and train_args.resume == "auto"
    assert predict_args.output_dir == str(output_dir) and predict_args.resume == str(output_dir / "checkpoint.pth")
    assert predict_args.backbone == backbone and predict_args.binary and predict_args.with_box_refine


def test_ytvos_scratch_script_and_the_docs_call_without_weights(workspace):
    """The scratch command of the original's docs, and the one that calls the fine-tuning script
    without weights (sic in the original's docs): both run the from-scratch recipe."""
    scratch = ("./scripts/dist_train_test_ytvos_scratch.sh out/scratch --backbone swin_t_p4w7 "
               "--backbone_pretrained backbone/swin_tiny.pth --use_checkpoint")
    sic = ("./scripts/dist_train_test_ytvos.sh ytvos_dirs/video_swin_tiny_scratch --backbone video_swin_t_p4w7 "
           "--backbone_pretrained video_swin_pretrained/swin_tiny_patch244_window877_kinetics400_1k.pth")
    for command, output_dir, backbone_pretrained in (
        (scratch, "out/scratch", "backbone/swin_tiny.pth"),
        (sic, "ytvos_dirs/video_swin_tiny_scratch",
         "video_swin_pretrained/swin_tiny_patch244_window877_kinetics400_1k.pth"),
    ):
        process, calls = workspace.run(command)
        (train, train_args, _), (predict, predict_args, _) = parsed_calls(process, calls)
        assert (train, predict) == ("main.py", "inference_ytvos.py")
        assert (train_args.epochs, train_args.lr_drop, train_args.pretrained_weights) == (10, [6, 8], None)
        assert train_args.backbone_pretrained == backbone_pretrained and train_args.resume == "auto"
        assert train_args.output_dir == str(workspace.cwd / output_dir)
        assert predict_args.resume == str(workspace.cwd / output_dir / "checkpoint.pth")
    assert "no WEIGHTS given: running the from-scratch recipe" in process.stderr


@pytest.mark.parametrize("example", [False, True], ids=["placeholders", "example"])
def test_davis_test_script(workspace, example):
    weights = workspace.file("ytvos_swin_large.pth" if example else "models/ytvos_r50.pth")
    command = ("./scripts/dist_test_davis.sh davis_dirs/swin_large ytvos_swin_large.pth --backbone swin_l_p4w7"
               if example else "./scripts/dist_test_davis.sh out/davis models/ytvos_r50.pth --backbone resnet50")
    ((entry, args, _),) = parsed_calls(*workspace.run(command))
    assert entry == "inference_davis.py" and args.dataset_file == "davis"
    assert args.resume == str(weights) and args.backbone == ("swin_l_p4w7" if example else "resnet50")
    assert args.output_dir == str(workspace.cwd / ("davis_dirs/swin_large" if example else "out/davis"))
    assert args.binary and args.with_box_refine and args.freeze_text_encoder


@pytest.mark.parametrize("dataset", ["a2d", "jhmdb"])
def test_a2d_and_jhmdb_evaluation_commands(workspace, dataset):
    command = (f"python3 -m torch.distributed.launch --nproc_per_node=8 --use_env main.py --dataset_file {dataset} "
               "--with_box_refine --freeze_text_encoder --batch_size 2 --resume weights/a2d.pth "
               "--backbone video_swin_b_p4w7  --eval")
    ((entry, args, launcher),) = parsed_calls(*workspace.run(command))
    assert entry == "main.py" and launcher[:2] == ["-m", "torch.distributed.launch"]
    assert (args.dataset_file, args.batch_size, args.resume, args.backbone) == \
        (dataset, 2, "weights/a2d.pth", "video_swin_b_p4w7")
    assert args.eval and args.with_box_refine and args.freeze_text_encoder


def test_a2d_training_commands(workspace):
    weights = workspace.file("pretrained_weights/r50_pretrained.pth")
    ((entry, args, _),) = parsed_calls(*workspace.run(
        "./scripts/dist_train_a2d.sh out/a2d pretrained_weights/r50_pretrained.pth --backbone resnet101"))
    assert entry == "main.py"
    assert (args.dataset_file, args.batch_size, args.epochs, args.lr_drop) == ("a2d", 2, 6, [3, 5])
    assert args.pretrained_weights == str(weights) and args.backbone == "resnet101" and not args.binary
    assert args.output_dir == str(workspace.cwd / "out/a2d") and args.resume == "auto"

    # from scratch: the original's docs give a main.py command
    ((entry, args, _),) = parsed_calls(*workspace.run(
        "python3 -m torch.distributed.launch --nproc_per_node=8 --use_env main.py --dataset_file a2d "
        "--with_box_refine --freeze_text_encoder --epochs 12 --lr_drop 8 10 --dropout 0 --weight_decay 1e-4 "
        "--output_dir=out/a2d_scratch --backbone video_swin_t_p4w7 --backbone_pretrained kinetics/swin_t.pth "
        "--num_frames 6"))
    assert (args.epochs, args.lr_drop, args.dropout, args.weight_decay) == (12, [8, 10], 0.0, 1e-4)
    assert (args.backbone_pretrained, args.num_frames, args.output_dir) == \
        ("kinetics/swin_t.pth", 6, "out/a2d_scratch")


# ----------------------------------------------------------------------------- every script
def generic_command(script: Path, workspace: Workspace) -> str:
    """``scripts/<name> out/<name> [weights.pth] --backbone resnet101``."""
    weights = ""
    if script.name in WEIGHTS_REQUIRED | WEIGHTS_OPTIONAL:
        weights = shlex.quote(str(workspace.file("weights.pth").relative_to(workspace.cwd)))
    return f"./scripts/{script.name} out/{script.stem} {weights} --backbone resnet101"


def test_every_script_is_classified():
    assert {s.name for s in SCRIPTS} == WEIGHTS_REQUIRED | WEIGHTS_OPTIONAL | NO_WEIGHTS


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_script_call_parses_and_validates(workspace, script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    for entry, args, launcher in parsed_calls(*workspace.run(generic_command(script, workspace))):
        assert args.backbone == "resnet101" and args.output_dir == str(workspace.cwd / "out" / script.stem)
        if entry == "main.py":
            assert launcher == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--master_port", "29500"]
            if not args.eval:
                assert args.resume == "auto"  # a rerun continues


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_usage_is_the_comment_block_and_names_the_weights(workspace, script):
    process, calls = workspace.run(f"./scripts/{script.name}")
    assert process.returncode == 1 and not calls
    lines = script.read_text().splitlines()[1:]
    comments = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert process.stderr.splitlines() == [line[2:] if line.startswith("# ") else line[1:] for line in comments]
    assert "set -euo" not in process.stderr
    assert "\nWeights: " in process.stderr
    assert f"scripts/{script.name} OUTPUT_DIR" in process.stderr


def test_pretraining_script_passes_the_intended_options(workspace):
    ((_, args, _),) = parsed_calls(*workspace.run("./scripts/dist_pretrain.sh out/pretrain"))
    assert (args.dataset_file, args.binary, args.batch_size, args.num_frames, args.epochs, args.lr_drop) == \
        ("all", True, 2, 1, 12, [8, 10])
    assert not args.freeze_text_encoder


# ----------------------------------------------------------------------------- GPUs and accumulation
def accumulation(workspace: Workspace, script: str = "dist_train_test_ytvos.sh", **env: str) -> tuple[str, int, str]:
    """``(--nproc_per_node, --accum_iter, inference --ngpu)`` of a training script run."""
    workspace.file("w.pth")
    process, calls = workspace.run(f"./scripts/{script} out w.pth", **env)
    (_, train_args, launcher), (_, predict_args, _) = parsed_calls(process, calls)
    return option(launcher, "--nproc_per_node"), train_args.accum_iter, predict_args.ngpu


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STUB_CUDA_DEVICES": "2"}, ("2", 4, 2)),  # default GPUS: torch's device count
        ({"STUB_CUDA_DEVICES": "1"}, ("1", 8, 1)),
        ({"STUB_CUDA_DEVICES": "0"}, ("1", 8, 1)),  # no GPU: one process
        ({"STUB_NVIDIA_GPUS": "4"}, ("4", 2, 4)),  # no torch in python3: nvidia-smi -L
        ({}, ("1", 8, 1)),  # neither: one process
        ({"GPUS": "2"}, ("2", 4, 2)),  # the original's variable
        ({"GPUS": "8"}, ("8", 1, 8)),
        ({"GPUS": "16"}, ("8", 1, 8)),  # GPUS_PER_NODE defaults to at most 8, as the original
        ({"GPUS": "4", "GPUS_PER_NODE": "2"}, ("2", 4, 2)),  # accumulation follows the processes started
        ({"GPUS": "2", "ACCUM_ITER": "1"}, ("2", 1, 2)),
    ],
)
def test_gpus_default_override_and_accumulation(workspace, env, expected):
    if "STUB_CUDA_DEVICES" not in env:
        workspace.env.pop("STUB_CUDA_DEVICES")
    assert accumulation(workspace, **env) == expected


def test_gpu_count_not_dividing_8_gets_a_note(workspace):
    workspace.file("w.pth")
    process, calls = workspace.run("./scripts/dist_train_a2d.sh out w.pth", GPUS="3")
    ((_, args, launcher),) = parsed_calls(process, calls)
    assert option(launcher, "--nproc_per_node") == "3" and args.accum_iter == 2
    assert "3 processes x --accum_iter 2 is not the original's 8 GPUs' batch" in process.stderr


def test_port_and_cpus_per_task(workspace):
    process, calls = workspace.run("./scripts/dist_pretrain.sh out", PORT="29611", CPUS_PER_TASK="5")
    ((_, _, launcher),) = parsed_calls(process, calls)
    assert option(launcher, "--master_port") == "29611" and calls[0]["omp_num_threads"] == "5"


@pytest.mark.parametrize(("env", "message"), [({"GPUS": "two"}, "GPUS must be a positive integer"),
                                              ({"GPUS": "0"}, "GPUS must be a positive integer"),
                                              ({"ACCUM_ITER": "-1"}, "ACCUM_ITER must be a positive integer")])
def test_bad_environment_values_are_named(workspace, env, message):
    process, calls = workspace.run("./scripts/dist_pretrain.sh out", **env)
    assert process.returncode == 1 and message in process.stderr and not calls


# ----------------------------------------------------------------------------- arguments and paths
def test_relative_paths_are_resolved_against_the_callers_directory(workspace):
    elsewhere = workspace.cwd / "experiments" / "run1"
    elsewhere.mkdir(parents=True)
    (elsewhere / "w.pth").touch()
    process, calls = workspace.run("../../scripts/dist_train_test_ytvos.sh out w.pth --text_encoder te",
                                   cwd=elsewhere)
    (_, train_args, launcher), (_, predict_args, _) = parsed_calls(process, calls)
    assert train_args.output_dir == predict_args.output_dir == str(elsewhere / "out")
    assert train_args.pretrained_weights == str(elsewhere / "w.pth")
    assert train_args.text_encoder == "te"  # flags are passed on as given, relative to the same directory
    # the repository's own entry points, whatever the working directory (the scripts do not cd)
    assert calls[0]["argv"][len(launcher)] == str(ROOT / "main.py")
    assert calls[1]["argv"][0] == str(ROOT / "inference_ytvos.py")


def test_gpu_count_as_first_argument_says_where_it_goes(workspace):
    workspace.file("w.pth")
    process, calls = workspace.run("./scripts/dist_train_a2d.sh 8 out w.pth")
    assert process.returncode == 1 and not calls
    assert "GPUS=8" in process.stderr and "out w.pth" in process.stderr


def test_missing_weights_file_is_named(workspace):
    process, calls = workspace.run("./scripts/dist_train_a2d.sh out missing/w.pth")
    assert process.returncode == 1 and not calls and "weights file missing/w.pth does not exist" in process.stderr


@pytest.mark.parametrize("script", sorted(WEIGHTS_REQUIRED))
def test_scripts_needing_weights_print_the_usage_without_them(workspace, script):
    process, calls = workspace.run(f"./scripts/{script} out --backbone resnet101")
    assert process.returncode == 1 and not calls and "Weights: " in process.stderr


# ----------------------------------------------------------------------------- --local_rank and the real launcher
@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--local_rank", "2"], 2), (["--local-rank=3"], 3),
                                                (["--local_rank=1"], 1)])
def test_local_rank_spellings(argv, expected):
    assert get_args_parser().parse_args(argv).local_rank == expected


PROBE = """\
import json, os, sys
from opts import get_args_parser
from util.dist import init_distributed_mode

args = get_args_parser().parse_args()
environment = os.environ.get("LOCAL_RANK")
if args.local_rank is not None:  # older launchers passed --local_rank alone, without LOCAL_RANK: rely on it
    del os.environ["LOCAL_RANK"]
info = init_distributed_mode("cpu", args.dist_url, args.local_rank)
report = {"argv": sys.argv[1:], "environment": environment, "rank": info.rank, "local_rank": info.local_rank,
          "world_size": info.world_size}
with open(f"report{info.rank}.json", "w") as f:  # one file per process: their stdout lines interleave
    json.dump(report, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("use_env", [True, False], ids=["use_env", "local_rank_argument"])
def test_torch_distributed_launch_runs_main_options(tmp_path, use_env):
    """``python -m torch.distributed.launch`` still exists (deprecated, with a FutureWarning); with
    ``--use_env`` it sets LOCAL_RANK, without it it also passes ``--local-rank=N``, which opts accepts."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    command = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
               f"--master_port={free_port()}", *(["--use_env"] if use_env else []), str(probe), "--seed", "1"]
    process = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert process.returncode == 0, process.stdout + process.stderr
    reports = [json.loads((tmp_path / f"report{rank}.json").read_text()) for rank in range(2)]
    assert [(r["rank"], r["local_rank"], r["world_size"]) for r in reports] == [(0, 0, 2), (1, 1, 2)]
    for report in reports:
        assert report["environment"] == str(report["local_rank"])
        assert any(word.startswith("--local-rank") for word in report["argv"]) != use_env
