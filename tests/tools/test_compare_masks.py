"""tools/compare_masks.py: per-file IoU of two mask folders, and what it refuses."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.compare_masks import compare_folders, main


def write(path, pixels, size=(4, 6)):
    """A 0/255 mask of ``size`` (height, width) with the object at ``pixels`` [(row, column)]."""
    mask = np.zeros(size, dtype=np.uint8)
    for row, column in pixels:
        mask[row, column] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


@pytest.fixture
def folders(tmp_path):
    first, second = tmp_path / "fp32" / "Annotations", tmp_path / "bf16" / "Annotations"
    # the same object
    write(first / "v0" / "0" / "00000.png", [(0, 0), (0, 1)])
    write(second / "v0" / "0" / "00000.png", [(0, 0), (0, 1)])
    # 2 shared pixels of 4 in the union
    write(first / "v0" / "0" / "00001.png", [(1, 1), (1, 2), (1, 3)])
    write(second / "v0" / "0" / "00001.png", [(1, 2), (1, 3), (2, 3)])
    # both empty: they agree
    write(first / "v1" / "3" / "00000.png", [])
    write(second / "v1" / "3" / "00000.png", [])
    # nothing shared
    write(first / "v1" / "3" / "00001.png", [(3, 5)])
    write(second / "v1" / "3" / "00001.png", [])
    return first, second


def test_iou_per_file_and_summary(folders, capsys):
    ious = main([str(folder) for folder in folders])
    assert ious == pytest.approx({"v0/0/00000.png": 1.0, "v0/0/00001.png": 2 / 4, "v1/3/00000.png": 1.0,
                                  "v1/3/00001.png": 0.0})
    printed = capsys.readouterr().out
    assert printed.startswith("4 masks, 2 identical; IoU mean 0.6250, median 0.7500, lowest 0.0000")
    assert "lowest: v1/3/00001.png 0.000, v0/0/00001.png 0.500" in printed


def test_masks_in_one_folder_only_are_named(folders):
    first, second = folders
    (second / "v0" / "0" / "00001.png").unlink()
    with pytest.raises(ValueError, match=r"1 masks of .*fp32.* are not in .*bf16.*v0/0/00001.png"):
        compare_folders(first, second)
    write(second / "v0" / "0" / "00001.png", [])
    write(second / "v2" / "0" / "00000.png", [])
    with pytest.raises(ValueError, match=r"1 masks of .*bf16.* are not in .*v2/0/00000.png"):
        compare_folders(first, second)


def test_sizes_missing_and_empty_folders_are_errors(folders, tmp_path):
    first, second = folders
    write(second / "v0" / "0" / "00000.png", [(0, 0)], size=(8, 6))
    with pytest.raises(ValueError, match=r"v0/0/00000.png: 6x4 in .* but 6x8 in"):
        compare_folders(first, second)
    with pytest.raises(FileNotFoundError, match="missing is not a folder of masks"):
        compare_folders(first, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .png masks"):
        compare_folders(tmp_path / "empty", tmp_path / "empty")
