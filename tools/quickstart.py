"""The CPU quick start: the whole system, end to end, on a synthetic dataset (what ``make quickstart`` runs).

    python tools/quickstart.py            # 8 to 11 minutes on 2 CPU cores; prints J&F (about 67) last
    python tools/quickstart.py --smoke    # a tiny run of every step (about a minute): checks the pipeline

The full run uses ``data/ref-shapes`` and ``output/quickstart``, the smoke run ``data/ref-shapes-smoke``
and ``output/quickstart-smoke``; relative paths are taken from the working directory, which may be
any. Each folder gets a ``quickstart.json`` stamp with the settings it was made with: a rerun with
the same settings reuses it, one with other settings makes it anew, and a folder the quick start
did not make is refused.

Steps, each logged to ``<output_dir>/logs/<step>.log`` (the commands are printed, so each can be rerun alone):

1. ``data``: ``tools/data/make_ref_shapes.py`` writes the Ref-Shapes videos in the Ref-YouTube-VOS
   layout and ``tools/data/train_text_encoder.py`` its tokenizer and small pre-trained RoBERTa, into
   ``--data_dir``; skipped when that folder was made with the same settings.
2. ``train``: ``main.py --dataset_file ref_shapes`` with the small CPU configuration below, into
   ``<output_dir>/train``; skipped when the last epoch's checkpoint exists, resumed when interrupted.
3. ``infer``: ``inference_ytvos.py`` on the valid split → ``<output_dir>/inference/valid/Annotations``
   and ``<output_dir>/inference/submission-valid.zip`` (finished expressions are skipped on a rerun).
4. ``score``: ``tools/eval_ref_shapes.py`` scores the masks against the generated ground truth with
   the DAVIS-2017 toolkit (CSVs in ``<output_dir>/inference/valid/labels``).
5. ``curves``: ``tools/plot_log.py`` → ``<output_dir>/curves.png``.
6. ``overlay``: ``<output_dir>/overlay.gif``, every expression of the first valid video: predicted
   mask (left) and ground truth (right) over the frames, the expression written above.

The data: 1250 training videos of 2 frames each (``--train_frames 2``; the model trains on
one-frame clips, so short videos show more scenes for the same number of samples) and the 24
validation videos of 10 frames. The configuration: ResNet-18 trained from scratch (no ImageNet
weights offline; with ``--backbone_from_scratch``: BatchNorm and every stage trained), a 64-wide
transformer with 2 encoder and 4 decoder layers, no dropout (in the transformer and the cross-modal
FPN), one query per frame, 1-frame clips of the 128 × 128 videos resized to 96 × 96, in batches of
3 clips each shared by up to 4 expressions of its video (``--expressions_per_clip 4``: a frame is
loaded, augmented and run through the backbone once for all of them; 10-12 expressions per batch), without the photometric distortion (its
channel swaps and hue shifts recolour the shapes the expressions name), one epoch (about 1370
iterations), learning rates 4x the paper's (transformer and backbone, since everything starts from
random weights), the mask losses on masks upsampled 2x (``--mask_out_stride 2``: the ground truth
every 2 pixels instead of every 4), and the text encoder of ``train_text_encoder.py`` (pre-trained
on the expressions) frozen.
Inference runs at the videos' own size, 128 × 128: the masks come out at a quarter of the input
size, and the small shapes gain from the finer grid more than they lose from the change of scale
(with the crops of the training transforms the model has seen objects at many scales).

Measured alternatives (J&F on the valid split after one epoch on 200 training videos, single runs
on one thread, two at a time; about ±3 between runs):

* 5 queries: 31–37. The class score, which picks the query, never learned the expression in any
  5-query run (its loss stayed at the focal loss of a constant prediction); one query has to follow
  the text through its mask loss. Everything below uses one query.
* 2 decoder layers, 3-frame clips × 2: 40–41 with the frozen-BatchNorm ResNet of the original
  (untrained stem, no normalisation from random weights) on the earlier Ref-Shapes, where a third
  of the expressions needed the motion; 41.7 with ``--backbone_from_scratch`` on the current one.
* then 4 decoder layers instead of 2: 50.1; or 1-frame clips × 6 instead of 3-frame clips × 2 (the
  same frames per step but 6 expressions instead of 2; a 2-D backbone decodes every frame on its
  own anyway): 52.6; both: 56.8. With 250 training videos on two idle threads: 59.8 with 4 decoder
  layers, 61.1 with 6 (the recipe; the decoder costs little with one query).
* no help: lr 4e-4 (49.3 with 1-frame clips), lr 5e-4 or 2 epochs of 2-frame clips at 96 px
  (earlier recipe: 40.1, 38.5), training the text encoder too (31, 5 queries), a cosine decay of
  the learning rate over the epoch instead of the constant one (58.7 against 60.7 after the epoch,
  45.5 against 49.6 after 800 iterations, both under ``--amp``), ``--amp`` itself (60.7, the same
  score, but no faster on an AMX CPU: ``benchmarks/quickstart_train.py``).
* 96 × 96 in batches of 12 instead of 128 × 128 in batches of 6 (the recipe since then; 250
  training videos, a 2-core AMX machine, scored at the training size): 54.2 (one thread, two runs
  at a time; 53.5 with 2 threads alone) against 53.6 (55.9 with ``--msda_impl pytorch``), with
  half the iterations (1251) and about half the training time (706-782 s against 1493 s, in the
  training logs of fresh-clone runs); with the learning rates doubled for the doubled batch: 50.1.
  ``--amp`` does not pay at this size either (``benchmarks/quickstart_train.py``, its row). The
  53.5 checkpoint scores 57.9 inferred at 128 × 128 (the recipe) and 56.8 at 160 × 160
  (``inference_ytvos.py --short_side``).
* ``--mask_out_stride 2`` (the recipe since then; scored at 128 × 128, one thread, two runs at a
  time): 60.4 against 57.6 with the original's 4, the same run otherwise (60.7 with 1), and with
  ``--seed 1`` for training 57.4 against 55.4: 2-3 points in both pairs, although each is within
  the spread between runs. The losses see the shapes' outlines at 48 × 48 points instead of
  24 × 24. Inferred at 144 × 144 or 160 × 160 instead of 128 × 128: 54.9 and 52.3. (The 60.4 run
  kept each upsampled logit on its pixel; from the 57.4 run to the 59.1 below, the ground truth at
  stride 2 was sampled one pixel right of and below it: see the last entry.)
* with ``--mask_out_stride 2``: 180 training videos instead of 250 (908 iterations, a quarter less
  training time): 51.7; 1 encoder and 4 decoder layers instead of 2 and 6 (about 5 % faster in
  those runs): 59.7.
* ``--expressions_per_clip 4`` in batches of 3 clips instead of batches of 12 one-expression clips
  (the recipe since then; the same epoch of (expression, frame) pairs in 1393 iterations of 10.8
  expressions on average): 58.0 and 59.8 (``--seed 1``) against 60.4 and 57.4, in 16 min 44 s
  against 22 min 32 s for the whole quick start (the first pair); ``--expressions_per_clip 3`` in
  batches of 4: 56.5 in 18 min 03 s.
* then 1250 training videos of 2 frames (the recipe) instead of 250 of 10, the same number of
  samples: 59.1 on two threads alone from a fresh clone, in 11 min 44 s (13 min 22 s with the
  installation), against the 58.0 and 59.8 above (one thread, two runs at a time).
* the ground truth of ``--mask_out_stride 2`` sampled on the even pixels, where the aligned-bilinear
  upsampling puts each logit (``models/matcher.py:target_sample_offset``; the cell centres used
  before put the targets one pixel right of and below the logits, and the predicted shapes came out
  shifted by about a pixel): 63.2 from a fresh clone in 10 min 29 s (11 min 50 s with the
  installation) against 59.1, the same recipe otherwise.
* then learning rates 3x the paper's instead of 2x (``--lr 3e-4 --lr_backbone 1.5e-4``, the recipe
  since then): 64.5 from a fresh clone against that 63.2, and 66.6 on one thread (two runs at a
  time) with the same data; the training loss averaged over the epoch 38.3 against 41.7.
* no help (one thread, two runs at a time, against the 63.2 of 2x): the backbone's learning rate
  raised to the others' (2e-4): 63.1; the text encoder pre-trained for 300 steps instead of 150:
  62.2; ``--no_aux_loss``: 61.2, with iterations 11 % faster, and with it 1400 training videos
  instead of 1250: 60.0, in about the same time as the recipe.
* on top of the 3x rates (one thread, two runs at a time, the recipe's data; 66.6 there): 4 decoder
  layers instead of 6 and no dropout in the transformer (``--dec_layers 4 --dropout 0``; iterations
  16 % faster in ``benchmarks/quickstart_train.py``, 358 against 427 ms, and 9 % in a later run, 289
  against 318 ms): 63.7; with
  learning rates 4x the paper's as well (``--lr 4e-4 --lr_backbone 2e-4``, the recipe since then):
  67.8, and 64.9 with ``--seed 1``; from a fresh clone 67.1 (against 64.5 with the 3x rates), in
  11 min 39 s after the installation (training 607 s at 0.44 s per iteration, on a slower day than
  the 3x run's 0.45 s for 6 layers). Then, on one thread as above: 1100 training videos instead of
  1250 (12 % fewer iterations): 64.5, and with the text encoder pre-trained for 75 steps instead of
  150 (10 s less): 63.5 and 65.3 (``--seed 1``); 625 videos for 2 epochs with the learning rates
  x0.1 for the second (``--lr_drop 1``, the same iterations): 66.9; 417 videos for 3 epochs, x0.1
  for the third: 65.7.
* then no dropout in the cross-modal FPN either (``--fpn_dropout 0``, the recipe since then; the
  original fixes it at 0.1), one thread, two runs at a time: 66.1, and 66.9 with ``--seed 1``
  (against 67.8 and 64.9), with iterations 5 % faster in ``benchmarks/quickstart_train.py`` (275
  against 289 ms): without dropout the attention trains with PyTorch's fused kernel.
* not adopted: training as 2 data-parallel processes of one thread each (``main.py`` under
  ``torch.distributed.run --nproc_per_node 2``; the epoch is 687 steps of 6 clips): 5-13 % less
  time per expression than one process of two threads (``benchmarks/quickstart_train.py``, two
  runs), for 65.7 and 65.3 (``--seed 1``) with the learning rates doubled for the doubled batch
  (``--lr 8e-4 --lr_backbone 4e-4``), 62.8 with the recipe's and 61.1 tripled.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.meta import META_EXPRESSIONS_DIR, frame_path, read_meta_expressions, ytvos_split_videos  # noqa: E402
from davis2017.evaluation import DavisScores, csv_paths  # noqa: E402
from tools.data.make_ref_shapes import DATASET_VERSION, DAVIS_ANNOTATIONS, DAVIS_DIR, GROUND_TRUTH_FILE  # noqa: E402
from tools.eval_ref_shapes import DAVIS_SET, motion_csv_path  # noqa: E402
from util.visualize import blend_mask, expression_color, save_gif  # noqa: E402

SETTINGS_FILE = "quickstart.json"
"""The settings a data or training folder was made with; the data folder gets it last (without it, it is incomplete)."""
GROUND_TRUTH_COLOR = (0, 200, 0)
CAPTION_HEIGHT = 14
OVERLAY_SCALE = 2
"""The 128-pixel frames are enlarged in the GIF so that the captions fit above them."""
ENGINE_LOG_MARK = " INFO engine: "
"""Lines of the training log echoed to the console (the periodic loss summary)."""


@dataclass(frozen=True)
class Recipe:
    """Everything a quick-start run depends on.

    Attributes:
        name: ``"quickstart"`` or ``"smoke"`` (written in the folders' stamps).
        data: flags of ``make_ref_shapes.py`` (without ``--output``).
        text_encoder: flags of ``train_text_encoder.py`` (without paths).
        model: model flags, shared by training and inference.
        train: the other flags of ``main.py``.
        inference: the other flags of ``inference_ytvos.py`` (and ``demo.py``).
        epochs: ``--epochs`` (the step is done when ``checkpoint<epochs-1>.pth`` exists).
    """

    name: str
    data: tuple[str, ...]
    text_encoder: tuple[str, ...]
    model: tuple[str, ...]
    train: tuple[str, ...]
    inference: tuple[str, ...]
    epochs: int


QUICKSTART = Recipe(
    name="quickstart",
    data=("--seed", "0", "--num_train_videos", "1250", "--train_frames", "2", "--num_valid_videos", "24",
          "--frames", "10", "--height", "128", "--width", "128", "--expressions_per_object", "2"),
    text_encoder=("--seed", "0"),
    model=("--dataset_file", "ref_shapes", "--binary", "--with_box_refine", "--freeze_text_encoder",
           "--backbone", "resnet18", "--backbone_from_scratch", "--hidden_dim", "64", "--dim_feedforward", "256",
           "--enc_layers", "2", "--dec_layers", "4", "--num_queries", "1", "--mask_dim", "64", "--device", "cpu"),
    train=("--num_frames", "1", "--max_size", "96", "--batch_size", "3", "--expressions_per_clip", "4",
           "--lr", "4e-4", "--lr_backbone", "2e-4", "--dropout", "0", "--fpn_dropout", "0", "--photometric_distort", "off",
           "--mask_out_stride", "2", "--num_workers", "0", "--print_freq", "100"),
    inference=("--short_side", "128"),
    epochs=1,
)

SMOKE = Recipe(
    name="smoke",
    data=("--seed", "0", "--num_train_videos", "3", "--train_frames", "3", "--num_valid_videos", "2", "--frames", "4",
          "--height", "64", "--width", "64", "--expressions_per_object", "1"),
    text_encoder=("--seed", "0", "--intermediate_size", "64", "--pretrain_steps", "5"),
    model=("--dataset_file", "ref_shapes", "--binary", "--with_box_refine", "--freeze_text_encoder",
           "--backbone", "resnet18", "--backbone_from_scratch", "--hidden_dim", "32", "--dim_feedforward", "32",
           "--enc_layers", "1", "--dec_layers", "2", "--num_queries", "2", "--mask_dim", "32", "--device", "cpu"),
    train=("--num_frames", "2", "--max_size", "64", "--batch_size", "2", "--expressions_per_clip", "2",
           "--mask_out_stride", "2", "--num_workers", "0", "--print_freq", "5"),
    inference=("--short_side", "64"),
    epochs=1,
)


def log(message: str) -> None:
    print(message, flush=True)


def run_step(name: str, command: list[str], logs: Path, echo_mark: str | None = None) -> None:
    """Run ``command`` (from the caller's working directory, like every path here) with its output in ``<logs>/<name>.log``; echo the lines
    containing ``echo_mark``.

    Raises:
        RuntimeError: the command failed, naming the step, its log and the log's last lines.
    """
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    log(f"  $ {' '.join(command)}\n    (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   errors="replace")
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            if echo_mark and echo_mark in line:
                # tqdm redraws with carriage returns; the log record is the last piece of the line
                log("    " + line.rsplit("\r", 1)[-1].split(echo_mark, 1)[1].rstrip())
        returncode = process.wait()
    if returncode:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"step {name!r} failed (exit code {returncode}); see {log_path}. Last lines:\n{tail}")


def python(script: str, *flags: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *flags]


def made_with(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds what the quick start made with ``settings``.

    ``False`` when it is missing or empty, or when the quick start made it with other settings: the
    caller then makes it anew (the previous content is the quick start's own, e.g. a smoke run's).

    Raises:
        FileExistsError: ``folder`` holds files but no ``quickstart.json``: the quick start did not make it.
    """
    if not folder.exists() or not any(folder.iterdir()):
        return False
    stamp = folder / SETTINGS_FILE
    if not stamp.is_file():
        raise FileExistsError(f"{folder} exists but was not made by the quick start (it has no {SETTINGS_FILE}); "
                              "remove it or choose another folder")
    previous = json.loads(stamp.read_text())
    if previous == settings:
        return True
    made_by = f"the {previous['recipe']} recipe" if "recipe" in previous else "an older version of the quick start"
    log(f"  {folder} was made by {made_by} with other settings; making it anew")
    return False


def data_settings(recipe: Recipe) -> dict:
    """What the generated data depends on (the data folder's stamp)."""
    return {"recipe": recipe.name, "data": list(recipe.data), "generator_version": DATASET_VERSION,
            "text_encoder": list(recipe.text_encoder)}


def make_data(recipe: Recipe, data_dir: Path, logs: Path) -> None:
    """Generate the dataset and its text encoder into ``data_dir`` (via ``<data_dir>.partial``, renamed at the end)."""
    if made_with(data_dir, data_settings(recipe)):
        log(f"  {data_dir} is up to date, skipped")
        return
    partial = data_dir.with_name(data_dir.name + ".partial")
    for stale in (partial, data_dir):
        if stale.exists():
            shutil.rmtree(stale)
    run_step("data", python("tools/data/make_ref_shapes.py", "--output", str(partial), *recipe.data), logs)
    run_step("text_encoder", python("tools/data/train_text_encoder.py", "--data_root", str(partial),
                                    "--output", str(partial / "text_encoder"), *recipe.text_encoder), logs)
    (partial / SETTINGS_FILE).write_text(json.dumps(data_settings(recipe), indent=2) + "\n")
    os.replace(partial, data_dir)


def train(recipe: Recipe, flags: list[str], train_dir: Path, inference_dir: Path, logs: Path) -> None:
    """Train with the model and data ``flags`` into ``train_dir`` (resuming an interrupted run of the same
    settings, replacing a run of other settings); a new checkpoint makes old predictions stale, so they
    are removed."""
    settings = {"recipe": recipe.name, "data": data_settings(recipe), "flags": flags, "train": list(recipe.train),
                "epochs": recipe.epochs}
    last_checkpoint = train_dir / f"checkpoint{recipe.epochs - 1:04d}.pth"
    if made_with(train_dir, settings):
        if last_checkpoint.is_file():
            log(f"  {last_checkpoint} exists, skipped")
            return
    elif train_dir.exists():
        shutil.rmtree(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    if inference_dir.exists():
        shutil.rmtree(inference_dir)
    run_step("train", python("main.py", *flags, *recipe.train, "--epochs", str(recipe.epochs),
                             "--output_dir", str(train_dir), "--resume", "auto"), logs, echo_mark=ENGINE_LOG_MARK)


def write_overlay_gif(data_dir: Path, predictions: Path, out: Path) -> tuple[Path, str]:
    """``out``: the first valid video, one row per expression (caption above; prediction left, ground truth right).

    Returns the video's frame folder and its first expression (for the demo command).
    """
    video, entry = next(iter(ytvos_split_videos(data_dir, "valid").items()))
    ground_truth = read_meta_expressions(data_dir / META_EXPRESSIONS_DIR / "valid" / GROUND_TRUTH_FILE)
    davis = data_dir.joinpath(DAVIS_DIR, *DAVIS_ANNOTATIONS)
    captions = {e.exp_id: e.text for e in ground_truth[video].expressions}
    frames = []
    for name in entry.frames:
        frame = np.asarray(Image.open(frame_path(data_dir, "valid", video, name)).convert("RGB"))
        rows = []
        for index, expression in enumerate(entry.expressions):
            predicted = np.asarray(Image.open(predictions / video / expression.exp_id / f"{name}.png")) > 0
            truth = np.asarray(Image.open(davis / video / expression.exp_id / f"{name}.png")) > 0
            pair = np.concatenate([blend_mask(frame, predicted, expression_color(index)),
                                   blend_mask(frame, truth, GROUND_TRUTH_COLOR)], axis=1)  # [H, 2W, 3]
            pair = pair.repeat(OVERLAY_SCALE, axis=0).repeat(OVERLAY_SCALE, axis=1)
            caption = Image.new("RGB", (pair.shape[1], CAPTION_HEIGHT))
            ImageDraw.Draw(caption).text((2, 1), captions[expression.exp_id], fill=(255, 255, 255))
            rows += [np.asarray(caption), pair]
        frames.append(Image.fromarray(np.concatenate(rows, axis=0)))
    save_gif(frames, out)
    return frame_path(data_dir, "valid", video, entry.frames[0]).parent, entry.expressions[0].text


DEFAULT_DIRS = {False: ("output/quickstart", "data/ref-shapes"),
                True: ("output/quickstart-smoke", "data/ref-shapes-smoke")}
"""(output_dir, data_dir) by ``--smoke``: the smoke run never touches the full run's folders."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CPU quick start: synthetic data, training, inference, J&F")
    parser.add_argument("--output_dir", help="checkpoints, predictions, logs, pictures (default: "
                        f"{DEFAULT_DIRS[False][0]}, with --smoke {DEFAULT_DIRS[True][0]})")
    parser.add_argument("--data_dir", help="where the synthetic dataset is generated (default: "
                        f"{DEFAULT_DIRS[False][1]}, with --smoke {DEFAULT_DIRS[True][1]})")
    parser.add_argument("--smoke", action="store_true", help="tiny data and model, one short epoch: checks the steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Run every step; returns J&F (percent)."""
    args = parse_args(argv)
    recipe = SMOKE if args.smoke else QUICKSTART
    start = time.perf_counter()
    default_output_dir, default_data_dir = DEFAULT_DIRS[args.smoke]
    output_dir, data_dir = Path(args.output_dir or default_output_dir), Path(args.data_dir or default_data_dir)
    logs = output_dir / "logs"
    train_dir, inference_dir = output_dir / "train", output_dir / "inference"
    model_flags = [*recipe.model, "--text_encoder", str(data_dir / "text_encoder")]
    data_flags = ["--ytvos_path", str(data_dir)]

    def step(number: int, title: str) -> None:
        log(f"[{number}/6] {title} ({time.perf_counter() - start:.0f} s)")

    step(1, f"synthetic Ref-Shapes dataset and text encoder → {data_dir}")
    make_data(recipe, data_dir, logs)

    step(2, f"training, {recipe.epochs} epoch(s) → {train_dir}")
    train(recipe, [*model_flags, *data_flags], train_dir, inference_dir, logs)

    step(3, f"inference on the valid split → {inference_dir}")
    run_step("infer", python("inference_ytvos.py", *model_flags, *data_flags, *recipe.inference, "--ngpu", "1",
                             "--resume", str(train_dir / "checkpoint.pth"), "--output_dir", str(inference_dir)), logs)
    predictions = inference_dir / "valid" / "Annotations"

    step(4, "J&F on the valid split (DAVIS-2017 toolkit)")
    labels = inference_dir / "valid" / "labels"
    run_step("score", python("tools/eval_ref_shapes.py", "--predictions", str(predictions), "--labels", str(labels),
                             "--davis_path", str(data_dir / DAVIS_DIR)), logs)
    scores = DavisScores.read_csv(str(labels), DAVIS_SET).global_scores

    step(5, f"training curves → {output_dir / 'curves.png'}")
    run_step("curves", python("tools/plot_log.py", str(train_dir), "--out", str(output_dir / "curves.png")), logs)

    step(6, f"overlay of a validation video → {output_dir / 'overlay.gif'}")
    video, text = write_overlay_gif(data_dir, predictions, output_dir / "overlay.gif")

    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    log(f"done in {minutes} min {seconds:02d} s; scores: {csv_paths(str(labels), DAVIS_SET)[0]}, submission: "
        f"{inference_dir / 'submission-valid.zip'}")
    # no model flags: the demo reads them from the checkpoint
    demo = ["python", os.path.relpath(ROOT / "demo.py"), "--video", str(video), "--text", f'"{text}"', "--checkpoint",
            str(train_dir / "checkpoint.pth"), *recipe.inference]
    log(f"try the demo on any video or folder of frames:\n  {' '.join(demo)}")
    with open(motion_csv_path(labels), encoding="utf-8") as table:
        groups = {row["Expressions"]: row for row in csv.DictReader(table)}
    log("  by expression: " + ", ".join(
        f"J&F {100 * float(row['J&F-Mean']):.1f} on the {row['Count']} {name}" for name, row in groups.items()
    ) + " (ReferFormer with a 2-D backbone decodes each frame on its own)")
    jf = 100 * scores["J&F-Mean"]
    log(f"J&F {jf:.1f} (J {100 * scores['J-Mean']:.1f}, F {100 * scores['F-Mean']:.1f}) on the Ref-Shapes valid split")
    return jf


if __name__ == "__main__":
    main()
