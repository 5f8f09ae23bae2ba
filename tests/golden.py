"""Access to the golden reference data made by running the original ReferFormer.

The data lives in ``tests/golden/`` (see its README).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(__file__).resolve().parent / "golden"
TOKENIZER_DIR = REFERENCE_DIR / "tokenizer"


def load_case(name: str) -> dict:
    """Load one golden case file (``weights_only=True``)."""
    path = REFERENCE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"golden case {path} not found (see tests/golden/README.md)")
    return torch.load(path, weights_only=True)


def max_abs_and_scale(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """(max |actual - expected|, max |expected|) in float64."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0, 0.0
    return (actual - expected).abs().max().item(), expected.abs().max().item()


def assert_close_to_scale(actual: Tensor, expected: Tensor, rel: float, name: str = "", atol: float = 0.0) -> None:
    """Assert ``max|Δ| <= rel * max|expected| + atol`` (a tolerance relative to the tensor's magnitude)."""
    err, scale = max_abs_and_scale(actual, expected)
    assert err <= rel * scale + atol, f"{name}: max abs error {err:.3e} > {rel:g} x scale {scale:.3e} + {atol:g}"


def compare_compacted(actual: Tensor, compacted: dict, rel: float, name: str = "") -> None:
    """Compare a full tensor with a compacted golden entry (first 2048 values + float64 stats)."""
    assert list(actual.shape) == list(compacted["shape"]), f"{name}: shape {tuple(actual.shape)} != {compacted['shape']}"
    flat = actual.detach().reshape(-1)
    head = compacted["head"]
    assert_close_to_scale(flat[: head.numel()], head, rel, f"{name} (head)")
    a = actual.detach().double()
    stats = torch.stack([a.sum(), a.abs().sum(), (a * a).sum(), a.min(), a.max()])
    expected = compacted["stats"].double()
    # sums over many elements: compare relative to the abs-sum (sum) and to the sum of squares itself
    scale = torch.stack([expected[1], expected[1], expected[2], expected[4].abs().clamp_min(expected[3].abs()),
                         expected[4].abs().clamp_min(expected[3].abs())])
    err = (stats - expected).abs()
    assert bool((err <= rel * scale).all()), f"{name}: stats {stats.tolist()} != {expected.tolist()}"
