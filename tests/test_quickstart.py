"""The quick start end to end in its smoke configuration (tiny data and model, one short epoch)."""
from __future__ import annotations

import json
import zipfile

import pytest
from PIL import Image

from tools import quickstart


@pytest.mark.slow
def test_smoke_run_writes_every_artefact_and_prints_jf(tmp_path, capsys):
    output, data = tmp_path / "out", tmp_path / "data"
    argv = ["--smoke", "--output_dir", str(output), "--data_dir", str(data)]
    jf = quickstart.main(argv)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(f"J&F {jf:.1f} ")
    assert printed[-2].startswith("  by expression: J&F ") and "resolved by any frame" in printed[-2]
    assert 0 <= jf <= 100
    assert (output / "train" / "checkpoint0000.pth").is_file()
    with zipfile.ZipFile(output / "inference" / "submission-valid.zip") as archive:
        names = archive.namelist()
    assert names and all(name.startswith("Annotations/") and name.endswith(".png") for name in names)
    assert (output / "inference" / "valid" / "labels" / "global_results-val.csv").is_file()
    with Image.open(output / "curves.png") as curves:
        assert curves.format == "PNG"
    with Image.open(output / "overlay.gif") as gif:
        assert gif.n_frames > 1
    assert (data / "text_encoder" / "config.json").is_file()

    # a rerun skips the data and the training, and scores the same predictions again
    assert quickstart.main(argv) == pytest.approx(jf)
    printed = capsys.readouterr().out
    assert "is up to date, skipped" in printed and "exists, skipped" in printed


def test_folders_made_with_other_settings_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(FileExistsError, match="remove it or choose another folder"):
        quickstart.make_data(quickstart.SMOKE, tmp_path / "data", tmp_path / "logs")


def test_data_made_by_an_older_generator_is_refused(tmp_path):
    """Same flags, older generator (no version in the stamp): the data differ, so it is not reused."""
    data = tmp_path / "data"
    data.mkdir()
    stale = {"data": list(quickstart.SMOKE.data), "text_encoder": list(quickstart.SMOKE.text_encoder)}
    (data / quickstart.SETTINGS_FILE).write_text(json.dumps(stale))
    with pytest.raises(FileExistsError, match="remove it or choose another folder"):
        quickstart.make_data(quickstart.SMOKE, data, tmp_path / "logs")
