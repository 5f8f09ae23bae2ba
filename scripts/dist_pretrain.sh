#!/usr/bin/env bash
# RefCOCO/+/g pretraining on their concatenation (--dataset_file all), images as one-frame clips, text
# encoder trained: 12 epochs, lr drop at 8 and 10; every epoch is evaluated on the three val splits.
# These are the values the original intended (its script lost them after a comment, spec quirk 26).
#
#   scripts/dist_pretrain.sh GPUS OUTPUT_DIR [extra flags, e.g. --backbone swin_l_p4w7 --use_checkpoint]
#
# Effective batch of the original: 8 GPUs x 2 images; fewer GPUs accumulate --accum_iter = 8 / GPUS
# (override with ACCUM_ITER=N). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,9p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; shift 2
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file all --with_box_refine --binary --batch_size 2 --num_frames 1 \
    --output_dir "$OUT" --epochs 12 --lr_drop 8 10 --accum_iter "$ACCUM_ITER" --resume auto "$@"
