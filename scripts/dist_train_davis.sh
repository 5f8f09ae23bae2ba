#!/usr/bin/env bash
# Ref-DAVIS17 fine-tuning (not in the original's recipes, whose DAVIS numbers use the Ref-YTVOS
# model as is): start from a Ref-YouTube-VOS checkpoint; the class head is re-initialised.
#
#   scripts/dist_train_davis.sh GPUS OUTPUT_DIR YTVOS_CHECKPOINT [extra flags]
#
# Effective batch 8 as the Ref-YTVOS recipe: --accum_iter = 8 / GPUS (override with ACCUM_ITER=N).
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,8p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; PRETRAINED=$3; shift 3
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file davis --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --pretrained_weights "$PRETRAINED" --epochs 6 --lr_drop 3 5 \
    --accum_iter "$ACCUM_ITER" --resume auto "$@"
