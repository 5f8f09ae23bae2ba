"""The training flags added to opts.py (--accum_iter, --save_every_iters, --caption_flip, ...)."""
from __future__ import annotations

import pytest

from opts import get_args_parser, validate_args


def parse(*argv):
    return get_args_parser().parse_args(list(argv))


def test_defaults():
    args = parse()
    assert (args.accum_iter, args.save_every_iters, args.print_freq) == (1, 0, 10)
    assert args.caption_flip == "whole_word" and not args.skip_bad_samples and args.photometric_distort == "original"
    assert not args.amp and args.resume == ""
    validate_args(args)


@pytest.mark.parametrize("argv, message", [
    (["--accum_iter", "0"], "--accum_iter must be at least 1"),
    (["--accum_iter", "4", "--save_every_iters", "6"], "multiple of --accum_iter"),
    (["--save_every_iters", "-1"], "--save_every_iters"),
    (["--print_freq", "0"], "--print_freq"),
])
def test_invalid_training_flags(argv, message):
    with pytest.raises(ValueError, match=message):
        validate_args(parse(*argv))


def test_caption_flip_choices():
    assert parse("--caption_flip", "original").caption_flip == "original"
    with pytest.raises(SystemExit):
        parse("--caption_flip", "words")


def test_resume_auto_and_accumulation_parse():
    args = parse("--resume", "auto", "--accum_iter", "8", "--save_every_iters", "16", "--amp", "--skip_bad_samples")
    validate_args(args)
    assert args.resume == "auto" and args.accum_iter == 8 and args.amp and args.skip_bad_samples
