#!/usr/bin/env bash
# Ref-YouTube-VOS: fine-tune from RefCOCO-pretrained weights, then predict the valid split for CodaLab.
#
#   scripts/dist_train_test_ytvos.sh GPUS OUTPUT_DIR PRETRAINED_WEIGHTS [extra main.py/inference flags]
#   e.g. scripts/dist_train_test_ytvos.sh 8 output/ytvos_r50 weights/r50_pretrained.pth --text_encoder weights/roberta-base
#
# The original trained on 8 GPUs with 1 clip each (effective batch 8). With fewer GPUs the script
# accumulates gradients to keep that batch: --accum_iter = 8 / GPUS (override with ACCUM_ITER=N).
# Rerunning continues from the newest checkpoint in OUTPUT_DIR (--resume auto).
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,10p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; PRETRAINED=$3; shift 3
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --pretrained_weights "$PRETRAINED" --epochs 6 --lr_drop 3 5 \
    --accum_iter "$ACCUM_ITER" --resume auto "$@"

python inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --resume "$OUT/checkpoint.pth" --ngpu "$GPUS" "$@"
