#!/usr/bin/env bash
# JHMDB-Sentences: evaluate an A2D-Sentences model (no training on JHMDB, as the paper); the metrics
# are printed and written to OUTPUT_DIR/eval.json.
#
#   scripts/dist_test_jhmdb.sh GPUS OUTPUT_DIR A2D_CHECKPOINT [extra flags, e.g. --backbone video_swin_b_p4w7]
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,6p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; CKPT=$3; shift 3
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file jhmdb --with_box_refine --freeze_text_encoder --batch_size 2 \
    --output_dir "$OUT" --resume "$CKPT" --eval "$@"
