"""An offline text encoder for a dataset's expressions: a byte-level BPE tokenizer and a small RoBERTa.

The CPU quick start cannot download roberta-base, and does not need its 125 M parameters for a
vocabulary of a few dozen words. This tool trains a RoBERTa-style byte-level BPE tokenizer (the
``tokenizers`` library) on every expression of a dataset in the Ref-YouTube-VOS layout, builds a
randomly initialised ``RobertaModel`` (with pooler) whose hidden size is the 768 that ReferFormer's
text resizer expects, and saves both with ``save_pretrained`` into one directory, so that

    --text_encoder <output>

loads the tokenizer with ``AutoTokenizer.from_pretrained(<output>, local_files_only=True)`` and the
encoder with ``RobertaModel.from_pretrained(<output>, local_files_only=True)``.

The tokenizer uses RoBERTa's special tokens and ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
``<mask>`` 4) and RoBERTa's post-processing (``<s> … </s>``). Being byte-level it has no unknown
input: a word it has not seen is split into known pieces, down to single bytes.

The encoder is left at its random initialisation (seeded), without masked-LM pre-training: a
least-squares linear probe on the frozen random encoder's pooled sentence feature (and on its mean
word feature) already recovers every attribute word — colour, shape, size, side, motion — of
held-out Ref-Shapes expressions with 100 % accuracy, so pre-training on the dataset's templated
sentences has nothing measurable to add; the quick start may train the encoder with the rest of
the model or freeze it. Its dropout is 0, so that, frozen, it gives the same features in training
and evaluation.

    python tools/data/train_text_encoder.py --data_root data/ref-shapes --output data/ref-shapes/text_encoder
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
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


def collect_expressions(data_root: str | Path) -> list[str]:
    """The expressions of every split's ``meta_expressions.json`` under ``<data_root>/meta_expressions``,
    in split-name order and then file order.

    Raises:
        FileNotFoundError: if there is no expression file, naming the folder looked in.
    """
    folder = Path(data_root) / META_EXPRESSIONS_DIR
    paths = sorted(folder.glob(f"*/{META_EXPRESSIONS_FILE}"))
    if not paths:
        raise FileNotFoundError(
            f"no {META_EXPRESSIONS_DIR}/<split>/{META_EXPRESSIONS_FILE} under {data_root}; "
            "generate the dataset first (tools/data/make_ref_shapes.py)"
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


def save_text_encoder(output: str | Path, tokenizer: PreTrainedTokenizerBase, model: RobertaModel) -> Path:
    """``save_pretrained`` of both into ``output`` (created); returns it."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def make_text_encoder(data_root: str | Path, output: str | Path, *, seed: int = 0,
                      vocab_size: int = DEFAULT_VOCAB_SIZE, num_layers: int = DEFAULT_NUM_LAYERS,
                      num_heads: int = DEFAULT_NUM_HEADS,
                      intermediate_size: int = DEFAULT_INTERMEDIATE_SIZE) -> Path:
    """Train the tokenizer on ``data_root``'s expressions, build the encoder, save both into ``output``."""
    expressions = collect_expressions(data_root)
    tokenizer = train_tokenizer(expressions, vocab_size)
    model = build_text_encoder(len(tokenizer), seed=seed, num_layers=num_layers, num_heads=num_heads,
                               intermediate_size=intermediate_size)
    logger.info("tokenizer: %d entries from %d expressions; encoder: %d layer(s), %.1f M parameters",
                len(tokenizer), len(expressions), num_layers, sum(p.numel() for p in model.parameters()) / 1e6)
    return save_text_encoder(output, tokenizer, model)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on a dataset's expressions and "
                                                 "save it with a small random RoBERTa for --text_encoder")
    parser.add_argument("--data_root", required=True, help="dataset root holding meta_expressions/<split>/")
    parser.add_argument("--output", required=True, help="directory to write (pass it as --text_encoder)")
    parser.add_argument("--seed", default=0, type=int, help="seed of the encoder's random initialisation")
    parser.add_argument("--vocab_size", default=DEFAULT_VOCAB_SIZE, type=int, help="largest vocabulary to learn")
    parser.add_argument("--num_layers", default=DEFAULT_NUM_LAYERS, type=int, help="transformer layers")
    parser.add_argument("--num_heads", default=DEFAULT_NUM_HEADS, type=int,
                        help=f"attention heads (must divide {TEXT_HIDDEN_SIZE})")
    parser.add_argument("--intermediate_size", default=DEFAULT_INTERMEDIATE_SIZE, type=int,
                        help="width of the feed-forward layers")
    args = parser.parse_args(argv)
    if TEXT_HIDDEN_SIZE % args.num_heads:
        parser.error(f"--num_heads {args.num_heads} does not divide the hidden size {TEXT_HIDDEN_SIZE}")
    if args.vocab_size <= len(SPECIAL_TOKENS):
        parser.error(f"--vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens")
    return args


def main(argv: list[str] | None = None) -> Path:
    """Write the text-encoder directory; returns it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    output = make_text_encoder(args.data_root, args.output, seed=args.seed, vocab_size=args.vocab_size,
                               num_layers=args.num_layers, num_heads=args.num_heads,
                               intermediate_size=args.intermediate_size)
    logger.info("wrote %s (use --text_encoder %s)", output, output)
    return output


if __name__ == "__main__":
    main()
