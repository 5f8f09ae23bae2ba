#!/usr/bin/env bash
# MeViS: predict valid_u and score it with the official metric (J, F, J&F; per-expression scores in
# OUTPUT_DIR/valid_u_results.json). Pass --split valid for the challenge server's split instead:
# that writes the submission zip OUTPUT_DIR/submission-valid.zip.
#
#   scripts/dist_test_mevis.sh OUTPUT_DIR WEIGHTS [flags for inference_mevis.py]
#   e.g. scripts/dist_test_mevis.sh mevis_dirs/r50 mevis_dirs/r50/checkpoint.pth --text_encoder weights/roberta-base
#
# Weights: the MeViS model given as WEIGHTS (e.g. OUTPUT_DIR/checkpoint.pth of
# scripts/dist_train_mevis.sh); pass the model flags it was trained with.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK (see scripts/README.md). Paths are relative to the directory you start the script
# from (run it from the repository root for the default data path data/mevis).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

predict inference_mevis.py --dataset_file mevis --with_box_refine --binary --freeze_text_encoder --split valid_u \
    --output_dir "$OUTPUT_DIR" --resume "$WEIGHTS" "$@"
