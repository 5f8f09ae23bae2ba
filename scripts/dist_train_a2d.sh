#!/usr/bin/env bash
# A2D-Sentences: fine-tune from RefCOCO-pretrained weights (6 epochs, lr drop at 3 and 5); every epoch
# is evaluated on the A2D test split (eval_epochNNNN.json in OUTPUT_DIR).
#
#   scripts/dist_train_a2d.sh GPUS OUTPUT_DIR PRETRAINED_WEIGHTS [extra flags, e.g. --backbone video_swin_b_p4w7]
#
# Effective batch of the original: 8 GPUs x 2 clips; fewer GPUs accumulate --accum_iter = 8 / GPUS
# (override with ACCUM_ITER=N). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,8p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; PRETRAINED=$3; shift 3
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file a2d --with_box_refine --freeze_text_encoder --batch_size 2 \
    --output_dir "$OUT" --pretrained_weights "$PRETRAINED" --epochs 6 --lr_drop 3 5 \
    --accum_iter "$ACCUM_ITER" --resume auto "$@"
