"""tools/eval_ref_shapes.py: 0/255 masks in the Ref-YouTube-VOS layout scored against the generated DAVIS
ground truth."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets.meta import read_annotation, read_meta_expressions
from tools.data.make_ref_shapes import DAVIS_DIR, GROUND_TRUTH_FILE
from tools.data.make_ref_shapes import main as make_ref_shapes
from tools.eval_ref_shapes import main as eval_ref_shapes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref_shapes")
    make_ref_shapes(["--output", str(root), "--num_train_videos", "1", "--num_valid_videos", "2", "--frames", "3",
                     "--height", "48", "--width", "48"])
    return root


def write_predictions(dataset, output, referred: bool) -> None:
    """0/255 masks of every valid expression: the referred object (``referred``) or another one."""
    for video, entry in read_meta_expressions(dataset / "meta_expressions" / "valid" / GROUND_TRUTH_FILE).items():
        for expression in entry.expressions:
            folder = output / video / expression.exp_id
            folder.mkdir(parents=True)
            for frame in entry.frames:
                labels = read_annotation(dataset / "valid" / "Annotations" / video / f"{frame}.png")
                obj_id = int(expression.obj_id)
                mask = labels == obj_id if referred else (labels > 0) & (labels != obj_id)
                Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / f"{frame}.png")


def test_perfect_masks_score_one_and_wrong_objects_zero(dataset, tmp_path):
    write_predictions(dataset, tmp_path / "right" / "Annotations", referred=True)
    scores = eval_ref_shapes(["--predictions", str(tmp_path / "right" / "Annotations"),
                              "--davis_path", str(dataset / DAVIS_DIR)])
    assert scores["J&F-Mean"] == pytest.approx(1.0)
    assert (tmp_path / "right" / "labels" / "global_results-val.csv").is_file()
    write_predictions(dataset, tmp_path / "wrong" / "Annotations", referred=False)
    scores = eval_ref_shapes(["--predictions", str(tmp_path / "wrong" / "Annotations"),
                              "--davis_path", str(dataset / DAVIS_DIR), "--labels", str(tmp_path / "labels")])
    assert scores["J-Mean"] < 0.1  # only frames where the referred object is hidden count as right
    assert (tmp_path / "labels" / "global_results-val.csv").is_file()


def test_missing_predictions_are_named(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="run inference_ytvos.py"):
        eval_ref_shapes(["--predictions", str(tmp_path / "none"), "--davis_path", str(dataset / DAVIS_DIR)])
