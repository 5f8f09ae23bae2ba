"""The quick start end to end in its smoke configuration (tiny data and model, one short epoch)."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import demo
from tools import quickstart


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_then_another_recipe_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """The smoke run with its default (relative) folders from a directory that is not the repository's,
    its rerun, then a run of other settings in the same folders (as the full run after the smoke run)."""
    monkeypatch.chdir(tmp_path)
    before = sorted(path.name for path in ROOT.iterdir())
    jf = quickstart.main(["--smoke"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(f"J&F {jf:.1f} ")
    assert printed[-2].startswith("  by expression: J&F ") and "resolved by any frame" in printed[-2]
    assert 0 <= jf <= 100
    output, data = tmp_path / "output" / "quickstart-smoke", tmp_path / "data" / "ref-shapes-smoke"
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
    assert sorted(path.name for path in ROOT.iterdir()) == before  # nothing written into the repository

    # the printed demo command has no model flag and runs as printed: the checkpoint supplies the options and
    # the (relative) text encoder directory it was trained with
    command = shlex.split(printed[printed.index("try the demo on any video or folder of frames:") + 1])
    assert command[:2] == ["python", str(Path(os.path.relpath(ROOT / "demo.py")))]
    assert not {"--backbone", "--hidden_dim", "--with_box_refine", "--text_encoder"} & set(command)
    outputs = demo.main([*command[2:], "--output_dir", str(tmp_path / "demo"), "--device", "cpu"])
    assert len(list(outputs["masks"].glob("*.png"))) == len(list(Path(command[command.index("--video") + 1]).iterdir()))

    # a rerun skips the data and the training, and scores the same predictions again
    assert quickstart.main(["--smoke"]) == pytest.approx(jf)
    printed = capsys.readouterr().out
    assert "is up to date, skipped" in printed and "exists, skipped" in printed

    # other settings in the same folders: both are made anew (not refused), and the run completes
    other = dataclasses.replace(quickstart.SMOKE, name="quickstart",
                                data=tuple("1" if flag == "0" else flag for flag in quickstart.SMOKE.data))
    monkeypatch.setattr(quickstart, "QUICKSTART", other)
    quickstart.main(["--output_dir", "output/quickstart-smoke", "--data_dir", "data/ref-shapes-smoke"])
    printed = capsys.readouterr().out
    assert printed.count("was made by the smoke recipe with other settings; making it anew") == 2
    stamp = json.loads((data / quickstart.SETTINGS_FILE).read_text())
    assert stamp["recipe"] == "quickstart" and stamp["data"] == list(other.data)
    assert json.loads((output / "train" / quickstart.SETTINGS_FILE).read_text())["data"] == stamp


def test_smoke_and_full_runs_use_separate_folders(tmp_path, monkeypatch):
    """Without folder flags, the smoke run and the full run (the README's order) never share a folder."""
    monkeypatch.chdir(tmp_path)
    made = []
    monkeypatch.setattr(quickstart, "make_data", lambda recipe, data_dir, logs: made.append(("data", data_dir)))
    monkeypatch.setattr(quickstart, "train", lambda recipe, flags, train_dir, inference_dir, logs:
                        made.append(("train", train_dir)))
    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(quickstart, "run_step", stop)  # the inference step: nothing more to see
    for argv in (["--smoke"], []):
        with pytest.raises(Stop):
            quickstart.main(argv)
    (_, smoke_data), (_, smoke_train), (_, full_data), (_, full_train) = made
    assert {smoke_data, smoke_train}.isdisjoint({full_data, full_train})
    assert full_data == Path("data/ref-shapes") and full_train == Path("output/quickstart/train")


def test_folders_not_made_by_the_quick_start_are_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match=r"data exists but was not made by the quick start \(it has no "
                                              r"quickstart.json\); remove it or choose another folder"):
        quickstart.make_data(quickstart.SMOKE, tmp_path / "data", tmp_path / "logs")
    assert (tmp_path / "data" / "mine.txt").is_file()


def test_data_made_by_an_older_generator_is_made_anew(tmp_path, monkeypatch, capsys):
    """Same flags, older generator (no version and no recipe in the stamp): the data differ, so they are regenerated."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "old.txt").write_text("")
    stale = {"data": list(quickstart.SMOKE.data), "text_encoder": list(quickstart.SMOKE.text_encoder)}
    (data / quickstart.SETTINGS_FILE).write_text(json.dumps(stale))
    steps = []

    def fake_step(name, command, logs, echo_mark=None):
        steps.append(name)
        if name == "data":
            Path(command[command.index("--output") + 1]).mkdir()

    monkeypatch.setattr(quickstart, "run_step", fake_step)
    quickstart.make_data(quickstart.SMOKE, data, tmp_path / "logs")
    assert steps == ["data", "text_encoder"]
    assert "was made by an older version of the quick start with other settings" in capsys.readouterr().out
    assert not (data / "old.txt").exists()
    assert json.loads((data / quickstart.SETTINGS_FILE).read_text()) == quickstart.data_settings(quickstart.SMOKE)


def test_light_steps_do_not_load_the_model_libraries():
    """The quick start's driver, data generator and scorer start in a fresh process without importing
    torchvision or transformers (seconds each; only training, inference and the text encoder need them)."""
    code = ("import sys; import tools.quickstart, tools.data.make_ref_shapes, tools.eval_ref_shapes; "
            "print(sorted({'torchvision', 'transformers', 'models.referformer'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
