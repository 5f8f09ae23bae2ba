"""inference_davis.py end to end on a generated miniature split: layout, merging, clips, resume, evaluation."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_davis
import models.predictor
import video_inference
from datasets.meta import read_frame
from models.postprocessors import merge_object_probs, select_best_query
from models.predictor import preprocess_frames
from tests.tiny_inference import (
    ANNOTATOR_WORDS,
    DAVIS_VIDEOS,
    TEST_SHORT_SIDE,
    TINY_MODEL_FLAGS,
    build_random_tiny_model,
    make_davis,
    save_tiny_assets,
)
from util.visualize import davis_palette

# Short clips so that the 5-frame video runs as clips of 2, 2 and 1 frames.
TEST_CLIP_LEN = 2


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(autouse=True)
def small_clips(monkeypatch):
    monkeypatch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)
    monkeypatch.setattr(inference_davis, "DAVIS_CLIP_LEN", TEST_CLIP_LEN)


def argv(assets, data: Path, output: Path, *extra: str) -> list[str]:
    text_dir, checkpoint = assets
    return [
        *TINY_MODEL_FLAGS, "--text_encoder", str(text_dir), "--resume", str(checkpoint),
        "--davis_path", str(data), "--output_dir", str(output), "--expressions_per_batch", "3", *extra,
    ]


def expected_files() -> set[str]:
    return {
        f"anno_{a}/{video}/{t:05d}.png"
        for video, (_, num_frames, _) in DAVIS_VIDEOS.items()
        for a in range(inference_davis.NUM_ANNOTATORS)
        for t in range(num_frames)
    }


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def run(assets, tmp_path_factory):
    base = tmp_path_factory.mktemp("davis")
    data, output = make_davis(base / "data"), base / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)
        patch.setattr(inference_davis, "DAVIS_CLIP_LEN", TEST_CLIP_LEN)
        scores = inference_davis.main(argv(assets, data, output, "--visualize"))
    return data, output, scores


def test_layout_and_palette(run):
    _, output, scores = run
    assert scores is None  # no ground truth in the generated data: evaluation is skipped
    assert set(files_under(output / "valid")) == expected_files()
    palette = davis_palette()
    for relative in expected_files():
        video = relative.split("/")[1]
        (width, height), _, num_objects = DAVIS_VIDEOS[video]
        with Image.open(output / "valid" / relative) as label_map:
            assert label_map.mode == "P" and label_map.size == (width, height)
            assert np.array_equal(np.array(label_map.getpalette()).reshape(-1, 3)[:256], palette)
            assert np.asarray(label_map).max() <= num_objects


def original_label_maps(data: Path, video: str, annotator: int) -> np.ndarray:
    """The original's algorithm, written out: per object and 36-frame clip one full forward, query chosen
    per clip, probabilities upsampled for the whole video, then stacked and merged."""
    model = build_random_tiny_model(seed=0)
    meta_frames = sorted((data / "valid" / "JPEGImages" / video).glob("*.jpg"))
    captions = [
        f"object {k} of the {video} described by the {ANNOTATOR_WORDS[annotator]}"
        for k in range(DAVIS_VIDEOS[video][2])
    ]
    objects = []
    for caption in captions:
        probs = []
        for start in range(0, len(meta_frames), TEST_CLIP_LEN):
            frames = [read_frame(p) for p in meta_frames[start : start + TEST_CLIP_LEN]]
            width, height = frames[0].size
            clip = preprocess_frames(frames, TEST_SHORT_SIDE)
            with torch.no_grad():
                out = model([clip], [caption], [{"size": torch.tensor(clip.shape[-2:])}])
            query, _ = select_best_query(out["pred_logits"][0])
            logits = out["pred_masks"][0][:, query][None]  # [1, t, h, w]
            upsampled = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs.append(upsampled[0].sigmoid())
        objects.append(torch.cat(probs))
    return merge_object_probs(torch.stack(objects)).numpy()


@pytest.mark.parametrize("annotator", [0, 3])
def test_label_maps_equal_the_original_algorithm(run, annotator):
    data, output, _ = run
    video = "bear"  # 2 objects, 5 frames = clips of 2, 2, 1
    expected = original_label_maps(data, video, annotator)
    written = np.stack([
        np.asarray(Image.open(output / "valid" / f"anno_{annotator}" / video / f"{t:05d}.png"))
        for t in range(DAVIS_VIDEOS[video][1])
    ])
    assert len(np.unique(expected)) > 1  # some object is found, so the comparison means something
    assert np.array_equal(written, expected)


def test_visualization(run):
    _, output, _ = run
    images = output / "valid_images" / "anno_1" / "bear"
    assert len(list(images.glob("*.png"))) == DAVIS_VIDEOS["bear"][1]
    with Image.open(images.with_suffix(".gif")) as gif:
        assert gif.n_frames == DAVIS_VIDEOS["bear"][1]


def test_palette_comes_from_blackswan_when_present(assets, tmp_path):
    data = make_davis(tmp_path / "data")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1] = (10, 20, 30)
    source = data / "valid" / "Annotations" / "blackswan" / "00000.png"
    source.parent.mkdir(parents=True)
    image = Image.fromarray(np.zeros((4, 4), dtype=np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    image.save(source)
    inference_davis.main(argv(assets, data, tmp_path / "out"))
    with Image.open(tmp_path / "out" / "valid" / "anno_0" / "car" / "00000.png") as label_map:
        assert tuple(label_map.getpalette()[3:6]) == (10, 20, 30)


class Interrupted(Exception):
    pass


def test_interrupted_run_completes_on_rerun(assets, run, tmp_path, monkeypatch):
    data, reference_output, _ = run
    output = tmp_path / "out"
    write_clip = video_inference.VideoInferenceRunner._write_clip
    calls = []

    def die_on_third_clip(self, *args):
        calls.append(1)
        if len(calls) == 3:  # mid-way through the first video's annotators
            raise Interrupted
        write_clip(self, *args)

    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_write_clip", die_on_third_clip)
    with pytest.raises(Interrupted):
        inference_davis.main(argv(assets, data, output))
    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_write_clip", write_clip)
    inference_davis.main(argv(assets, data, output))
    assert files_under(output / "valid") == files_under(reference_output / "valid")
    assert not (output / "valid" / video_inference.PARTIAL_DIR).exists()


def test_evaluation_of_every_annotator_and_their_mean(assets, run, tmp_path):
    """Ground truth = annotator 0's own predictions: annotator 0 scores J&F 1, the mean is averaged."""
    data, reference_output, _ = run
    davis = data / "DAVIS"
    for video, (_, num_frames, _) in DAVIS_VIDEOS.items():
        gt_dir = davis / "Annotations_unsupervised" / "480p" / video
        gt_dir.mkdir(parents=True)
        for t in range(num_frames):
            label_map = np.asarray(Image.open(reference_output / "valid" / "anno_0" / video / f"{t:05d}.png")).copy()
            if t == 0 and label_map.max() == 0:
                label_map[0, 0] = 1  # the toolkit counts objects on the first frame
            Image.fromarray(label_map, mode="P").save(gt_dir / f"{t:05d}.png")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(DAVIS_VIDEOS) + "\n")
    output = tmp_path / "out"
    shutil.copytree(reference_output / "valid", output / "valid")  # finished: only the evaluation runs
    scores = inference_davis.main(argv(assets, data, output))
    assert scores is not None and 0 <= scores["J&F-Mean"] <= 1
    for a in range(inference_davis.NUM_ANNOTATORS):
        assert (output / "valid" / f"anno_{a}" / "global_results-val.csv").is_file()
    assert (output / "valid" / "global_results_annotators-val.csv").is_file()


def test_expression_count_not_multiple_of_annotators_is_named(assets, tmp_path):
    data = make_davis(tmp_path / "data")
    meta = data / "meta_expressions" / "valid" / "meta_expressions.json"
    text = meta.read_text().replace('"7": {', '"70": {"exp": "extra"}, "7": {')
    meta.write_text(text)
    with pytest.raises(ValueError, match=f"{meta}.*bear.*multiple"):
        inference_davis.main(argv(assets, data, tmp_path / "out"))


def test_resume_auto_uses_the_checkpoint_of_the_output_dir_or_says_there_is_none(assets, tmp_path, monkeypatch):
    data = make_davis(tmp_path / "data")
    output = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=f"--resume auto: no complete checkpoint .* in --output_dir {output}"):
        inference_davis.main(argv(assets, data, output, "--resume", "auto"))
    output.mkdir()
    shutil.copy(assets[1], output / "checkpoint.pth")
    loaded = []
    load_predictor = video_inference.load_predictor
    monkeypatch.setattr(video_inference, "load_predictor",
                        lambda args, path, *rest: (loaded.append(path), load_predictor(args, path, *rest))[1])
    inference_davis.main(argv(assets, data, output, "--resume", "auto"))
    assert loaded == [output / "checkpoint.pth"] and set(files_under(output / "valid")) == expected_files()

