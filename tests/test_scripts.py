"""The launchers in ``scripts/``: valid bash, and every main.py / inference call they make parses and
passes ``validate_args`` (a misspelt or dropped flag — the original's pretraining script lost its
options after a comment — fails here, not after hours of queueing)."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from opts import get_args_parser, validate_args

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.sh"))
ENTRY_POINTS = ("main.py", "inference_ytvos.py", "inference_davis.py")
# Integer shell variables of the scripts; the others (paths) parse as they are.
NUMBERS = {"$GPUS": "2", "$ACCUM_ITER": "4"}


def entry_point_calls(script: Path) -> list[list[str]]:
    """The arguments of every entry-point call in ``script`` (continuation lines joined, shell
    variables replaced by placeholders)."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        for entry in ENTRY_POINTS:
            if entry in words:
                arguments = words[words.index(entry) + 1:]
                calls.append([NUMBERS.get(word, word) for word in arguments if word != "$@"])
    return calls


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_calls_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    calls = entry_point_calls(script)
    assert calls, f"{script.name} calls no entry point"
    for arguments in calls:
        validate_args(get_args_parser().parse_args(arguments))


def test_pretraining_script_passes_the_intended_options():
    (arguments,) = entry_point_calls(next(s for s in SCRIPTS if s.name == "dist_pretrain.sh"))
    args = get_args_parser().parse_args(arguments)
    assert (args.dataset_file, args.binary, args.batch_size, args.num_frames, args.epochs, args.lr_drop) == \
        ("all", True, 2, 1, 12, [8, 10])
    assert not args.freeze_text_encoder
