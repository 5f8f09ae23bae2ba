"""Faster CPU inference with the same float32 arithmetic: memory layout and matrix-product kernels.

Two settings, both exact up to float32 summation order (the parity tests' tolerances hold):

- :func:`use_channels_last`: convolution weights in channels-last layout. oneDNN's convolutions
  are faster on channels-last tensors (the backbone and FPN rows of ``benchmarks/cpu.py``), every
  feature map then stays channels-last, and the ``[B*T, C, H, W] → [T*H*W, B, C]`` rearrangements
  between the convolutions and the attention layers of the early fusion, the transformer and the
  cross-modal FPN become views instead of copies.
- :class:`OneDNNLinear`: a context in which ``F.linear`` calls of the forward run on oneDNN
  (``mkldnn._linear_pointwise``) instead of MKL's ``sgemm``, without autograd. On an AVX-512 CPU
  oneDNN's matrix-product kernels were faster for ReferFormer's shapes (the feed-forward layers of
  the encoder and FPN, 24 100 and 72 000 tokens by 256 ↔ 2048) when this was written, and add the
  bias in the same pass instead of first copying it into the output.

:func:`cpu_inference` enters both for a CPU model in eval mode; ``VideoPredictor`` (the demo and the
inference scripts) uses it. Under bfloat16 autocast (``--amp``) :class:`OneDNNLinear` computes what
autocast would, the linear layer on bfloat16 inputs, with the same kernel.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Below this many rows a linear layer is too small for the kernel choice to matter.
MIN_ROWS = 64


def onednn_linear_available() -> bool:
    """True when this PyTorch build has oneDNN's fused linear kernel (x86 and Arm builds normally do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(TorchFunctionMode):
    """Inside this mode, ``F.linear(x, weight, bias)`` on float32 CPU tensors without autograd runs on oneDNN.

    Everything else (autograd, autocast, other dtypes and devices, tiny inputs) goes to PyTorch's
    own ``F.linear``, so the mode can wrap any forward.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            dtype = self._compute_dtype(*args, **kwargs)
            if dtype is not None:
                x, weight = args[0], args[1]
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                x, weight = x.to(dtype), weight.to(dtype)
                bias = None if bias is None else bias.to(dtype)
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return func(*args, **kwargs)

    @staticmethod
    def _compute_dtype(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.dtype | None:
        """float32, or bfloat16 under CPU bfloat16 autocast (which would cast the inputs to it too); None
        when the call is not for oneDNN here."""
        tensors = (x, weight) if bias is None else (x, weight, bias)
        if torch.is_grad_enabled() or x.dim() < 2 or x.numel() < MIN_ROWS * x.shape[-1]:
            return None
        if any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.bfloat16) for t in tensors):
            return None
        if torch.is_autocast_enabled("cpu"):
            return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
        return torch.float32 if all(t.dtype == torch.float32 for t in tensors) else None


def use_channels_last(model: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer (the 2-D convolution weights) in channels-last layout; returns ``model``.

    Values and state-dict keys are unchanged (a channels-last tensor is only stored in another order);
    other tensors (Video Swin's 3-D convolution) are left as they are.
    """
    with torch.no_grad():
        for module in model.modules():
            for tensors in (module._parameters, module._buffers):
                for tensor in tensors.values():
                    if tensor is not None and tensor.dim() == 4:
                        tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def cpu_inference(model: nn.Module) -> Iterator[None]:
    """Run ``model``'s forward passes inside with the faster CPU kernels of this module when they apply
    (the model on the CPU, in eval mode, autograd off); elsewhere it does nothing."""
    parameter = next(model.parameters(), None)
    on_cpu = parameter is None or parameter.device.type == "cpu"
    if on_cpu and not model.training and onednn_linear_available():
        with OneDNNLinear():
            yield
    else:
        yield
