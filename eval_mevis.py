"""Score MeViS predictions with the official offline metric: J, F and J&F over the expressions.

    python eval_mevis.py --mevis_path data/mevis --split valid_u --pred_path output/mevis_r50/valid_u
    python eval_mevis.py --mevis_exp_path data/mevis/valid_u/meta_expressions.json \\
        --mevis_mask_path data/mevis/valid_u/mask_dict.json --mevis_pred_path output/mevis_r50/valid_u \\
        --save_name mevis_valid_u.json                       # the official script's flags

The prediction folder holds ``<video>/<exp_id>/<frame>.png`` (what ``inference_mevis.py`` writes
under ``<output_dir>/<split>``). The metric is the MeViS authors' ``tools/eval_mevis.py``
(``davis2017/mevis.py`` states it): per frame J and the DAVIS boundary F of the prediction (any
non-zero pixel) against the union of the expression's object masks, averaged over the frames, then
over the expressions. A video without a prediction folder scores 0 for its expressions, as in the
official script; a missing or wrongly sized PNG inside a video's folder is an error.

Writes the per-expression scores ``{"<video>_<exp_id>": [J, F]}`` to ``--save_name`` (default
``<pred_path>_results.json``, beside the prediction folder) and prints J, F and J&F as the
official script does. Only ``valid_u`` (and ``train``) have masks: ``valid`` is scored by the
challenge server from the zip ``inference_mevis.py`` writes.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from datasets.mevis import expressions_path, mask_dict_path
from davis2017.mevis import evaluate_mevis
from util.io import write_json_atomic

logger = logging.getLogger("eval_mevis")

DEFAULT_MEVIS_PATH = "data/mevis"
DEFAULT_SPLIT = "valid_u"
# The official script starts 64 processes; this bounds the default by the machine's cores.
MAX_DEFAULT_WORKERS = 16
RESULTS_SUFFIX = "_results.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The official script's flags and the shorter ``--mevis_path``/``--split``/``--pred_path``."""
    parser = argparse.ArgumentParser(
        prog="eval_mevis.py",
        description="MeViS J&F of a folder of predicted masks <video>/<exp_id>/<frame>.png (the official metric)")
    parser.add_argument("--mevis_path", default=DEFAULT_MEVIS_PATH,
                        help="MeViS root; the ground truth is <mevis_path>/<split>/meta_expressions.json and "
                             "mask_dict.json unless --mevis_exp_path / --mevis_mask_path say otherwise")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split with masks to score against (valid_u, train)")
    parser.add_argument("--mevis_exp_path", default=None, help="the split's meta_expressions.json (official flag)")
    parser.add_argument("--mevis_mask_path", default=None, help="the split's mask_dict.json (official flag)")
    parser.add_argument("--pred_path", "--mevis_pred_path", dest="pred_path", required=True,
                        help="folder of predictions <video>/<exp_id>/<frame>.png (--mevis_pred_path: official flag)")
    parser.add_argument("--save_name", default=None,
                        help=f"per-expression JSON to write (official flag); default <pred_path>{RESULTS_SUFFIX}")
    parser.add_argument("--num_workers", default=min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS), type=int,
                        help="processes scoring expressions in parallel (default: the CPU cores, at most "
                             f"{MAX_DEFAULT_WORKERS}; 1: no extra process)")
    args = parser.parse_args(argv)
    if args.num_workers < 1:
        parser.error(f"--num_workers must be at least 1, got {args.num_workers}")
    return args


def results_path(pred_path: str | Path) -> Path:
    """``<pred_path>_results.json``: beside the prediction folder, named after it."""
    pred_path = Path(pred_path).resolve()
    return pred_path.with_name(pred_path.name + RESULTS_SUFFIX)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Evaluate, write the per-expression JSON and print the means.

    Returns:
        ``{"J": ..., "F": ..., "J&F": ...}`` as fractions (the official script's numbers).
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    expressions_file = Path(args.mevis_exp_path or expressions_path(args.mevis_path, args.split))
    mask_file = Path(args.mevis_mask_path or mask_dict_path(args.mevis_path, args.split))
    if not mask_file.is_file():
        raise FileNotFoundError(f"{mask_file} does not exist: scoring needs the split's masks (MeViS releases them "
                                "for train and valid_u; valid is scored by the challenge server from the zip "
                                "inference_mevis.py writes)")
    start = time.time()
    scores = evaluate_mevis(expressions_file, mask_file, args.pred_path, num_workers=args.num_workers)
    save_name = Path(args.save_name) if args.save_name else results_path(args.pred_path)
    write_json_atomic(save_name, {key: list(value) for key, value in scores.per_expression.items()})
    logger.info("J: %s", scores.j)
    logger.info("F: %s", scores.f)
    logger.info("J&F: %s", scores.j_and_f)
    logger.info("J&F %.1f (J %.1f, F %.1f) on %d expressions of %s%s; per expression: %s (%.1f s)",
                100 * scores.j_and_f, 100 * scores.j, 100 * scores.f, len(scores.per_expression), expressions_file,
                f", {len(scores.missing_videos)} videos without predictions scored 0" if scores.missing_videos else "",
                save_name, time.time() - start)
    return {"J": scores.j, "F": scores.f, "J&F": scores.j_and_f}


if __name__ == "__main__":
    main()
