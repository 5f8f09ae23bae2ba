#!/usr/bin/env bash
# Ref-YouTube-VOS from scratch (no RefCOCO pretraining): 10 epochs, lr drop at 6 and 8, then predict valid.
#
#   scripts/dist_train_test_ytvos_scratch.sh GPUS OUTPUT_DIR [extra flags, e.g. --backbone_pretrained FILE]
#
# Effective batch of the original: 8 GPUs x 1 clip; fewer GPUs accumulate --accum_iter = 8 / GPUS
# (override with ACCUM_ITER=N). Rerunning continues from the newest checkpoint (--resume auto).
# The original's inference step wrote to ./output; here it writes to OUTPUT_DIR.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,9p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; shift 2
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --epochs 10 --lr_drop 6 8 --accum_iter "$ACCUM_ITER" --resume auto "$@"

python inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --resume "$OUT/checkpoint.pth" --ngpu "$GPUS" "$@"
