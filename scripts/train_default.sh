#!/usr/bin/env bash
# The recipe of the embedded default model (weights/default.safetensors).
# Usage: scripts/train_default.sh [MINUTES]   -- resumable: run again to continue training.
# The shipped gqtok-f8c16-cpu-v1 is this recipe run to STEPS=8169 (65 352 crops, 90 min on the
# 2-core CPU of the model card); MINUTES (0 = no limit) only bounds one invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-0}"
STEPS="${STEPS:-8169}"
RUN=runs/default
PY=.venv/bin/python
RESUME=()
[ -f "$RUN/last.pt" ] && RESUME=(--resume)
"$PY" -m gqtok.train train \
  --data data/prepared --out "$RUN" \
  --crop 128 --batch 8 --lr 4e-4 --kl-weight 0.1 --perceptual none \
  --scale-min 0.25 --scale-max 1.0 --seed 0 --threads 2 \
  --log-every 50 --ckpt-every 250 --eval-every 500 --eval-images 16 \
  --steps "$STEPS" --minutes "$MINUTES" "${RESUME[@]}"
"$PY" -m gqtok.train export "$RUN" weights/default.safetensors \
  --name gqtok-f8c16-cpu-v1 --half
