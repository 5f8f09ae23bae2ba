#!/usr/bin/env bash
# Ref-DAVIS17: predict the valid split with a Ref-YouTube-VOS model (no fine-tuning, as the paper)
# and score J&F for each of the 4 annotator settings and their mean.
#
#   scripts/dist_test_davis.sh GPUS OUTPUT_DIR CHECKPOINT [extra flags, e.g. --backbone swin_l_p4w7]
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,6p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; CKPT=$3; shift 3
cd "$(dirname "$0")/.."

python inference_davis.py --dataset_file davis --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --resume "$CKPT" --ngpu "$GPUS" "$@"
