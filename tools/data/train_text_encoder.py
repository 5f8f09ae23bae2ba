"""An offline text encoder for a dataset's expressions: a byte-level BPE tokenizer and a small RoBERTa.

The CPU quick start cannot download roberta-base, and does not need its 125 M parameters for a
vocabulary of a few dozen words. This tool trains a RoBERTa-style byte-level BPE tokenizer (the
``tokenizers`` library) on every expression of a dataset in the Ref-YouTube-VOS (or MeViS) layout, builds a
small ``RobertaModel`` (with pooler) whose hidden size is the 768 that ReferFormer's
text resizer expects, and saves both with ``save_pretrained`` into one directory, so that

    --text_encoder <output>

loads the tokenizer with ``AutoTokenizer.from_pretrained(<output>, local_files_only=True)`` and the
encoder with ``RobertaModel.from_pretrained(<output>, local_files_only=True)``.

The tokenizer uses RoBERTa's special tokens and ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
``<mask>`` 4) and RoBERTa's post-processing (``<s> … </s>``). Being byte-level it has no unknown
input: a word it has not seen is split into known pieces, down to single bytes.

The encoder is then trained briefly on the distinct expressions (:func:`pretrain_text_encoder`:
masked language modelling plus a contrastive objective on the pooled sentence feature, two masked
views of an expression against the others of the batch). Untrained, a random encoder's word
features already tell the words apart, but its sentence feature (the pooler output, which
ReferFormer uses as the content of every object query) hardly depends on the words: the pooled features of the
Ref-Shapes expressions have a mean cosine similarity of 0.997, and a ReferFormer trained on them for
the quick start's epoch picks the referred object at chance level. After the default 150 steps
(about a minute on 2 cores) the mean cosine similarity is about 0.2. ``--pretrain_steps 0`` keeps the
random initialisation. Dropout is 0, so that, frozen, the encoder gives the same features in
training and evaluation.

    python tools/data/train_text_encoder.py --data_root data/ref-shapes --output data/ref-shapes/text_encoder
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerBase, RobertaConfig, RobertaModel, RobertaTokenizer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.meta import META_EXPRESSIONS_DIR, META_EXPRESSIONS_FILE, read_meta_expressions  # noqa: E402

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
"""In RoBERTa's order, so their ids are RoBERTa's: bos 0, pad 1, eos 2, unk 3, mask 4."""
BOS_ID, PAD_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 1000
"""An upper bound: on a small corpus the merges run out first (Ref-Shapes: a few hundred entries)."""
MIN_MERGE_FREQUENCY = 1

TEXT_HIDDEN_SIZE = 768
"""ReferFormer's text resizer maps 768 (roberta-base's width) to ``hidden_dim``."""
DEFAULT_NUM_LAYERS = 1
DEFAULT_NUM_HEADS = 12
DEFAULT_INTERMEDIATE_SIZE = 512
MAX_POSITIONS = 514
"""roberta-base's: 512 tokens plus the ``padding_idx + 1`` positions RoBERTa skips."""
LAYER_NORM_EPS = 1e-5
DROPOUT = 0.0
DEFAULT_PRETRAIN_STEPS = 150
PRETRAIN_BATCH_SIZE = 64
PRETRAIN_LR = 1e-4
MASK_PROBABILITY = 0.15
"""BERT's share of masked word tokens."""
CONTRAST_TEMPERATURE = 0.05
"""SimCSE's temperature for the cosine similarities of sentence features."""


def collect_expressions(data_root: str | Path) -> list[str]:
    """The expressions of every split's ``meta_expressions.json``, in split-name order and then file order:
    ``<data_root>/meta_expressions/<split>/`` (Ref-YouTube-VOS layout) or ``<data_root>/<split>/`` (MeViS layout).

    Raises:
        FileNotFoundError: if there is no expression file, naming the folders looked in.
    """
    folder = Path(data_root) / META_EXPRESSIONS_DIR
    paths = sorted(folder.glob(f"*/{META_EXPRESSIONS_FILE}"))
    if not paths:  # the MeViS layout
        paths = sorted(Path(data_root).glob(f"*/{META_EXPRESSIONS_FILE}"))
    if not paths:
        raise FileNotFoundError(
            f"no {META_EXPRESSIONS_DIR}/<split>/{META_EXPRESSIONS_FILE} or <split>/{META_EXPRESSIONS_FILE} under "
            f"{data_root}; generate the dataset first (tools/data/make_ref_shapes.py)"
        )
    return [expression.text for path in paths for video in read_meta_expressions(path).values()
            for expression in video.expressions]


def train_tokenizer(expressions: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> RobertaTokenizer:
    """A RoBERTa tokenizer whose byte-level BPE vocabulary and merges are learnt from ``expressions``."""
    if not expressions:
        raise ValueError("no expressions to train the tokenizer on")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(expressions, vocab_size=vocab_size, min_frequency=MIN_MERGE_FREQUENCY,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = RobertaTokenizer(vocab=bpe.get_vocab(), merges=merges)
    ids = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
           tokenizer.mask_token_id]
    assert ids == list(range(len(SPECIAL_TOKENS))), f"special token ids {ids} are not RoBERTa's"
    return tokenizer


def build_text_encoder(vocab_size: int, *, seed: int, num_layers: int = DEFAULT_NUM_LAYERS,
                       num_heads: int = DEFAULT_NUM_HEADS,
                       intermediate_size: int = DEFAULT_INTERMEDIATE_SIZE) -> RobertaModel:
    """A randomly initialised ``RobertaModel`` with pooler, 768 wide; same seed, same weights.

    The global torch random state is left as it was.
    """
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=TEXT_HIDDEN_SIZE, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT, max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1, layer_norm_eps=LAYER_NORM_EPS, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return RobertaModel(config, add_pooling_layer=True)


def pretrain_text_encoder(model: RobertaModel, tokenizer: PreTrainedTokenizerBase, expressions: list[str], *,
                          steps: int = DEFAULT_PRETRAIN_STEPS, batch_size: int = PRETRAIN_BATCH_SIZE,
                          lr: float = PRETRAIN_LR, seed: int = 0) -> list[float]:
    """Train ``model`` in place on the distinct ``expressions``; returns the loss of every step.

    Two self-supervised objectives, summed, on two randomly masked views of each expression of a
    batch (:data:`MASK_PROBABILITY` of the word tokens replaced by ``<mask>``):

    * masked language modelling: the masked tokens are predicted from their output features (a
      linear head over the vocabulary);
    * contrastive sentence features: the pooler outputs of the two views of an expression must be
      more alike than those of different expressions (cross-entropy over the batch's cosine
      similarities divided by :data:`CONTRAST_TEMPERATURE`).

    The second is what the quick start needs: in a randomly initialised encoder the pooler output
    (``tanh`` of the ``<s>`` feature, ReferFormer's sentence feature and the content of its object
    queries) barely depends on the words (mean cosine similarity 0.997 between Ref-Shapes
    expressions), so the queries of different expressions all look alike. The head is discarded afterwards.
    """
    generator = torch.Generator().manual_seed(seed)
    distinct = sorted(set(expressions))
    batch_size = min(batch_size, len(distinct))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlm_head = nn.Linear(model.config.hidden_size, len(tokenizer))
    optimizer = torch.optim.AdamW([*model.parameters(), *mlm_head.parameters()], lr=lr, weight_decay=0.0)
    encoded = tokenizer(distinct, padding=True, return_tensors="pt")
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    is_word = ~torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))  # [N, S]
    model.train()
    losses = []
    for _ in range(steps):
        batch = torch.randperm(len(distinct), generator=generator)[:batch_size]
        ids, mask, words = input_ids[batch].repeat(2, 1), attention_mask[batch].repeat(2, 1), is_word[batch].repeat(2, 1)
        masked = words & (torch.rand(ids.shape, generator=generator) < MASK_PROBABILITY)  # [2B, S]
        outputs = model(input_ids=ids.masked_fill(masked, tokenizer.mask_token_id), attention_mask=mask)
        loss = F.cross_entropy(mlm_head(outputs.last_hidden_state[masked]), ids[masked]) if masked.any() else 0.0
        first, second = F.normalize(outputs.pooler_output, dim=-1).chunk(2)  # [B, 768] each
        similarity = first @ second.T / CONTRAST_TEMPERATURE  # [B, B]
        loss = loss + F.cross_entropy(similarity, torch.arange(len(batch)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def save_text_encoder(output: str | Path, tokenizer: PreTrainedTokenizerBase, model: RobertaModel) -> Path:
    """``save_pretrained`` of both into ``output`` (created); returns it."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def make_text_encoder(data_root: str | Path, output: str | Path, *, seed: int = 0,
                      vocab_size: int = DEFAULT_VOCAB_SIZE, num_layers: int = DEFAULT_NUM_LAYERS,
                      num_heads: int = DEFAULT_NUM_HEADS, intermediate_size: int = DEFAULT_INTERMEDIATE_SIZE,
                      pretrain_steps: int = DEFAULT_PRETRAIN_STEPS) -> Path:
    """Train the tokenizer on ``data_root``'s expressions, build and pre-train the encoder, save both into
    ``output``."""
    expressions = collect_expressions(data_root)
    tokenizer = train_tokenizer(expressions, vocab_size)
    model = build_text_encoder(len(tokenizer), seed=seed, num_layers=num_layers, num_heads=num_heads,
                               intermediate_size=intermediate_size)
    logger.info("tokenizer: %d entries from %d expressions; encoder: %d layer(s), %.1f M parameters",
                len(tokenizer), len(expressions), num_layers, sum(p.numel() for p in model.parameters()) / 1e6)
    if pretrain_steps:
        losses = pretrain_text_encoder(model, tokenizer, expressions, steps=pretrain_steps, seed=seed)
        logger.info("pre-trained %d steps: loss %.3f -> %.3f", pretrain_steps, losses[0], losses[-1])
    return save_text_encoder(output, tokenizer, model)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer and a small RoBERTa on a "
                                                 "dataset's expressions and save both for --text_encoder")
    parser.add_argument("--data_root", required=True,
                        help="dataset root holding meta_expressions/<split>/ (or <split>/meta_expressions.json: MeViS)")
    parser.add_argument("--output", required=True, help="directory to write (pass it as --text_encoder)")
    parser.add_argument("--seed", default=0, type=int, help="seed of the encoder's random initialisation")
    parser.add_argument("--vocab_size", default=DEFAULT_VOCAB_SIZE, type=int, help="largest vocabulary to learn")
    parser.add_argument("--num_layers", default=DEFAULT_NUM_LAYERS, type=int, help="transformer layers")
    parser.add_argument("--num_heads", default=DEFAULT_NUM_HEADS, type=int,
                        help=f"attention heads (must divide {TEXT_HIDDEN_SIZE})")
    parser.add_argument("--intermediate_size", default=DEFAULT_INTERMEDIATE_SIZE, type=int,
                        help="width of the feed-forward layers")
    parser.add_argument("--pretrain_steps", default=DEFAULT_PRETRAIN_STEPS, type=int,
                        help="steps of self-supervised pre-training on the expressions (0: keep the random weights)")
    args = parser.parse_args(argv)
    if TEXT_HIDDEN_SIZE % args.num_heads:
        parser.error(f"--num_heads {args.num_heads} does not divide the hidden size {TEXT_HIDDEN_SIZE}")
    if args.pretrain_steps < 0:
        parser.error(f"--pretrain_steps must be at least 0, got {args.pretrain_steps}")
    if args.vocab_size <= len(SPECIAL_TOKENS):
        parser.error(f"--vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Write the text-encoder directory; returns it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    output = make_text_encoder(args.data_root, args.output, seed=args.seed, vocab_size=args.vocab_size,
                               num_layers=args.num_layers, num_heads=args.num_heads,
                               intermediate_size=args.intermediate_size, pretrain_steps=args.pretrain_steps)
    logger.info("wrote %s (use --text_encoder %s)", output, output)
    return output


if __name__ == "__main__":
    main()
