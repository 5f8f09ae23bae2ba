#!/usr/bin/env bash
# MeViS: train on the train split (6 epochs, lr drop at 3 and 5, as the Ref-YouTube-VOS recipe);
# then score valid_u with scripts/dist_test_mevis.sh OUTPUT_DIR OUTPUT_DIR/checkpoint.pth.
#
#   scripts/dist_train_mevis.sh OUTPUT_DIR [WEIGHTS] [flags for main.py]
#   e.g. scripts/dist_train_mevis.sh mevis_dirs/r50 pretrained_weights/r50_pretrained.pth \
#            --text_encoder weights/roberta-base
#
# Weights: fine-tunes from the RefCOCO/+/g-pretrained checkpoint given as WEIGHTS (its class head is
# not loaded). Without WEIGHTS (no second argument, or one that starts with --) training starts from
# the backbone's own weights (torchvision ImageNet for ResNets, --backbone_pretrained for Swin).
# Pass --dataset_file mevis_ytvos --ytvos_path PATH to train on MeViS and Ref-YouTube-VOS together.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). Effective batch 8 clips as the Ref-YouTube-VOS
# recipe: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data path data/mevis). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
check_output_dir_argument "$@"
OUTPUT_DIR=$(absolute "$1")
shift
WEIGHTS=()
if (( $# > 0 )) && [[ $1 != --* ]]; then
    WEIGHTS=(--pretrained_weights "$(weights_argument "$1")")
    shift
fi
launch_settings

train --dataset_file mevis --with_box_refine --binary --freeze_text_encoder --epochs 6 --lr_drop 3 5 \
    --output_dir "$OUTPUT_DIR" ${WEIGHTS[@]+"${WEIGHTS[@]}"} --accum_iter "$ACCUM_ITER" --resume auto "$@"
