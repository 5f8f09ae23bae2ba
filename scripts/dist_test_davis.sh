#!/usr/bin/env bash
# Ref-DAVIS17: predict the valid split and score J&F for each of the 4 annotator settings and their
# mean (OUTPUT_DIR/valid/; scored when data/ref-davis/DAVIS holds the DAVIS-2017 ground truth).
#
#   scripts/dist_test_davis.sh OUTPUT_DIR WEIGHTS [flags for inference_davis.py]
#   e.g. scripts/dist_test_davis.sh davis_dirs/swin_large ytvos_swin_large.pth --backbone swin_l_p4w7
#
# Weights: the Ref-YouTube-VOS model given as WEIGHTS, without fine-tuning (as the paper).
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK (see scripts/README.md). Paths are relative to the directory you start the script
# from (run it from the repository root for the default data paths data/...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

predict inference_davis.py --dataset_file davis --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUTPUT_DIR" --resume "$WEIGHTS" "$@"
