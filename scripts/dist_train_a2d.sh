#!/usr/bin/env bash
# A2D-Sentences: fine-tune (6 epochs, lr drop at 3 and 5, 2 clips per GPU); every epoch is evaluated
# on the A2D test split (OUTPUT_DIR/eval_epochNNNN.json).
#
#   scripts/dist_train_a2d.sh OUTPUT_DIR WEIGHTS [flags for main.py]
#   e.g. scripts/dist_train_a2d.sh a2d_dirs/video_swin_base pretrained_weights/video_swin_base_pretrained.pth \
#            --backbone video_swin_b_p4w7 --use_checkpoint
#
# Weights: fine-tunes from the RefCOCO/+/g-pretrained checkpoint given as WEIGHTS (its class head is
# not loaded). Training from scratch is a plain main.py command (docs/training.md).
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). The original's effective batch is 8 GPUs x 2
# clips: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

train --dataset_file a2d --with_box_refine --freeze_text_encoder --batch_size 2 --epochs 6 --lr_drop 3 5 \
    --output_dir "$OUTPUT_DIR" --pretrained_weights "$WEIGHTS" --accum_iter "$ACCUM_ITER" --resume auto "$@"
