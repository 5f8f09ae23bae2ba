"""Sigmoid focal loss and dice loss, in the forms the matcher and the criterion need.

Each loss comes in two shapes:

* per sample (criterion): logits and targets of the same shape ``[N, D]`` (or ``[N, D, K]`` for
  the class loss), reduced exactly as the original so the numbers match bit for bit;
* pairwise (matcher): logits ``[..., N, D]`` against targets ``[..., M, D]`` → a cost ``[..., N, M]``.

Logits are raw (before the sigmoid); targets are in ``{0, 1}`` and have the logits' dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FOCAL_GAMMA = 2.0
# The mask focal loss (criterion and matcher) and the matcher's class cost hard-code alpha 0.25,
# whatever --focal_alpha says; only the criterion's class loss follows the flag.
FIXED_FOCAL_ALPHA = 0.25
# Keeps the logs of the matcher's class cost finite when a probability saturates at 0 or 1.
CLASS_COST_LOG_EPS = 1e-8
# Added to numerator and denominator of the dice coefficient, so empty masks score 1 (loss 0).
DICE_SMOOTH = 1.0


def sigmoid_focal_loss_elementwise(logits: Tensor, targets: Tensor, alpha: float = FIXED_FOCAL_ALPHA,
                                   gamma: float = FOCAL_GAMMA) -> Tensor:
    """Focal loss of every element: ``BCE(x, y) · (1 − p_t)^γ · α_t``, same shape as ``logits``.

    ``p_t = p·y + (1 − p)(1 − y)`` and ``α_t = α·y + (1 − α)(1 − y)``; a negative ``alpha``
    disables the α weighting.
    """
    prob = logits.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = FIXED_FOCAL_ALPHA,
                       gamma: float = FOCAL_GAMMA) -> Tensor:
    """Focal loss averaged over axis 1, summed over the rest, divided by ``num_boxes`` → scalar.

    Mask loss: ``[B, T*h*w]``. Class loss: ``[B, T*Q, K]`` (the caller then multiplies by ``T*Q``,
    so it is a sum over queries and frames, a mean over nothing).
    """
    return sigmoid_focal_loss_elementwise(logits, targets, alpha, gamma).mean(1).sum() / num_boxes


def dice_loss(logits: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """Smoothed dice loss ``1 − (2Σσ(x)y + 1) / (Σσ(x) + Σy + 1)`` per row of ``[N, D]``, summed / ``num_boxes``."""
    prob = logits.sigmoid().flatten(1)  # [N, D]
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
    return loss.sum() / num_boxes


def pairwise_sigmoid_focal_cost(logits: Tensor, targets: Tensor, alpha: float = FIXED_FOCAL_ALPHA,
                                gamma: float = FOCAL_GAMMA) -> Tensor:
    """Mean focal loss of every prediction against every target: ``[..., N, D]`` × ``[..., M, D]`` → ``[..., N, M]``."""
    logits, targets = torch.broadcast_tensors(logits.unsqueeze(-2), targets.unsqueeze(-3))  # [..., N, M, D]
    return sigmoid_focal_loss_elementwise(logits, targets, alpha, gamma).mean(-1)


def pairwise_dice_coefficient(logits: Tensor, targets: Tensor) -> Tensor:
    """Smoothed dice coefficient (not 1 − it) of every pair: ``[..., N, D]`` × ``[..., M, D]`` → ``[..., N, M]``."""
    prob = logits.sigmoid()
    numerator = 2 * (prob.unsqueeze(-2) * targets.unsqueeze(-3)).sum(-1)  # [..., N, M]
    denominator = prob.sum(-1).unsqueeze(-1) + targets.sum(-1).unsqueeze(-2)  # [..., N, M]
    return (numerator + DICE_SMOOTH) / (denominator + DICE_SMOOTH)


def focal_class_cost(prob: Tensor) -> Tensor:
    """The matcher's class cost of predicting each class with probability ``prob`` (any shape, same shape out).

    ``α(1 − p)^γ·(−log(p + ε)) − (1 − α)p^γ·(−log(1 − p + ε))``: the focal loss of calling the
    class present minus that of calling it absent, with the original's hard-coded α = 0.25,
    γ = 2 and ε = 1e-8.
    """
    alpha, gamma = FIXED_FOCAL_ALPHA, FOCAL_GAMMA
    neg_cost = (1 - alpha) * (prob ** gamma) * (-(1 - prob + CLASS_COST_LOG_EPS).log())
    pos_cost = alpha * ((1 - prob) ** gamma) * (-(prob + CLASS_COST_LOG_EPS).log())
    return pos_cost - neg_cost
