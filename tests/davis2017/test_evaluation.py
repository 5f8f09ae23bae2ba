"""Per-sequence scoring of the two DAVIS tasks: object ids, padding, void, assignment, statistics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from davis2017.evaluation import MAX_PROPOSALS, DavisEvaluator, SequenceGroundTruth, score_sequence

from .brute_force import brute_f_measure, brute_jaccard, random_blobs

SHAPE = (16, 20)  # boundary radius 1


def make_gt(label_maps: np.ndarray, name: str = "seq") -> SequenceGroundTruth:
    return SequenceGroundTruth.from_label_maps(name, [f"{t:05d}" for t in range(len(label_maps))], label_maps)


def two_object_sequence(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """uint8 [T, H, W] with objects 1 and 2 (2 drawn over 1) and a void blob."""
    labels = np.zeros((num_frames, *SHAPE), dtype=np.uint8)
    for t in range(num_frames):
        labels[t][random_blobs(rng, SHAPE, 2)] = 1
        labels[t][random_blobs(rng, SHAPE, 1)] = 2
        labels[t][random_blobs(rng, SHAPE, 1) & (rng.random(SHAPE) < 0.3)] = 255
        labels[t, 1:3, 1:3], labels[t, -3:-1, -3:-1] = 1, 2  # both objects present in every frame
    return labels


def test_semi_supervised_same_ids_inner_frames_void_as_background():
    rng = np.random.default_rng(0)
    labels = two_object_sequence(rng, 4)
    gt = make_gt(labels)
    pred = np.zeros((2, *SHAPE), dtype=np.uint8)  # frames 1 and 2 only
    for i, t in enumerate((1, 2)):
        pred[i][labels[t] == 2] = 1  # swapped ids: no assignment in this task
        pred[i][labels[t] == 1] = 2
        pred[i][labels[t] == 255] = 1  # void counts as background in the semi-supervised task
    j, f = score_sequence(gt, pred, "semi-supervised")
    assert j.shape == f.shape == (2, 2)
    clean = np.where(labels == 255, 0, labels)
    for k in (1, 2):
        for i, t in enumerate((1, 2)):
            assert j[k - 1, i] == pytest.approx(brute_jaccard(pred[i] == k, clean[t] == k), abs=1e-12)
            assert f[k - 1, i] == pytest.approx(brute_f_measure(pred[i] == k, clean[t] == k), abs=1e-12)


def test_semi_supervised_rejects_extra_object():
    gt = make_gt(np.ones((3, *SHAPE), dtype=np.uint8))
    pred = np.full((1, *SHAPE), 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="higher than the number of objects"):
        score_sequence(gt, pred, "semi-supervised", source="predictions in results/seq")


def test_unsupervised_assignment_maximises_mean_j_and_f():
    rng = np.random.default_rng(3)
    labels = two_object_sequence(rng, 3)
    gt = make_gt(labels)
    clean = np.where(labels == 255, 0, labels)
    # Prediction 3 is a noisy GT object 1, prediction 1 a noisy GT object 2, 2 and 4 random.
    pred = np.zeros((3, *SHAPE), dtype=np.uint8)
    for t in range(3):
        noise = rng.random(SHAPE) < 0.1
        pred[t][random_blobs(rng, SHAPE, 1)] = 2
        pred[t][random_blobs(rng, SHAPE, 1)] = 4
        pred[t][(clean[t] == 1) ^ noise] = 3
        pred[t][(clean[t] == 2) ^ (noise & (rng.random(SHAPE) < 0.5))] = 1
    num_pred = int(pred.max())

    j_all = np.zeros((num_pred, 2, 3))
    f_all = np.zeros((num_pred, 2, 3))
    for p, g, t in itertools.product(range(num_pred), range(2), range(3)):
        j_all[p, g, t] = brute_jaccard(pred[t] == p + 1, clean[t] == g + 1, labels[t] == 255)
        f_all[p, g, t] = brute_f_measure(pred[t] == p + 1, clean[t] == g + 1, labels[t] == 255)
    pair_score = (j_all.mean(2) + f_all.mean(2)) / 2
    best = max(
        itertools.permutations(range(num_pred), 2),  # best[g] = prediction assigned to GT object g
        key=lambda chosen: sum(pair_score[p, g] for g, p in enumerate(chosen)),
    )
    assert set(best) == {2, 0}  # the construction above, not a trivial identity
    # Rows come in increasing predicted id: prediction 1 (→ GT 2), then prediction 3 (→ GT 1).
    pairs = sorted((p, g) for g, p in enumerate(best))

    j, f = score_sequence(gt, pred, "unsupervised")
    for row, (p, g) in enumerate(pairs):
        np.testing.assert_allclose(j[row], j_all[p, g], atol=1e-12)
        np.testing.assert_allclose(f[row], f_all[p, g], atol=1e-12)


def test_unsupervised_rejects_too_many_proposals():
    gt = make_gt(np.ones((2, *SHAPE), dtype=np.uint8))
    pred = np.zeros((2, *SHAPE), dtype=np.uint8)
    pred[1, 0, 0] = MAX_PROPOSALS + 1
    with pytest.raises(ValueError, match=r"maximum number \(20\) of proposals"):
        score_sequence(gt, pred, "unsupervised")
    pred[1, 0, 0] = MAX_PROPOSALS
    score_sequence(gt, pred, "unsupervised")


@pytest.mark.parametrize("task", ["unsupervised", "semi-supervised"])
def test_missing_object_is_an_empty_mask(task):
    labels = np.zeros((4, *SHAPE), dtype=np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[:, 8:12, 10:15] = 2
    labels[2, 8:12, 10:15] = 0  # object 2 absent in frame 2
    gt = make_gt(labels)
    frames = range(4) if task == "unsupervised" else range(1, 3)
    pred = np.where(labels == 1, 1, 0).astype(np.uint8)[list(frames)]  # object 2 never predicted
    j, f = score_sequence(gt, pred, task)
    np.testing.assert_array_equal(j[0], 1.0)
    np.testing.assert_array_equal(f[0], 1.0)
    # Padded empty prediction: 0 where object 2 is present, 1 where both are empty.
    expected = [0.0 if t != 2 else 1.0 for t in frames]
    np.testing.assert_array_equal(j[1], expected)
    np.testing.assert_array_equal(f[1], expected)


def test_objects_counted_from_first_frame():
    labels = np.zeros((3, *SHAPE), dtype=np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[1:, 8:12, 10:15] = 3  # appears after the first frame: not an object
    gt = make_gt(labels)
    assert gt.num_objects == 1
    pred = np.where(labels == 1, 1, 0).astype(np.uint8)
    j, f = score_sequence(gt, pred, "unsupervised")
    assert j.shape == (1, 3)
    np.testing.assert_array_equal(j, 1.0)
    np.testing.assert_array_equal(f, 1.0)


def test_void_is_not_an_object_and_not_counted():
    labels = np.zeros((2, *SHAPE), dtype=np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[:, 2:6, 6:9] = 255  # void next to the object
    gt = make_gt(labels)
    assert gt.num_objects == 1
    pred = np.zeros_like(labels)
    pred[:, 2:6, 2:9] = 1  # object plus the void band
    j, f = score_sequence(gt, pred, "unsupervised")
    np.testing.assert_array_equal(j, 1.0)
    np.testing.assert_array_equal(f, 1.0)


def test_evaluator_averages_objects_of_all_sequences():
    evaluator = DavisEvaluator("unsupervised")
    labels = np.zeros((3, *SHAPE), dtype=np.uint8)
    labels[:, 2:6, 2:6] = 1
    labels[:, 8:12, 10:15] = 2
    evaluator.process(make_gt(labels, "a"), labels.copy())  # both objects perfect
    pred = labels.copy()
    pred[pred == 2] = 0
    pred[1] = 0  # object 1 lost in the middle frame, object 2 never found
    evaluator.process(make_gt(labels, "b"), pred)
    scores = evaluator.evaluate()
    # Per-object J = F: a_1 [1,1,1], a_2 [1,1,1], b_1 [1,0,1], b_2 [0,0,0].
    # Mean 1, 1, 2/3, 0; Recall the same; Decay (bins v[0:2] and v[2:3]) 0, 0, -1/2, 0.
    assert [row[0] for row in scores.per_object] == ["a_1", "a_2", "b_1", "b_2"]
    np.testing.assert_allclose([row[1] for row in scores.per_object], [1, 1, 2 / 3, 0], atol=1e-12)
    for measure in ("J", "F"):
        assert scores.global_scores[f"{measure}-Mean"] == pytest.approx((2 + 2 / 3) / 4, abs=1e-12)
        assert scores.global_scores[f"{measure}-Recall"] == pytest.approx((2 + 2 / 3) / 4, abs=1e-12)
        assert scores.global_scores[f"{measure}-Decay"] == pytest.approx(-0.5 / 4, abs=1e-12)
    assert scores.global_scores["J&F-Mean"] == pytest.approx((2 + 2 / 3) / 4, abs=1e-12)
    evaluator.reset()
    assert evaluator.evaluate().per_object == []
