"""`eval_davis.py` end to end on a generated miniature DAVIS folder and results folders."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import eval_davis

SHAPE = (24, 32)
FRAMES = ["00000", "00001", "00002"]
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253


def write_png(path: str, labels: np.ndarray, palette: bool = True) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette(PALETTE)
    image.save(path)


def ground_truth() -> dict[str, np.ndarray]:
    """alpha: objects 1 and 2 with a void band; beta: object 1."""
    alpha = np.zeros((3, *SHAPE), dtype=np.uint8)
    alpha[:, 2:10, 3:12] = 1
    alpha[:, 12:20, 15:28] = 2
    alpha[:, 12:20, 28:30] = 255
    beta = np.zeros((3, *SHAPE), dtype=np.uint8)
    beta[:, 5:15, 5:15] = 1
    return {"alpha": alpha, "beta": beta}


@pytest.fixture
def davis_root(tmp_path) -> str:
    root = tmp_path / "DAVIS"
    for name, labels in ground_truth().items():
        for frame, label_map in zip(FRAMES, labels):
            write_png(str(root / "Annotations_unsupervised" / "480p" / name / f"{frame}.png"), label_map)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("alpha\nbeta\n")
    return str(root)


def write_results(folder: str, lose_beta_middle: bool = True) -> None:
    """alpha predicted perfectly with swapped ids (covering the void band too); beta missing
    in the middle frame (grayscale PNGs)."""
    gt = ground_truth()
    alpha = np.zeros_like(gt["alpha"])
    alpha[gt["alpha"] == 1] = 2
    alpha[(gt["alpha"] == 2) | (gt["alpha"] == 255)] = 1
    beta = gt["beta"].copy()
    if lose_beta_middle:
        beta[1] = 0
    for frame, a, b in zip(FRAMES, alpha, beta):
        write_png(os.path.join(folder, "alpha", f"{frame}.png"), a)
        write_png(os.path.join(folder, "beta", f"{frame}.png"), b, palette=False)


# alpha_1, alpha_2: J = F = 1 in every frame (the assignment undoes the swap; void ignored).
# beta_1: J = F = [1, 0, 1] → Mean 2/3, Recall 2/3, Decay mean(v[0:2]) − v[2] = −1/2.
# Global: Mean = Recall = (1 + 1 + 2/3) / 3 = 0.88889, Decay = −1/6 = −0.16667.
EXPECTED_GLOBAL = (
    "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
    "0.88889,0.88889,0.88889,-0.16667,0.88889,0.88889,-0.16667\n"
)
EXPECTED_PER_SEQUENCE = (
    "Sequence,J-Mean,F-Mean\n"
    "alpha_1,1.00000,1.00000\n"
    "alpha_2,1.00000,1.00000\n"
    "beta_1,0.66667,0.66667\n"
)


def read(path) -> str:
    with open(path) as f:
        return f.read()


def test_end_to_end_csvs_and_cache(davis_root, tmp_path):
    results = str(tmp_path / "results")
    write_results(results)
    argv = ["--davis_path", davis_root, "--results_path", results, "--ngpu", "1"]  # unknown flag ignored
    scores = eval_davis.main(argv)
    assert scores["J&F-Mean"] == pytest.approx(8 / 9, abs=1e-12)
    assert read(os.path.join(results, "global_results-val.csv")) == EXPECTED_GLOBAL
    assert read(os.path.join(results, "per-sequence_results-val.csv")) == EXPECTED_PER_SEQUENCE

    # Cached tables are reused as they are…
    with open(os.path.join(results, "global_results-val.csv"), "w") as f:
        f.write(EXPECTED_GLOBAL.replace("0.88889,0.88889,0.88889,-0.16667", "0.5,0.88889,0.88889,-0.16667"))
    assert eval_davis.main(argv)["J&F-Mean"] == 0.5
    # …unless --recompute.
    assert eval_davis.main(argv + ["--recompute"])["J&F-Mean"] == pytest.approx(8 / 9, abs=1e-12)
    assert read(os.path.join(results, "global_results-val.csv")) == EXPECTED_GLOBAL


def test_missing_sequences_and_frames_are_listed(davis_root, tmp_path):
    results = str(tmp_path / "results")
    write_results(results)
    os.remove(os.path.join(results, "alpha", "00001.png"))
    os.remove(os.path.join(results, "alpha", "00002.png"))
    with pytest.raises(FileNotFoundError) as error:
        eval_davis.main(["--davis_path", davis_root, "--results_path", results])
    message = str(error.value)
    assert results in message and "alpha" in message and "00001.png, 00002.png" in message
    assert "beta" not in message

    for frame in FRAMES:
        os.remove(os.path.join(results, "beta", f"{frame}.png"))
    os.rmdir(os.path.join(results, "beta"))
    with pytest.raises(FileNotFoundError, match=r"sequence beta: folder .*beta not found"):
        eval_davis.main(["--davis_path", davis_root, "--results_path", results])
    assert not os.path.exists(os.path.join(results, "global_results-val.csv"))


def test_unreadable_png_names_the_file(davis_root, tmp_path):
    results = str(tmp_path / "results")
    write_results(results)
    broken = os.path.join(results, "beta", "00001.png")
    with open(broken, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(OSError, match="00001.png"):
        eval_davis.main(["--davis_path", davis_root, "--results_path", results])


def test_annotator_folders_and_their_mean(davis_root, tmp_path):
    results = tmp_path / "valid"
    write_results(str(results / "anno_0"))
    write_results(str(results / "anno_1"), lose_beta_middle=False)  # everything perfect
    scores = eval_davis.main(["--davis_path", davis_root, "--results_path", str(results)])
    assert scores["J&F-Mean"] == pytest.approx((8 / 9 + 1) / 2, abs=1e-12)
    assert scores["J-Decay"] == pytest.approx(-1 / 12, abs=1e-12)
    assert read(results / "anno_0" / "global_results-val.csv") == EXPECTED_GLOBAL
    lines = read(results / "global_results_annotators-val.csv").splitlines()
    assert lines[0] == "Annotator,J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert lines[1] == "anno_0,0.88889,0.88889,0.88889,-0.16667,0.88889,0.88889,-0.16667"
    assert lines[2] == "anno_1,1.00000,1.00000,1.00000,0.00000,1.00000,1.00000,0.00000"
    assert lines[3] == "mean,0.94444,0.94444,0.94444,-0.08333,0.94444,0.94444,-0.08333"
