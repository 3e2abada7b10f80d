#!/usr/bin/env bash
# Stage 3 of the default model: one CUDA GPU continues stage 2's model on 256 px crops.
# Usage: STEPS=N scripts/train_stage3_gpu.sh [INIT_MODEL] [RUN_DIR]
#   INIT_MODEL  stage 2's model (default runs/default-v2/model.safetensors, see train_default.sh)
#   RUN_DIR     default runs/default-v3 (resumable: run again to continue)
#   STEPS       optimiser steps; unset = as many as bench/train_speed.py says fit in BUDGET_S
#   MINUTES     wall-clock bound of this invocation (0 = none), PY the Python with torch
# The shipped gqtok-f8c16-cpu-v3 ran it with STEPS=12315, then resumed it with STEPS=19500
# (scripts/train_default.sh, STEPS3A / STEPS3B).
set -euo pipefail
cd "$(dirname "$0")/.."
INIT="${1:-runs/default-v2/model.safetensors}"
RUN="${2:-runs/default-v3}"
PY="${PY:-python3}"
MINUTES="${MINUTES:-0}"
CROP=256
BATCH=32
if [ -z "${STEPS:-}" ]; then
  BUDGET_S="${BUDGET_S:?set STEPS or BUDGET_S}"
  STEPS=$("$PY" bench/train_speed.py --crop "$CROP" --batch "$BATCH" --steps 30 \
          --budget-s "$BUDGET_S" | "$PY" -c "import json, sys; print(json.load(sys.stdin)['steps_in_budget'])")
  echo "stage 3: $STEPS steps fit in $BUDGET_S s"
fi
resume=()
[ -f "$RUN/last.pt" ] && resume=(--resume)
"$PY" -m gqtok.train train --data data/prepared --out "$RUN" --init "$INIT" --device cuda \
  --crop "$CROP" --batch "$BATCH" --scale-levels 8 --scale-min 0.25 --scale-max 1.0 \
  --lr 3e-4 --lr-schedule cosine --lr-min 1e-5 --warmup-steps 200 --kl-weight 0.1 \
  --perceptual none --seed 0 --steps "$STEPS" --minutes "$MINUTES" \
  --log-every 200 --ckpt-every 1000 --eval-every 1000 --eval-images 16 "${resume[@]}"
