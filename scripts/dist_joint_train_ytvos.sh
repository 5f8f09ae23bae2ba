#!/usr/bin/env bash
# Joint training: RefCOCO/+/g as pseudo-videos together with Ref-YouTube-VOS (12 epochs, lr drop at 8
# and 10), then predict the Ref-YouTube-VOS valid split for CodaLab.
#
#   scripts/dist_joint_train_ytvos.sh GPUS OUTPUT_DIR [extra flags, e.g. --backbone swin_l_p4w7 --use_checkpoint]
#
# Effective batch of the original: 8 GPUs x 1 clip; fewer GPUs accumulate --accum_iter = 8 / GPUS
# (override with ACCUM_ITER=N). Rerunning continues from the newest checkpoint (--resume auto).
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 1; fi
GPUS=$1; OUT=$2; shift 2
ORIGINAL_GPUS=8
ACCUM_ITER=${ACCUM_ITER:-$(( ORIGINAL_GPUS / GPUS > 0 ? ORIGINAL_GPUS / GPUS : 1 ))}
cd "$(dirname "$0")/.."

torchrun --nproc_per_node "$GPUS" main.py --dataset_file joint --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --epochs 12 --lr_drop 8 10 --accum_iter "$ACCUM_ITER" --resume auto "$@"

python inference_ytvos.py --dataset_file ytvos --with_box_refine --binary --freeze_text_encoder \
    --output_dir "$OUT" --resume "$OUT/checkpoint.pth" --ngpu "$GPUS" "$@"
