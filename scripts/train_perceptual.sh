#!/usr/bin/env bash
# The recipe of the embedded default model's perceptual decoder
# (weights/default.decoder-perceptual.safetensors): decoder-only fine-tuning of
# gqtok-f8c16-cpu-v3's decoder on its own GQ tokens (encoder, codebook, entropy model frozen),
# L1 + ST-LPIPS (Alex) + a patch discriminator (hinge, adaptive weight) from step DISC_START.
# Usage: scripts/train_perceptual.sh [MINUTES]  -- resumable: run again to continue.
# CPU, 2 threads: ~1.3 s a step of 8 crops of 128 px (bench/train_speed.py --decoder-only).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-0}"
STEPS="${STEPS:-4000}"
DISC_START="${DISC_START:-300}"
RUN="${RUN:-runs/perceptual}"
PY="${PY:-.venv/bin/python}"
resume=()
[ -f "$RUN/last.pt" ] && resume=(--resume)
"$PY" -m gqtok.train train --data data/prepared --out "$RUN" \
  --init weights/default.safetensors --decoder-only \
  --crop 128 --batch 8 --lr 1e-4 --disc-lr 1e-4 --disc-start "$DISC_START" \
  --disc-weight 0.75 --disc-channels 32 --disc-layers 3 \
  --perceptual alex --perceptual-weight 1.0 --scale-min 0.25 --scale-max 1.0 \
  --seed 0 --threads 2 --log-every 25 --ckpt-every 100 --eval-every 250 --eval-images 16 \
  --steps "$STEPS" --minutes "$MINUTES" "${resume[@]}"
