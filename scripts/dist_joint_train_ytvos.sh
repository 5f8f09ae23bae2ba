#!/usr/bin/env bash
# Joint training: RefCOCO/+/g as pseudo-videos together with Ref-YouTube-VOS (12 epochs, lr drop at 8
# and 10), then predict the Ref-YouTube-VOS valid split and write OUTPUT_DIR/submission-valid.zip.
#
#   scripts/dist_joint_train_ytvos.sh OUTPUT_DIR [flags for main.py and inference_ytvos.py]
#   e.g. scripts/dist_joint_train_ytvos.sh joint_dirs/swin_large --backbone swin_l_p4w7 --use_checkpoint \
#            --backbone_pretrained pretrained_weights/swin_large_patch4_window7_224_22k.pth
#
# Weights: only the backbone starts pre-trained: ResNets from torchvision's ImageNet weights, Swin and
# Video-Swin from the ImageNet / Kinetics-400 weights given with --backbone_pretrained FILE.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). The original's effective batch is 8 GPUs x 1
# clip: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
check_output_dir_argument "$@"
OUTPUT_DIR=$(absolute "$1")
shift
launch_settings

train --dataset_file joint --with_box_refine --binary --freeze_text_encoder --epochs 12 --lr_drop 8 10 \
    --output_dir "$OUTPUT_DIR" --accum_iter "$ACCUM_ITER" --resume auto "$@"

predict inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUTPUT_DIR" --resume "$OUTPUT_DIR/checkpoint.pth" "$@"
