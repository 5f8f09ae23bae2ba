#!/usr/bin/env bash
# Ref-YouTube-VOS: fine-tune (6 epochs, lr drop at 3 and 5), then predict the valid split and write
# the CodaLab submission zip OUTPUT_DIR/submission-valid.zip.
#
#   scripts/dist_train_test_ytvos.sh OUTPUT_DIR [WEIGHTS] [flags for main.py and inference_ytvos.py]
#   e.g. scripts/dist_train_test_ytvos.sh ytvos_dirs/swin_tiny pretrained_weights/swin_tiny_pretrained.pth \
#            --backbone swin_t_p4w7 --text_encoder weights/roberta-base
#
# Weights: fine-tunes from the RefCOCO/+/g-pretrained checkpoint given as WEIGHTS (its class head is
# not loaded). Without WEIGHTS (no second argument, or one that starts with --, as a command of the
# original's docs has it) there is nothing to fine-tune from, and the from-scratch recipe
# scripts/dist_train_test_ytvos_scratch.sh runs instead with the same arguments.
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). The original's effective batch is 8 GPUs x 1
# clip: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
check_output_dir_argument "$@"
if (( $# < 2 )) || [[ $2 == --* ]]; then
    echo "$(basename "$0"): no WEIGHTS given: running the from-scratch recipe dist_train_test_ytvos_scratch.sh" >&2
    exec "$REPO_ROOT/scripts/dist_train_test_ytvos_scratch.sh" "$@"
fi
OUTPUT_DIR=$(absolute "$1")
WEIGHTS=$(weights_argument "$2")
shift 2
launch_settings

train --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder --epochs 6 --lr_drop 3 5 \
    --output_dir "$OUTPUT_DIR" --pretrained_weights "$WEIGHTS" --accum_iter "$ACCUM_ITER" --resume auto "$@"

predict inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUTPUT_DIR" --resume "$OUTPUT_DIR/checkpoint.pth" "$@"
