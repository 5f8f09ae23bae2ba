#!/usr/bin/env bash
# RefCOCO/+/g pretraining on their concatenation (--dataset_file all), images as one-frame clips, text
# encoder trained: 12 epochs, lr drop at 8 and 10; every epoch is evaluated on the three val splits.
# These are the values the original intended (its script lost them after a comment).
#
#   scripts/dist_pretrain.sh OUTPUT_DIR [flags for main.py]
#   e.g. scripts/dist_pretrain.sh pretrain_dirs/swin_large --backbone swin_l_p4w7 --use_checkpoint \
#            --backbone_pretrained pretrained_weights/swin_large_patch4_window7_224_22k.pth
#
# Weights: only the backbone starts pre-trained: ResNets from torchvision's ImageNet weights, Swin and
# Video-Swin from the ImageNet / Kinetics-400 weights given with --backbone_pretrained FILE.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). The original's effective batch is 8 GPUs x 2
# images: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
check_output_dir_argument "$@"
OUTPUT_DIR=$(absolute "$1")
shift
launch_settings

train --dataset_file all --with_box_refine --binary --batch_size 2 --num_frames 1 --epochs 12 --lr_drop 8 10 \
    --output_dir "$OUTPUT_DIR" --accum_iter "$ACCUM_ITER" --resume auto "$@"
