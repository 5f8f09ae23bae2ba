"""MeViS end to end on a generated miniature dataset (CPU, tiny model): ``main.py --dataset_file mevis``
trains one short epoch, ``inference_mevis.py`` predicts valid_u with its checkpoint and scores it, and
``eval_mevis.py`` gives the same scores from the written masks."""
from __future__ import annotations

import json
import math

import eval_mevis
import inference_mevis
import main as main_module
from opts import get_args_parser
from tests.datasets.synthetic_mevis import write_mevis

MODEL = [
    "--device", "cpu", "--backbone", "resnet18", "--backbone_from_scratch", "--with_box_refine", "--binary",
    "--freeze_text_encoder", "--hidden_dim", "32", "--dim_feedforward", "32", "--enc_layers", "1", "--dec_layers", "2",
    "--num_queries", "2", "--mask_dim", "32", "--nheads", "4",
]


def test_train_predict_and_score(tmp_path, text_encoder_dir):
    data = write_mevis(tmp_path / "mevis", splits=("train", "valid_u"))
    common = [*MODEL, "--text_encoder", str(text_encoder_dir), "--dataset_file", "mevis", "--mevis_path",
              str(data.root), "--output_dir", str(tmp_path / "out")]
    main_module.main(get_args_parser().parse_args([
        *common, "--num_frames", "2", "--max_size", "64", "--epochs", "1", "--num_workers", "0", "--print_freq", "1"]))
    (line,) = [json.loads(line) for line in (tmp_path / "out" / main_module.EPOCH_LOG).read_text().splitlines()]
    assert math.isfinite(line["train_loss"]) and (tmp_path / "out" / "checkpoint.pth").is_file()

    result = inference_mevis.main([*common, "--resume", "auto", "--split", "valid_u", "--short_side", "64",
                                   "--ngpu", "1"])
    assert len(list(result.predictions.rglob("*.png"))) == sum(
        len(expressions) * len(data.frames("valid_u", video))
        for video, expressions in data.expressions["valid_u"].items())
    scores = eval_mevis.main(["--mevis_path", str(data.root), "--split", "valid_u", "--pred_path",
                              str(result.predictions), "--save_name", str(tmp_path / "scores.json")])
    assert scores == result.scores and 0 <= scores["J&F"] <= 1
    per_expression = json.loads((tmp_path / "scores.json").read_text())
    assert sorted(per_expression) == sorted(f"{video}_{exp_id}" for video, expressions
                                            in data.expressions["valid_u"].items() for exp_id in expressions)
