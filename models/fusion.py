"""Early vision-language fusion: every pixel attends to the words and is *multiplied* by the result."""
from __future__ import annotations

from torch import Tensor, nn

from models.dropout import explicit_attention


class VisionLanguageFusionModule(nn.Module):
    """``visual * CrossAttention(query=visual, key=words + word positions, value=words)``.

    The product (no residual, no norm) and the position on the key side only are the original's
    design. All tensors are sequence-first.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)

    def forward(
        self,
        visual: Tensor,
        text_word_features: Tensor,
        text_mask: Tensor,
        text_pos: Tensor,
    ) -> Tensor:
        """
        Args:
            visual: ``[T*H*W, B, C]`` projected visual features of one level.
            text_word_features: ``[S, B, C]``; text_mask: ``[B, S]`` (True = padding); text_pos: ``[S, B, C]``.

        Returns:
            ``[T*H*W, B, C]``.
        """
        attended = self.multihead_attn(
            query=visual, key=text_word_features + text_pos, value=text_word_features, key_padding_mask=text_mask,
            need_weights=explicit_attention(self.multihead_attn),
        )[0]
        return visual * attended
