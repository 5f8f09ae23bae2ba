"""tools/eval_ref_shapes.py: 0/255 masks in the Ref-YouTube-VOS layout scored against the generated DAVIS
ground truth."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datasets.meta import read_annotation, read_meta_expressions
from tools.data.make_ref_shapes import DAVIS_DIR, GROUND_TRUTH_FILE
from tools.data.make_ref_shapes import main as make_ref_shapes
from tools.eval_ref_shapes import MOTION_GROUPS, scores_by_motion
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
    motion_table = (tmp_path / "right" / "labels" / "motion_results-val.csv").read_text().splitlines()
    assert motion_table[0] == "Expressions,Count,J&F-Mean,J-Mean,F-Mean"
    ground_truth = read_meta_expressions(dataset / "meta_expressions" / "valid" / GROUND_TRUTH_FILE)
    expressions = sum(len(entry.expressions) for entry in ground_truth.values())
    assert sum(int(row.split(",")[1]) for row in motion_table[1:]) == expressions  # every expression, once
    assert all(float(row.split(",")[2]) == pytest.approx(1.0) for row in motion_table[1:])
    write_predictions(dataset, tmp_path / "wrong" / "Annotations", referred=False)
    scores = eval_ref_shapes(["--predictions", str(tmp_path / "wrong" / "Annotations"),
                              "--davis_path", str(dataset / DAVIS_DIR), "--labels", str(tmp_path / "labels")])
    assert scores["J-Mean"] < 0.1  # only frames where the referred object is hidden count as right
    assert (tmp_path / "labels" / "global_results-val.csv").is_file()


def test_missing_predictions_are_named(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="run inference_ytvos.py"):
        eval_ref_shapes(["--predictions", str(tmp_path / "none"), "--davis_path", str(dataset / DAVIS_DIR)])


def test_scores_by_motion_average_each_group():
    ground_truth = {"videos": {
        "valid_0000": {"expressions": {"0": {"needs_motion": False}, "1": {"needs_motion": True}}},
        "valid_0001": {"expressions": {"0": {"needs_motion": False}}},
    }}
    per_object = [("valid_0000/0_1", 0.8, 0.6), ("valid_0000/1_1", 0.1, 0.3), ("valid_0001/0_1", 0.4, 1.0)]
    rows = scores_by_motion(per_object, ground_truth)
    assert [row[:2] for row in rows] == [[MOTION_GROUPS[False], 2], [MOTION_GROUPS[True], 1]]
    np.testing.assert_allclose(rows[0][2:], [0.7, 0.6, 0.8])  # J (0.8+0.4)/2, F (0.6+1.0)/2, J&F their mean
    np.testing.assert_allclose(rows[1][2:], [0.2, 0.1, 0.3])
    del ground_truth["videos"]["valid_0001"]["expressions"]["0"]["needs_motion"]
    with pytest.raises(KeyError, match="valid_0001/0_1"):
        scores_by_motion(per_object, ground_truth)
