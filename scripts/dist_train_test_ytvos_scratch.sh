#!/usr/bin/env bash
# Ref-YouTube-VOS without RefCOCO/+/g pretraining (10 epochs, lr drop at 6 and 8), then predict the
# valid split and write the CodaLab submission zip OUTPUT_DIR/submission-valid.zip.
#
#   scripts/dist_train_test_ytvos_scratch.sh OUTPUT_DIR [flags for main.py and inference_ytvos.py]
#   e.g. scripts/dist_train_test_ytvos_scratch.sh ytvos_dirs/video_swin_tiny_scratch --backbone video_swin_t_p4w7 \
#            --backbone_pretrained video_swin_pretrained/swin_tiny_patch244_window877_kinetics400_1k.pth
#
# Weights: only the backbone starts pre-trained: ResNets from torchvision's ImageNet weights, Swin and
# Video-Swin from the ImageNet / Kinetics-400 weights given with --backbone_pretrained FILE.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). The original's effective batch is 8 GPUs x 1
# clip: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
# The original's inference step wrote to ./output; here it writes to OUTPUT_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
check_output_dir_argument "$@"
OUTPUT_DIR=$(absolute "$1")
shift
launch_settings

train --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder --epochs 10 --lr_drop 6 8 \
    --output_dir "$OUTPUT_DIR" --accum_iter "$ACCUM_ITER" --resume auto "$@"

predict inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUTPUT_DIR" --resume "$OUTPUT_DIR/checkpoint.pth" "$@"
