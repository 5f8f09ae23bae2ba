"""Dropout whose mask is cheap to draw on the CPU.

``nn.Dropout`` on the CPU draws one Bernoulli sample per element on one thread (about 13 ns per
element on the 2-core quick-start machines). :class:`Dropout` is ``nn.Dropout`` everywhere but in
CPU training, where the mask comes from 64-bit random words split into four 15-bit draws (the
16-bit quarters without their top bit): one generator call per four elements instead of one per
element. An element is dropped when its draw is below ``round(p * 2**15)``, so the drop rate is
``p`` rounded to a multiple of ``2**-15`` (0.1 → 0.100006); the kept elements are scaled by
``1 / (1 - p)`` as in ``nn.Dropout``. The draws come from PyTorch's default generator, so a seeded
run repeats itself; the random stream is not the one ``nn.Dropout`` would draw. Same parameters,
same state dict (none). In the quick start's training iteration this takes 30-35 ms (5 %) off
(``benchmarks/quickstart_train.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

DRAW_BITS = 15
"""Bits of one draw: each 64-bit random word gives four (``torch.Tensor.random_`` leaves the word's top bit 0)."""


def cpu_dropout_mask(shape: torch.Size, p: float) -> Tensor:
    """Boolean keep-mask of ``shape``: each element kept with probability ``1 - round(p * 2**15) / 2**15``."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_()
    draws = words.view(torch.int16)[:count].view(shape) & ((1 << DRAW_BITS) - 1)
    return draws >= round(p * (1 << DRAW_BITS))


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the cheaper mask of :func:`cpu_dropout_mask` when training on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        scale = cpu_dropout_mask(x.shape, self.p).to(x.dtype).mul_(1 / (1 - self.p))
        return x * scale


def explicit_attention(attention: nn.MultiheadAttention) -> bool:
    """``need_weights`` for a call of ``attention``: True while training with dropout on the attention
    weights, which keeps the original's explicit path and its random draws; otherwise the fused kernel
    (``scaled_dot_product_attention``) computes the same output without materialising the weights."""
    return attention.training and attention.dropout > 0
