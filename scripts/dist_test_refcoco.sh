#!/usr/bin/env bash
# RefCOCO/+/g val: REC precision@0.5 (bbox P@0.5) and RIS overall/mean IoU, for each of the three
# datasets; printed and written to OUTPUT_DIR/eval.json.
#
#   scripts/dist_test_refcoco.sh OUTPUT_DIR WEIGHTS [flags for main.py, e.g. --backbone swin_l_p4w7]
#
# Weights: the RefCOCO/+/g-pretrained model given as WEIGHTS.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK (see scripts/README.md). Paths are relative to the directory you start the script
# from (run it from the repository root for the default data paths data/...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

train --dataset_file all --with_box_refine --binary --batch_size 16 --num_frames 1 \
    --output_dir "$OUTPUT_DIR" --resume "$WEIGHTS" --eval "$@"
