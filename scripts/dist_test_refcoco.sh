#!/usr/bin/env bash
# RefCOCO/+/g val: REC precision@0.5 (bbox P@0.5) and RIS overall/mean IoU of a pretrained model, for
# each of the three datasets; printed and written to OUTPUT_DIR/eval.json.
#
#   scripts/dist_test_refcoco.sh GPUS OUTPUT_DIR CHECKPOINT [extra flags, e.g. --backbone swin_l_p4w7]
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,6p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; CKPT=$3; shift 3
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file all --with_box_refine --binary --batch_size 16 --num_frames 1 \
    --output_dir "$OUT" --resume "$CKPT" --eval "$@"
