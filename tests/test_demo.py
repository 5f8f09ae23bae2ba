"""demo.py on generated videos: a video file and a folder of frames → masks, overlays, GIF and MP4; bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import demo
from tests.tiny_inference import TEST_SHORT_SIDE, TINY_MODEL_FLAGS, save_tiny_assets, write_frame
from util.video import read_video, write_mp4

WIDTH, HEIGHT = 64, 48
NUM_FRAMES = 5
# Clips of 2 frames: the video runs in 3 clips, the last one a single frame.
CLIP_LEN = 2


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


def argv(assets, video: Path, output: Path, *extra: str, text: str = "the red circle on the left") -> list[str]:
    text_dir, checkpoint = assets
    return [*TINY_MODEL_FLAGS, "--text_encoder", str(text_dir), "--checkpoint", str(checkpoint), "--video", str(video),
            "--text", text, "--output_dir", str(output), "--short_side", str(TEST_SHORT_SIDE),
            "--clip_len", str(CLIP_LEN), *extra]


def frames_folder(root: Path) -> Path:
    for t in range(NUM_FRAMES):
        write_frame(root / f"frame_{t:03d}.jpg", WIDTH, HEIGHT, seed=t)
    return root


def check_outputs(outputs: dict[str, Path], names: list[str]) -> None:
    assert sorted(p.stem for p in outputs["masks"].glob("*.png")) == names
    for name in names:
        with Image.open(outputs["masks"] / f"{name}.png") as mask:
            assert mask.size == (WIDTH, HEIGHT) and set(np.unique(np.asarray(mask))) <= {0, 255}
        with Image.open(outputs["overlay"] / f"{name}.png") as overlay:
            assert overlay.size == (WIDTH, HEIGHT) and overlay.mode == "RGB"
    with Image.open(outputs["gif"]) as gif:
        assert gif.n_frames == len(names)
    frames, _ = read_video(outputs["mp4"])
    assert len(frames) == len(names) and frames[0].size == (WIDTH, HEIGHT)
    assert not (outputs["masks"].parent / ".partial").exists()


def test_video_file(assets, tmp_path):
    video = tmp_path / "clip.mp4"
    write_mp4([Image.open(p) for p in sorted(frames_folder(tmp_path / "frames").iterdir())], video, fps=5)
    outputs = demo.main(argv(assets, video, tmp_path / "out"))
    check_outputs(outputs, [f"{t:05d}" for t in range(NUM_FRAMES)])
    assert len(list((tmp_path / "out" / demo.FRAMES_DIR).glob("*.png"))) == NUM_FRAMES


def test_folder_of_frames_and_rerun_replaces_outputs(assets, tmp_path):
    folder = frames_folder(tmp_path / "frames")
    outputs = demo.main(argv(assets, folder, tmp_path / "out"))
    names = [f"frame_{t:03d}" for t in range(NUM_FRAMES)]
    check_outputs(outputs, names)
    # a rerun with another text into the same folder predicts again instead of keeping the old masks
    (outputs["masks"] / "frame_000.png").write_bytes(b"stale")
    check_outputs(demo.main(argv(assets, folder, tmp_path / "out", text="a blue square")), names)


def test_bad_inputs_are_named(assets, tmp_path):
    folder = frames_folder(tmp_path / "frames")
    with pytest.raises(ValueError, match="--text is empty"):
        demo.main(argv(assets, folder, tmp_path / "out", text="  "))
    text_dir, _ = assets
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        demo.main(argv((text_dir, tmp_path / "missing.pth"), folder, tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        demo.main(argv(assets, tmp_path / "nowhere.mp4", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames .* in the folder .*empty"):
        demo.main(argv(assets, tmp_path / "empty", tmp_path / "out"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="cannot read video .*garbage.mp4"):
        demo.main(argv(assets, garbage, tmp_path / "out"))
    empty = tmp_path / "empty.webm"
    empty.touch()
    with pytest.raises(ValueError, match="empty.webm"):
        demo.main(argv(assets, empty, tmp_path / "out"))


def test_mp4_round_trip_pads_odd_sizes(tmp_path):
    images = [Image.fromarray(np.full((33, 47, 3), 40 * t, dtype=np.uint8)) for t in range(3)]
    frames, fps = read_video(write_mp4(images, tmp_path / "odd.mp4", fps=7))
    assert len(frames) == 3 and frames[0].size == (48, 34) and fps == pytest.approx(7)
