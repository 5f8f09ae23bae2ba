"""Score Ref-DAVIS17 / DAVIS-2017 predictions with J&F, as the official toolkit does.

    python eval_davis.py --results_path output/valid/anno_0
    python eval_davis.py --results_path output/valid            # all anno_<a> folders and their mean

``--results_path`` holds one folder of PNG label maps per sequence. Scores are written to
``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` in that folder and printed.
As in the original, a folder whose two CSVs already exist is not evaluated again; pass
``--recompute`` to evaluate it anyway. If ``--results_path`` contains ``anno_<a>`` folders
(the four Ref-DAVIS17 annotators written by ``inference_davis.py``), each is scored that way
and the mean of their global results (the reported Ref-DAVIS17 number) is printed and written
to ``global_results_annotators-<set>.csv`` in ``--results_path``. Unknown flags are ignored,
as in the original, so the inference flags can be passed through.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

from davis2017.evaluation import (
    ANNOTATOR_COLUMNS,
    GLOBAL_COLUMNS,
    TASKS,
    annotator_folders,
    annotator_rows,
    average_global_scores,
    format_table,
    load_or_evaluate,
    write_csv_table,
)

logger = logging.getLogger("eval_davis")

DEFAULT_DAVIS_PATH = "data/ref-davis/DAVIS"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The original's flags plus ``--recompute``; unknown flags are ignored."""
    parser = argparse.ArgumentParser(prog="eval_davis.py", description="DAVIS-2017 J&F evaluation of a results folder")
    parser.add_argument(
        "--davis_path",
        default=DEFAULT_DAVIS_PATH,
        help="DAVIS folder containing ImageSets, Annotations and Annotations_unsupervised",
    )
    parser.add_argument("--set", default="val", help="subset to evaluate (ImageSets/2017/<set>.txt)")
    parser.add_argument("--task", default="unsupervised", choices=TASKS, help="DAVIS task whose protocol is used")
    parser.add_argument(
        "--results_path",
        required=True,
        help="folder with one folder of PNG label maps per sequence, or with anno_<a> folders of such",
    )
    parser.add_argument(
        "--recompute", action="store_true", help="evaluate even if the folder already holds the result CSVs"
    )
    args, _ = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Evaluate, write the CSVs and print the tables.

    Returns:
        The global scores (``GLOBAL_COLUMNS`` → value) of the results folder, or the mean over
        its ``anno_<a>`` folders when it has some.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    start = time.time()
    folders = annotator_folders(args.results_path) or [args.results_path]
    all_scores = []
    for folder in folders:
        scores = load_or_evaluate(args.davis_path, folder, args.task, args.set, args.recompute)
        logger.info("------------------------ Global results for %s (%s) ------------------------", args.set, folder)
        logger.info("%s", scores.global_table())
        logger.info("\n---------- Per sequence results for %s (%s) ----------", args.set, folder)
        logger.info("%s", scores.per_sequence_table())
        all_scores.append(scores)
    if len(all_scores) == 1 and folders[0] == args.results_path:
        result = all_scores[0].global_scores
    else:
        names = [os.path.basename(folder) for folder in folders]
        rows = annotator_rows(names, all_scores)
        path = os.path.join(args.results_path, f"global_results_annotators-{args.set}.csv")
        write_csv_table(path, ANNOTATOR_COLUMNS, rows)
        logger.info("\n---------- Mean over the annotators for %s (saved in %s) ----------", args.set, path)
        logger.info("%s", format_table(ANNOTATOR_COLUMNS, rows))
        result = average_global_scores(all_scores)
    logger.info("\nTotal time: %.1f s", time.time() - start)
    return {column: result[column] for column in GLOBAL_COLUMNS}


if __name__ == "__main__":
    main()
