"""inference_mevis.py end to end on a generated miniature MeViS: layout, scores on valid_u, the MeViS
submission zip for valid, resume, bad input."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_mevis
import inference_mevis
import models.predictor
import video_inference
from tests.datasets.synthetic_mevis import VIDEOS, write_mevis
from tests.tiny_inference import TEST_SHORT_SIDE, TINY_MODEL_FLAGS, save_tiny_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(autouse=True)
def small_frames(monkeypatch):
    monkeypatch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mevis(tmp_path_factory.mktemp("mevis") / "mevis", splits=("valid_u", "valid"))


def argv(assets, root: Path, output: Path, split: str, *extra: str) -> list[str]:
    text_dir, checkpoint = assets
    return [*TINY_MODEL_FLAGS, "--text_encoder", str(text_dir), "--resume", str(checkpoint), "--mevis_path", str(root),
            "--output_dir", str(output), "--split", split, "--expressions_per_batch", "2", *extra]


def expected_files(data, split: str) -> set[str]:
    return {f"{video}/{exp_id}/{frame}.png"
            for video, expressions in data.expressions[split].items()
            for exp_id in expressions for frame in data.frames(split, video)}


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def valid_u_run(assets, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)
        result = inference_mevis.main(argv(assets, data.root, output, "valid_u"))
    return output, result


def test_valid_u_masks_and_scores(data, valid_u_run):
    output, result = valid_u_run
    assert result.predictions == output / "valid_u" and result.zip_path is None
    assert set(files_under(output / "valid_u")) == expected_files(data, "valid_u")
    for relative in expected_files(data, "valid_u"):
        width, height = VIDEOS["valid_u"][relative.split("/")[0]][:2]
        with Image.open(output / "valid_u" / relative) as mask:
            assert mask.mode == "L" and mask.size == (width, height)  # the original frame size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    # the scores are eval_mevis.py's on the written masks
    again = eval_mevis.main(["--mevis_path", str(data.root), "--split", "valid_u", "--pred_path",
                             str(output / "valid_u"), "--save_name", str(output / "again.json"), "--num_workers", "1"])
    assert result.scores == again and 0 <= again["J&F"] <= 1
    assert (output / "valid_u_results.json").read_text() == (output / "again.json").read_text()
    assert not (output / "submission-valid_u.zip").exists()


def test_valid_writes_the_mevis_submission_zip(assets, data, tmp_path):
    result = inference_mevis.main(argv(assets, data.root, tmp_path, "valid"))
    assert result.scores is None and result.zip_path == tmp_path / "submission-valid.zip"
    with zipfile.ZipFile(result.zip_path) as archive:
        names = archive.namelist()
        # the root holds <video>/<exp_id>/<frame>.png directly: no Annotations/ folder
        assert set(names) == expected_files(data, "valid") and len(names) == len(set(names))
        for name in names:
            assert archive.read(name) == (tmp_path / "valid" / name).read_bytes()


def test_rerun_skips_finished_expressions(assets, data, valid_u_run, monkeypatch):
    output, _ = valid_u_run
    before = {p: p.stat().st_mtime_ns for p in (output / "valid_u").rglob("*.png")}
    calls = []
    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_write_clip", lambda *a, **k: calls.append(a))
    inference_mevis.main(argv(assets, data.root, output, "valid_u"))
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in (output / "valid_u").rglob("*.png")} == before


def test_jobs_group_each_expression_by_video(data):
    jobs = inference_mevis.mevis_jobs(data.root, "valid_u")
    assert [job.video for job in jobs] == sorted(VIDEOS["valid_u"])
    run = next(job for job in jobs if job.video == "run")
    assert [group.folder for group in run.groups] == ["run/0", "run/1", "run/2"]
    assert run.captions == tuple(text for text, _ in data.expressions["valid_u"]["run"].values())
    assert run.output_names == tuple(data.frames("valid_u", "run"))


# ----------------------------------------------------------------------------- bad input
def test_split_without_frames_for_mevis(assets, data, tmp_path):
    with pytest.raises(ValueError, match="MeViS has no 'test' split"):
        inference_mevis.main(argv(assets, data.root, tmp_path, "test"))


def test_missing_frame_names_the_file(assets, tmp_path):
    data = write_mevis(tmp_path / "mevis", splits=("valid",))
    missing = data.root / "valid" / "JPEGImages" / "dive" / "00001.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inference_mevis.main(argv(assets, data.root, tmp_path / "out", "valid"))


def test_missing_expression_file_is_named(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "valid" / "meta_expressions.json")):
        inference_mevis.main(argv(assets, tmp_path, tmp_path / "out", "valid"))
