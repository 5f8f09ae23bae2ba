"""RoBERTa text encoder, its tokenizer, and the feature resizer that maps words to ``hidden_dim``.

The encoder is a Hugging Face ``RobertaModel`` **with** its pooler: ``last_hidden_state`` gives the
word features and ``pooler_output`` (``tanh(Linear(h[:, 0]))``) the sentence feature. Public
roberta-base weights carry no pooler, so in the released ReferFormer checkpoints the pooler is a
random (frozen) layer whose values live only in the checkpoint: always load it from there.

Nothing is downloaded: ``--text_encoder`` is a local directory in ``save_pretrained`` layout or a
model name already in the local Hugging Face cache.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, RobertaConfig, RobertaModel

from models.dropout import Dropout
from util.nested_tensor import NestedTensor

RESIZER_LN_EPS = 1e-12
RESIZER_DROPOUT = 0.1  # hard-coded in the original, independent of --dropout

_HOW_TO_GET = (
    "Save it once on a machine with internet access:\n"
    "  python -c \"from transformers import RobertaModel, AutoTokenizer; "
    "RobertaModel.from_pretrained('roberta-base').save_pretrained('weights/roberta-base'); "
    "AutoTokenizer.from_pretrained('roberta-base').save_pretrained('weights/roberta-base')\"\n"
    "then pass --text_encoder weights/roberta-base"
)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """The RoBERTa BPE tokenizer from a local directory or the local Hugging Face cache."""
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"text encoder tokenizer {name_or_path!r} is not available offline. {_HOW_TO_GET}") from error


def load_text_encoder(name_or_path: str, *, pretrained: bool = True) -> RobertaModel:
    """``RobertaModel`` (with pooler) from a local directory or the local cache.

    With ``pretrained=False`` only the config is read and weights are left at their random init,
    for when a ReferFormer checkpoint will supply every text-encoder weight anyway.
    """
    try:
        if pretrained:
            return RobertaModel.from_pretrained(name_or_path, local_files_only=True, add_pooling_layer=True)
        config = RobertaConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"text encoder {name_or_path!r} is not available offline. {_HOW_TO_GET}") from error
    return RobertaModel(config, add_pooling_layer=True)


def text_encoder_from_config(config: dict) -> RobertaModel:
    """A randomly initialised ``RobertaModel`` (with pooler) from a config dict, e.g. the golden tiny one."""
    config = {k: v for k, v in config.items() if k != "architectures"}
    return RobertaModel(RobertaConfig(**config), add_pooling_layer=True)


class FeatureResizer(nn.Module):
    """Linear projection, LayerNorm (eps 1e-12) and dropout: ``[..., C_in]`` → ``[..., C_out]``."""

    def __init__(self, input_feat_size: int, output_feat_size: int, dropout: float = RESIZER_DROPOUT):
        super().__init__()
        self.fc = nn.Linear(input_feat_size, output_feat_size, bias=True)
        self.layer_norm = nn.LayerNorm(output_feat_size, eps=RESIZER_LN_EPS)
        self.dropout = Dropout(dropout)

    def forward(self, features: Tensor) -> Tensor:
        return self.dropout(self.layer_norm(self.fc(features)))


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: list[str], max_tokens: int, device: torch.device) -> dict[str, Tensor]:
    """Tokenize as the original: pad to the longest caption, special tokens added, no truncation.

    Raises ``ValueError`` for an empty caption or one longer than the encoder's ``max_tokens``.
    """
    for index, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"caption {index} is empty or not a string: {caption!r}")
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    length = tokens["input_ids"].shape[1]
    if length > max_tokens:
        longest = max(range(len(captions)), key=lambda i: int(tokens["attention_mask"][i].sum()))
        raise ValueError(
            f"caption {longest} has {length} tokens, more than the text encoder's {max_tokens}: {captions[longest][:80]!r}…"
        )
    return {"input_ids": tokens["input_ids"].to(device), "attention_mask": tokens["attention_mask"].to(device)}


def encode_text(
    text_encoder: RobertaModel, resizer: FeatureResizer, tokens: dict[str, Tensor]
) -> tuple[NestedTensor, Tensor]:
    """Word and sentence features.

    Returns:
        text_word_features: NestedTensor ``[B, S, hidden]`` with mask ``[B, S]`` (True = padding);
        text_sentence_features: ``[B, hidden]`` (resized pooler output).
    """
    encoded = text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    text_mask = tokens["attention_mask"].ne(1)  # [B, S]
    word_features = resizer(encoded.last_hidden_state)  # [B, S, hidden]
    sentence_features = resizer(encoded.pooler_output)  # [B, hidden]
    return NestedTensor(word_features, text_mask), sentence_features


def max_text_tokens(text_encoder: RobertaModel) -> int:
    """Longest token sequence the encoder accepts (RoBERTa reserves padding_idx + 1 positions)."""
    config = text_encoder.config
    return config.max_position_embeddings - config.pad_token_id - 1
