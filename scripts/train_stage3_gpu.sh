#!/usr/bin/env bash
# Stage 3 of the default model: one CUDA GPU continues a model on 256 px crops.
# Usage: STEPS=N scripts/train_stage3_gpu.sh [INIT_MODEL] [RUN_DIR]
#   INIT_MODEL  the model to continue (default runs/default-v2/model.safetensors: stage 3)
#   RUN_DIR     default runs/default-v3 (resumable: run again to continue)
#   STEPS       optimiser steps; unset = as many as bench/train_speed.py says fit in BUDGET_S
#   MINUTES     wall-clock bound of this invocation (0 = none), PY the Python with torch
#   LR          peak learning rate of the cosine schedule (default 3e-4)
# The shipped gqtok-f8c16-cpu-v3 ran it with STEPS=12315, then resumed it with STEPS=19500
# (scripts/train_default.sh, STEPS3A / STEPS3B). A fourth stage from v3's model (LR=1e-4
# STEPS=12000, runs/default-v4) was measured and not shipped: see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
INIT="${1:-runs/default-v2/model.safetensors}"
RUN="${2:-runs/default-v3}"
PY="${PY:-python3}"
MINUTES="${MINUTES:-0}"
LR="${LR:-3e-4}"
DEVICE="${DEVICE:-cuda}"  # cpu only to check the command line
CROP=256
BATCH=32
if [ -z "${STEPS:-}" ]; then
  BUDGET_S="${BUDGET_S:?set STEPS or BUDGET_S}"
  STEPS=$("$PY" bench/train_speed.py --crop "$CROP" --batch "$BATCH" --steps 30 \
          --budget-s "$BUDGET_S" --steps-only)
  echo "stage 3: $STEPS steps fit in $BUDGET_S s"
fi
resume=()
[ -f "$RUN/last.pt" ] && resume=(--resume)
"$PY" -m gqtok.train train --data data/prepared --out "$RUN" --init "$INIT" --device "$DEVICE" \
  --crop "$CROP" --batch "$BATCH" --scale-levels 8 --scale-min 0.25 --scale-max 1.0 \
  --lr "$LR" --lr-schedule cosine --lr-min 1e-5 --warmup-steps 200 --kl-weight 0.1 \
  --perceptual none --seed 0 --steps "$STEPS" --minutes "$MINUTES" \
  --log-every 200 --ckpt-every 1000 --eval-every 1000 --eval-images 16 "${resume[@]}"
