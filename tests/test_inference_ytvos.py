"""inference_ytvos.py end to end on a generated miniature split: layout, zip, resume, bad input."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference_ytvos
import models.predictor
import video_inference
from tests.tiny_inference import (
    TEST_SHORT_SIDE,
    TINY_MODEL_FLAGS,
    YTVOS_TEST_VIDEOS,
    YTVOS_VIDEOS,
    make_ytvos,
    save_tiny_assets,
    write_frame,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(autouse=True)
def small_frames(monkeypatch):
    monkeypatch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)


def argv(assets, data: Path, output: Path, *extra: str) -> list[str]:
    text_dir, checkpoint = assets
    return [
        *TINY_MODEL_FLAGS, "--text_encoder", str(text_dir), "--resume", str(checkpoint),
        "--ytvos_path", str(data), "--output_dir", str(output), "--expressions_per_batch", "2", *extra,
    ]


def expected_files() -> set[str]:
    return {
        f"Annotations/{video}/{exp_id}/{frame}.png"
        for video, spec in YTVOS_VIDEOS.items() if video not in YTVOS_TEST_VIDEOS
        for exp_id in map(str, range(len(spec["expressions"])))
        for frame in spec["frames"]
    }


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory):
    """One complete run (with --visualize): the data root and output directory."""
    base = tmp_path_factory.mktemp("ytvos")
    data, output = make_ytvos(base / "data"), base / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", TEST_SHORT_SIDE)
        zip_path = inference_ytvos.main(argv(assets, data, output, "--visualize"))
    return data, output, zip_path


def test_layout_masks_and_zip(uninterrupted):
    data, output, zip_path = uninterrupted
    assert set(files_under(output / "valid")) == expected_files()
    for relative in expected_files():
        video = relative.split("/")[1]
        with Image.open(output / "valid" / relative) as mask:
            assert mask.mode == "L"
            assert mask.size == YTVOS_VIDEOS[video]["size"]  # original frame size, not the resized one
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert zip_path == output / "submission-valid.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert set(archive.namelist()) == expected_files()
        for name in archive.namelist():
            assert archive.read(name) == (output / "valid" / name).read_bytes()
    assert not (output / "valid" / video_inference.PARTIAL_DIR).exists()
    assert (output / video_inference.LOG_FILE).is_file()


def test_some_masks_are_neither_empty_nor_full(uninterrupted):
    _, output, _ = uninterrupted
    fractions = [np.asarray(Image.open(p)).mean() / 255 for p in (output / "valid").rglob("*.png")]
    assert any(0 < f < 1 for f in fractions)


def test_visualization_images_and_gifs(uninterrupted):
    _, output, _ = uninterrupted
    images = output / "valid_images"
    spec = YTVOS_VIDEOS["vid_a"]
    for index in range(len(spec["expressions"])):
        for frame in spec["frames"]:
            with Image.open(images / "vid_a" / str(index) / f"{frame}.png") as image:
                assert image.size == spec["size"] and image.mode == "RGB"
        with Image.open(images / "vid_a" / f"{index}.gif") as gif:
            assert gif.n_frames == len(spec["frames"])


def test_rerun_skips_finished_expressions(assets, uninterrupted, monkeypatch):
    data, output, _ = uninterrupted
    before = {p: p.stat().st_mtime_ns for p in (output / "valid").rglob("*.png")}
    calls = []
    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_write_clip", lambda *a, **k: calls.append(a))
    inference_ytvos.main(argv(assets, data, output))
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in (output / "valid").rglob("*.png")} == before


class Interrupted(Exception):
    pass


def test_interrupted_run_completes_on_rerun(assets, uninterrupted, tmp_path, monkeypatch):
    """Stop after the first finished expression while the second is written but not yet moved into
    place, as a kill would; the rerun redoes only what is unfinished and matches an uninterrupted run."""
    data, reference_output, _ = uninterrupted
    output = tmp_path / "out"
    finish = video_inference.VideoInferenceRunner._finish
    finished = []

    def finish_then_die(self, job, group):
        if len(finished) == 1:
            raise Interrupted
        finish(self, job, group)
        finished.append(group.folder)

    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_finish", finish_then_die)
    with pytest.raises(Interrupted):
        inference_ytvos.main(argv(assets, data, output))
    partial = output / "valid" / video_inference.PARTIAL_DIR
    assert any(partial.rglob("*.png"))  # the half-finished expression's frames are there, not in place
    assert len(list((output / "valid" / "Annotations").glob("*/*"))) == 1

    monkeypatch.setattr(video_inference.VideoInferenceRunner, "_finish", finish)
    redone = []
    write_clip = video_inference.VideoInferenceRunner._write_clip
    monkeypatch.setattr(
        video_inference.VideoInferenceRunner, "_write_clip",
        lambda self, job, group, *a: (redone.append(group.folder), write_clip(self, job, group, *a))[1],
    )
    inference_ytvos.main(argv(assets, data, output))
    assert finished[0] not in redone and len(redone) == len(expected_files_groups()) - 1
    assert files_under(output / "valid") == files_under(reference_output / "valid")
    assert not partial.exists()


def expected_files_groups() -> set[str]:
    return {"/".join(f.split("/")[:3]) for f in expected_files()}


@pytest.mark.slow
def test_sigkill_then_rerun(assets, uninterrupted, tmp_path):
    """A real process killed with SIGKILL mid-run; the same command then completes the output."""
    data, reference_output, _ = uninterrupted
    output = tmp_path / "out"
    code = (
        "import sys, models.predictor as p, inference_ytvos; "
        f"p.INFERENCE_SHORT_SIDE = {TEST_SHORT_SIDE}; inference_ytvos.main(sys.argv[1:])"
    )
    command = [sys.executable, "-c", code, *argv(assets, data, output)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    annotations = output / "valid" / "Annotations"
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and len(list(annotations.glob("*/*"))) < 1:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (output / "submission-valid.zip").exists()  # killed before the end
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert files_under(output / "valid") == files_under(reference_output / "valid")


def test_test_videos_are_excluded_from_valid(uninterrupted):
    data, _, _ = uninterrupted
    jobs = inference_ytvos.ytvos_jobs(data, "valid")
    assert [job.video for job in jobs] == ["vid_a", "vid_b"]  # sorted, the test video left out


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def data_copy(tmp_path):
    return make_ytvos(tmp_path / "data")


def test_missing_frame_names_the_file(assets, data_copy, tmp_path):
    missing = data_copy / "valid" / "JPEGImages" / "vid_a" / "00005.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inference_ytvos.main(argv(assets, data_copy, tmp_path / "out"))


def test_frames_of_different_sizes_name_the_file(assets, data_copy, tmp_path):
    odd = data_copy / "valid" / "JPEGImages" / "vid_a" / "00010.jpg"
    write_frame(odd, 30, 30, seed=1)
    with pytest.raises(ValueError, match=f"{odd}.*same size"):
        inference_ytvos.main(argv(assets, data_copy, tmp_path / "out"))


def test_unreadable_frame_names_the_file(assets, data_copy, tmp_path):
    broken = data_copy / "valid" / "JPEGImages" / "vid_b" / "00000.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=str(broken)):
        inference_ytvos.main(argv(assets, data_copy, tmp_path / "out"))


def test_broken_meta_file_is_named(assets, data_copy, tmp_path):
    meta = data_copy / "meta_expressions" / "valid" / "meta_expressions.json"
    meta.write_text("{not json")
    with pytest.raises(ValueError, match=str(meta)):
        inference_ytvos.main(argv(assets, data_copy, tmp_path / "out"))


def test_missing_checkpoint_flag(assets, data_copy, tmp_path):
    flags = argv(assets, data_copy, tmp_path / "out")
    index = flags.index("--resume")
    with pytest.raises(ValueError, match="--resume"):
        inference_ytvos.main(flags[:index] + flags[index + 2 :])


def test_resume_auto_predicts_with_the_newest_checkpoint_of_the_output_dir(assets, uninterrupted, tmp_path):
    """Training's output directory: checkpoint.pth is the newest save; a damaged one is passed over."""
    data, reference_output, _ = uninterrupted
    _, checkpoint = assets
    output = tmp_path / "out"
    output.mkdir()
    shutil.copy(checkpoint, output / "checkpoint0001.pth")
    (output / "checkpoint.pth").write_bytes(b"killed while writing")
    inference_ytvos.main(argv(assets, data, output, "--resume", "auto"))
    assert files_under(output / "valid") == files_under(reference_output / "valid")


def test_resume_auto_without_a_checkpoint_is_named(assets, data_copy, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=f"--resume auto: no complete checkpoint .* in --output_dir {output}"):
        inference_ytvos.main(argv(assets, data_copy, output, "--resume", "auto"))


def test_shard_splits_contiguously_without_loss():
    jobs = list(range(7))
    shards = [video_inference.shard(jobs, rank, 3) for rank in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]
    assert video_inference.shard(jobs[:2], 2, 3) == []


def test_torch_threads_untouched_by_single_process_run(uninterrupted):
    assert torch.get_num_threads() == 1  # the conftest fixture's value; a one-process CPU run keeps it


@pytest.mark.slow
def test_two_processes_write_what_one_writes(assets, tmp_path, monkeypatch):
    """--ngpu 2 on the CPU spawns two processes, each taking one video; the output equals a one-process run.

    Spawned processes do not see the test's smaller frame size, so both runs use the real one (360).
    """
    monkeypatch.setattr(models.predictor, "INFERENCE_SHORT_SIDE", 360)
    data = make_ytvos(tmp_path / "data")
    one = inference_ytvos.main(argv(assets, data, tmp_path / "one"))
    two = inference_ytvos.main(argv(assets, data, tmp_path / "two", "--ngpu", "2"))
    assert files_under(tmp_path / "two" / "valid") == files_under(tmp_path / "one" / "valid")
    with zipfile.ZipFile(one) as a, zipfile.ZipFile(two) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
