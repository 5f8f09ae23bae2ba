#!/usr/bin/env bash
# JHMDB-Sentences: evaluate an A2D-Sentences model (no training on JHMDB, as the paper); the metrics
# are printed and written to OUTPUT_DIR/eval.json.
#
#   scripts/dist_test_jhmdb.sh OUTPUT_DIR WEIGHTS [flags for main.py, e.g. --backbone video_swin_b_p4w7]
#
# Weights: the A2D-Sentences model given as WEIGHTS.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK (see scripts/README.md). Paths are relative to the directory you start the script
# from (run it from the repository root for the default data paths data/...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

train --dataset_file jhmdb --with_box_refine --freeze_text_encoder --batch_size 2 \
    --output_dir "$OUTPUT_DIR" --resume "$WEIGHTS" --eval "$@"
