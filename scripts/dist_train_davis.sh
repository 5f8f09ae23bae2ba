#!/usr/bin/env bash
# Ref-DAVIS17 fine-tuning (6 epochs, lr drop at 3 and 5). Not in the original's recipes, whose DAVIS
# numbers use the Ref-YouTube-VOS model as it is (scripts/dist_test_davis.sh).
#
#   scripts/dist_train_davis.sh OUTPUT_DIR WEIGHTS [flags for main.py]
#
# Weights: fine-tunes from the Ref-YouTube-VOS checkpoint given as WEIGHTS (its class head is
# re-initialised).
#
# Environment: GPUS (default: the GPUs of this machine, 1 without GPUs), GPUS_PER_NODE, PORT,
# CPUS_PER_TASK, ACCUM_ITER (see scripts/README.md). Effective batch 8 clips as the Ref-YouTube-VOS
# recipe: with fewer GPUs the script accumulates --accum_iter = 8 / GPUS iterations per step.
# Paths are relative to the directory you start the script from (run it from the repository root
# for the default data paths data/...). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
output_dir_and_weights_arguments "$@"
shift 2
launch_settings

train --dataset_file davis --with_box_refine --binary --freeze_text_encoder --epochs 6 --lr_drop 3 5 \
    --output_dir "$OUTPUT_DIR" --pretrained_weights "$WEIGHTS" --accum_iter "$ACCUM_ITER" --resume auto "$@"
