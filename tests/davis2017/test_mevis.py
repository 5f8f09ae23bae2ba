"""The MeViS offline metric (davis2017/mevis.py, eval_mevis.py): hand-derived cases, agreement with a
straightforward implementation written from the definitions, the official script's conventions
(missing video, any non-zero pixel, file order), the command line, and bad input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_mevis
from datasets.meta import DatasetFormatError
from davis2017.mevis import evaluate_mevis
from tests.datasets.synthetic_mevis import encode, edit_json, write_mevis
from tests.davis2017.brute_force import brute_f_measure, brute_jaccard

# Agreement with the straightforward implementation: both average the same per-frame numbers in
# float64, so they differ by rounding only.
TOLERANCE = 1e-6

# Hand-made split: frames 20 high, 30 wide (matching radius ceil(0.008 * 36.06) = 1 pixel).
H, W = 20, 30


def square(top: int, left: int, side: int = 4) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


EMPTY = np.zeros((H, W), dtype=bool)
LEFT, RIGHT = square(5, 3), square(5, 20)  # equal squares, far apart (no boundary pixel within the radius)


def write_split(root: Path, objects: dict[str, list[np.ndarray | None]], videos: dict) -> tuple[Path, Path]:
    """``meta_expressions.json`` and ``mask_dict.json`` of a hand-made split.

    ``objects``: anno_id → mask per frame (None: absent); ``videos``: video → (frames, {exp_id: anno_ids}).
    """
    root.mkdir(parents=True, exist_ok=True)
    mask_dict = {anno_id: [None if m is None else encode(m) for m in masks] for anno_id, masks in objects.items()}
    meta = {"videos": {video: {"frames": frames, "expressions": {
        exp_id: {"exp": f"expression {exp_id}", "obj_id": list(range(len(anno_ids))), "anno_id": anno_ids}
        for exp_id, anno_ids in expressions.items()}} for video, (frames, expressions) in videos.items()}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    return root / "meta_expressions.json", root / "mask_dict.json"


def write_prediction(folder: Path, frame: str, mask: np.ndarray, value: int = 255) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * value, mode="L").save(folder / f"{frame}.png")


@pytest.fixture()
def hand_made(tmp_path):
    """Video "cats" (2 frames): object 0 = LEFT in both frames, object 1 = RIGHT then absent.
    Video "dogs" (1 frame): object 2 absent. Video "birds" has no predictions."""
    files = write_split(tmp_path / "valid_u", {"0": [LEFT, LEFT], "1": [RIGHT, None], "2": [None], "3": [LEFT]}, {
        "cats": (["00000", "00001"], {"0": [0, 1], "1": [0]}),
        "dogs": (["00000"], {"0": [2], "1": [2]}),
        "birds": (["00000"], {"0": [3]}),
    })
    pred = tmp_path / "pred"
    for frame in ("00000", "00001"):
        write_prediction(pred / "cats" / "0", frame, LEFT, value=1)  # value 1: foreground too
        write_prediction(pred / "cats" / "1", frame, LEFT | RIGHT)
    write_prediction(pred / "dogs" / "0", "00000", EMPTY)
    write_prediction(pred / "dogs" / "1", "00000", square(8, 10))
    return files, pred


def test_hand_derived_scores(hand_made):
    (expressions, masks), pred = hand_made
    scores = evaluate_mevis(expressions, masks, pred)
    # cats/0: union LEFT+RIGHT vs LEFT: J 1/2; precision 1, recall 1/2 (equal squares have equal
    # boundaries), F 2/3; frame 2, ground truth LEFT: J = F = 1.
    # cats/1: ground truth LEFT, prediction LEFT+RIGHT: J 1/2, F 2/3 in both frames.
    # dogs/0: both empty: J = F = 1. dogs/1: empty ground truth, something predicted: J = 0, F = 0.
    # birds: no folder: 0, 0 (listed in file order all the same).
    expected = {"cats_0": (0.75, (2 / 3 + 1) / 2), "cats_1": (0.5, 2 / 3), "dogs_0": (1.0, 1.0), "dogs_1": (0.0, 0.0),
                "birds_0": (0.0, 0.0)}
    assert list(scores.per_expression) == list(expected)
    for key, (j, f) in expected.items():
        assert scores.per_expression[key] == pytest.approx((j, f), abs=1e-12), key
    assert scores.missing_videos == ["birds"]
    assert scores.j == pytest.approx((0.75 + 0.5 + 1 + 0 + 0) / 5, abs=1e-12)
    assert scores.f == pytest.approx(((2 / 3 + 1) / 2 + 2 / 3 + 1 + 0 + 0) / 5, abs=1e-12)
    assert scores.j_and_f == pytest.approx((scores.j + scores.f) / 2)


def test_command_line_writes_json_and_prints_the_means(hand_made, tmp_path, caplog):
    (expressions, masks), pred = hand_made
    official = tmp_path / "official.json"
    with caplog.at_level(logging.INFO):
        result = eval_mevis.main(["--mevis_exp_path", str(expressions), "--mevis_mask_path", str(masks),
                                  "--mevis_pred_path", str(pred), "--save_name", str(official), "--num_workers", "1"])
    saved = json.loads(official.read_text())
    assert list(saved) == ["cats_0", "cats_1", "dogs_0", "dogs_1", "birds_0"]
    assert saved["cats_1"] == pytest.approx([0.5, 2 / 3])
    assert result["J"] == pytest.approx(np.mean([v[0] for v in saved.values()]))
    assert result["J&F"] == pytest.approx((result["J"] + result["F"]) / 2)
    lines = caplog.messages
    assert f"J: {result['J']}" in lines and f"F: {result['F']}" in lines and f"J&F: {result['J&F']}" in lines
    # the short form, from the dataset root and split; the default output sits beside the predictions
    short = eval_mevis.main(["--mevis_path", str(tmp_path), "--split", "valid_u", "--pred_path", str(pred),
                             "--num_workers", "2"])
    assert short == result
    assert json.loads((tmp_path / "pred_results.json").read_text()) == saved


def _perturbed(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 prediction: the truth shifted by a pixel or two, with some noise, foreground values 1..255."""
    shifted = np.roll(truth, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    noisy = shifted ^ (rng.random(truth.shape) < 0.03)
    return (noisy * rng.integers(1, 256, truth.shape)).astype(np.uint8)


def test_equals_a_straightforward_implementation_on_every_expression(tmp_path):
    data = write_mevis(tmp_path / "mevis", splits=("valid_u",))
    rng = np.random.default_rng(7)
    pred = tmp_path / "pred"
    expected = {}
    for video, expressions in data.expressions["valid_u"].items():
        frames = data.frames("valid_u", video)
        for exp_id in expressions:
            truth = data.target("valid_u", video, exp_id)  # [T, H, W]
            j_values, f_values = [], []
            for t, frame in enumerate(frames):
                prediction = _perturbed(truth[t], rng) if exp_id != "0" or t else np.zeros_like(truth[t], np.uint8)
                folder = pred / video / exp_id
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(prediction, mode="L").save(folder / f"{frame}.png")
                with Image.open(folder / f"{frame}.png") as png:  # read back independently of OpenCV
                    foreground = np.asarray(png) != 0
                j_values.append(brute_jaccard(foreground, truth[t]))
                f_values.append(brute_f_measure(foreground, truth[t]))
            expected[f"{video}_{exp_id}"] = (sum(j_values) / len(j_values), sum(f_values) / len(f_values))
    scores = evaluate_mevis(data.root / "valid_u" / "meta_expressions.json", data.root / "valid_u" / "mask_dict.json",
                            pred, num_workers=2, progress=False)
    assert list(scores.per_expression) == list(expected)
    for key, (j, f) in expected.items():
        assert abs(scores.per_expression[key][0] - j) < TOLERANCE and abs(scores.per_expression[key][1] - f) < TOLERANCE
    assert 0 < scores.j < 1 and 0 < scores.f < 1  # neither trivial nor perfect


# ----------------------------------------------------------------------------- bad input
def test_missing_prediction_root(hand_made, tmp_path):
    (expressions, masks), _ = hand_made
    with pytest.raises(FileNotFoundError, match=f"prediction folder {tmp_path / 'nowhere'} does not exist"):
        evaluate_mevis(expressions, masks, tmp_path / "nowhere")


def test_missing_expression_folder_or_frame_inside_a_video_folder(hand_made):
    (expressions, masks), pred = hand_made
    (pred / "cats" / "1" / "00001.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"prediction {pred / 'cats' / '1' / '00001.png'} does not exist"):
        evaluate_mevis(expressions, masks, pred)
    for png in (pred / "cats" / "1").iterdir():
        png.unlink()
    (pred / "cats" / "1").rmdir()
    with pytest.raises(FileNotFoundError, match=f"{pred / 'cats' / '1'} does not exist: the folder of video cats has "
                                                "no predictions for its expression 1"):
        evaluate_mevis(expressions, masks, pred, num_workers=2)


def test_png_of_the_wrong_size(hand_made):
    (expressions, masks), pred = hand_made
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(pred / "cats" / "0" / "00001.png")
    with pytest.raises(ValueError, match=f"prediction {pred / 'cats' / '0' / '00001.png'} is 31x20 .* video cats "
                                         "are 30x20"):
        evaluate_mevis(expressions, masks, pred)


def test_unreadable_png(hand_made):
    (expressions, masks), pred = hand_made
    (pred / "dogs" / "0" / "00000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="00000.png cannot be read"):
        evaluate_mevis(expressions, masks, pred)


def test_mask_list_whose_length_is_not_the_frame_count(hand_made):
    (expressions, masks), pred = hand_made
    edit_json(masks, lambda d: d["0"].append(None))
    with pytest.raises(DatasetFormatError, match=f"video cats, expression 0: anno_id 0 has 3 masks in {masks} but the "
                                                 f"video has 2 frames in {expressions}"):
        evaluate_mevis(expressions, masks, pred)


def test_anno_id_missing_from_the_masks_and_expression_without_anno_id(hand_made):
    (expressions, masks), pred = hand_made
    edit_json(masks, lambda d: d.pop("2"))
    edit_json(expressions, lambda d: d["videos"]["birds"]["expressions"]["0"].pop("anno_id"))
    with pytest.raises(DatasetFormatError, match="3 expressions without usable ground truth") as error:
        evaluate_mevis(expressions, masks, pred)
    assert "video dogs, expression 1: anno_id 2 is not in" in str(error.value)
    assert "video birds, expression 0: no 'anno_id'" in str(error.value)


def test_video_without_frames(hand_made):
    (expressions, masks), pred = hand_made
    edit_json(expressions, lambda d: d["videos"]["dogs"].update(frames=[]))
    with pytest.raises(DatasetFormatError, match="2 expressions without usable ground truth:\n  video dogs, "
                                                 "expression 0: the video lists no frames"):
        evaluate_mevis(expressions, masks, pred)


def test_ground_truth_mask_of_another_size(hand_made):
    (expressions, masks), pred = hand_made
    edit_json(masks, lambda d: d["1"].__setitem__(0, encode(np.ones((H, W + 2), bool))))
    with pytest.raises(ValueError, match=f"{masks}: video cats, frame 00000: mask is 20x32 but the frame is 20x30"):
        evaluate_mevis(expressions, masks, pred)


def test_split_without_masks_is_explained(tmp_path):
    data = write_mevis(tmp_path / "mevis", splits=("valid",))
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match="mask_dict.json does not exist: .*challenge server"):
        eval_mevis.main(["--mevis_path", str(data.root), "--split", "valid", "--pred_path", str(tmp_path / "pred")])
