"""Score Ref-YouTube-VOS-layout predictions of the synthetic Ref-Shapes valid split with J&F.

    python tools/eval_ref_shapes.py --predictions output/quickstart/inference/valid/Annotations \\
        --davis_path data/ref-shapes/davis_valid

``inference_ytvos.py`` writes one folder of binary masks per expression,
``<predictions>/<video>/<exp_id>/<frame>.png`` with the object at 255 (the CodaLab format). The
generator (``tools/data/make_ref_shapes.py``) keeps the valid ground truth as a DAVIS-2017 folder
with the same sequence names ``<video>/<exp_id>``, the referred object labelled 1. The DAVIS
toolkit reads a prediction's pixel values as object ids, so 255 would be object 255 (and more
than its 20 proposals): the masks are first rewritten as 0/1 label maps under ``--labels``
(default: ``labels`` beside ``--predictions``), then ``eval_davis.py`` scores that folder in the
unsupervised task (one predicted object against one ground-truth object per sequence) and writes
its CSVs there. Returns and prints the global scores; J&F is ``J&F-Mean`` × 100 in the tables.

It then splits the scores by the ground truth's ``needs_motion`` flag: expressions that any single
frame resolves, and those that only the motion does — which a model decoding each frame on its own
(ReferFormer with a 2-D backbone) can only guess (written to ``<labels>/motion_results-val.csv``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import eval_davis  # noqa: E402
from davis2017.evaluation import (  # noqa: E402
    DavisScores,
    format_table,
    read_label_map,
    read_sequence_list,
    write_csv_table,
)
from tools.data.make_ref_shapes import GROUND_TRUTH_FILE, NEEDS_MOTION_KEY  # noqa: E402

# The ground truth labels the referred object 1 (make_ref_shapes.REFERRED_LABEL); a binary mask becomes that object.
REFERRED_LABEL = 1
DAVIS_SET = "val"
DAVIS_TASK = "unsupervised"


def binary_masks_to_labels(predictions: str | Path, labels: str | Path, sequences: list[str]) -> int:
    """Rewrite every ``<predictions>/<sequence>/*.png`` (non-zero = object) as a 0/1 label map in
    ``<labels>/<sequence>/``; returns the number of files written.

    Raises:
        FileNotFoundError: a sequence has no prediction folder (naming it and the command to run).
    """
    predictions, labels = Path(predictions), Path(labels)
    count = 0
    for sequence in sequences:
        source = predictions / sequence
        if not source.is_dir():
            raise FileNotFoundError(f"no predictions for sequence {sequence}: {source} does not exist; run "
                                    "inference_ytvos.py on the valid split first")
        target = labels / sequence
        target.mkdir(parents=True, exist_ok=True)
        for png in sorted(source.glob("*.png")):
            mask = read_label_map(str(png)) > 0
            Image.fromarray(np.where(mask, REFERRED_LABEL, 0).astype(np.uint8), mode="L").save(target / png.name)
            count += 1
    return count


MOTION_COLUMNS = ("Expressions", "Count", "J&F-Mean", "J-Mean", "F-Mean")
MOTION_GROUPS = {False: "resolved by any frame", True: "resolved only by motion"}


def motion_csv_path(labels: str | Path) -> Path:
    """Where :func:`main` writes the scores by motion group."""
    return Path(labels) / f"motion_results-{DAVIS_SET}.csv"


def scores_by_motion(per_object: list[tuple[str, float, float]], ground_truth: dict) -> list[list]:
    """Rows of :data:`MOTION_COLUMNS`: the per-object scores averaged over each :data:`MOTION_GROUPS` group.

    Args:
        per_object: ``(<video>/<exp_id>_1, J, F)`` rows of the DAVIS per-sequence table.
        ground_truth: the generator's ``meta_expressions_with_gt.json`` content.

    Raises:
        KeyError: a scored sequence has no ground-truth entry with the motion flag.
    """
    groups: dict[bool, list[tuple[float, float]]] = {flag: [] for flag in MOTION_GROUPS}
    for name, j, f in per_object:
        video, exp_id = name.rsplit("_", 1)[0].split("/")
        entry = ground_truth["videos"].get(video, {}).get("expressions", {}).get(exp_id, {})
        if NEEDS_MOTION_KEY not in entry:
            raise KeyError(f"sequence {name}: no {NEEDS_MOTION_KEY!r} flag for expression {exp_id} of {video} in the "
                           f"ground truth; regenerate the dataset with tools/data/make_ref_shapes.py")
        groups[bool(entry[NEEDS_MOTION_KEY])].append((j, f))
    rows = []
    for flag, scores in groups.items():
        if scores:
            j, f = np.mean(scores, axis=0)
            rows.append([MOTION_GROUPS[flag], len(scores), (j + f) / 2, j, f])
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictions", required=True,
                        help="inference_ytvos.py output folder holding <video>/<exp_id>/<frame>.png (0/255)")
    parser.add_argument("--davis_path", required=True,
                        help="the dataset's davis_valid folder (ImageSets/2017/val.txt, Annotations_unsupervised/)")
    parser.add_argument("--labels", default=None,
                        help="where to write the 0/1 label maps and the CSVs (default: <predictions>/../labels)")
    parser.add_argument("--ground_truth", default=None,
                        help=f"the generator's {GROUND_TRUTH_FILE}, for the scores by motion (default: "
                             f"<davis_path>/../meta_expressions/valid/{GROUND_TRUTH_FILE}; skipped if absent)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Convert, score and print; returns ``eval_davis.main``'s global scores (fractions, ``J&F-Mean`` …)."""
    args = parse_args(argv)
    labels = Path(args.labels) if args.labels else Path(args.predictions).parent / "labels"
    sequences = read_sequence_list(args.davis_path, DAVIS_SET)
    binary_masks_to_labels(args.predictions, labels, sequences)
    scores = eval_davis.main(["--davis_path", args.davis_path, "--set", DAVIS_SET, "--task", DAVIS_TASK,
                              "--results_path", str(labels), "--recompute"])
    ground_truth = Path(args.ground_truth or Path(args.davis_path).parent / "meta_expressions" / "valid"
                        / GROUND_TRUTH_FILE)
    if ground_truth.is_file():
        per_object = DavisScores.read_csv(str(labels), DAVIS_SET).per_object
        rows = scores_by_motion(per_object, json.loads(ground_truth.read_text(encoding="utf-8")))
        write_csv_table(str(motion_csv_path(labels)), MOTION_COLUMNS, rows)
        print(f"\n---------- Scores by what resolves the expression ({ground_truth}) ----------")
        print(format_table(MOTION_COLUMNS, rows))
    return scores


if __name__ == "__main__":
    main()
