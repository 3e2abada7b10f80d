#!/usr/bin/env bash
# The perceptual decoder's adversarial stage on one CUDA GPU (issue 14: patch FID below the
# classical codecs needs more GAN training than 2 CPU cores give). Decoder-only fine-tuning of
# the default model's decoder on its own GQ tokens, the VQGAN recipe at GPU scale: 256 px
# crops, batch 16, the 64-wide patch discriminator, Adam betas 0.5 / 0.9 for both networks,
# L1 + ST-LPIPS (Alex) + the adaptively weighted hinge GAN term from DISC_START on.
# Usage: STEPS=N scripts/train_perceptual_gpu.sh   (or BUDGET_S=seconds instead of STEPS)
#   RUN     run folder (default runs/perceptual-gpu; run again to resume)
#   DATA    prepared photos (default data/prepared)
#   MINUTES wall-clock bound of this invocation (0 = none), PY the Python with torch
# Writes $RUN/{last.pt,metrics.csv} and $RUN/default.decoder-perceptual.safetensors (blend
# 1.0: choose the blend afterwards on the CPU with `gqtok eval --realism`, then export again
# with --blend B).
# In a device session this runs as the first stage of scripts/gpu_train_session.sh (which
# also returns the decoder at several blends). It needs the ST-LPIPS AlexNet weights: there,
# the folder `make gpu-carry` writes (.gpu-carry/, 9.9 MB, on PYTHONPATH); the whole
# stlpips-pytorch==0.0.2 wheel is 64 MB, over the carry limit beside data/prepared.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
RUN="${RUN:-runs/perceptual-gpu}"
DATA="${DATA:-data/prepared}"
MINUTES="${MINUTES:-0}"
DEVICE="${DEVICE:-cuda}"  # cpu only to check the command line
DISC_START="${DISC_START:-500}"
CROP="${CROP:-256}"
BATCH="${BATCH:-16}"
if [ -z "${STEPS:-}" ]; then
  BUDGET_S="${BUDGET_S:?set STEPS or BUDGET_S}"
  STEPS=$("$PY" bench/train_speed.py --decoder-only --disc-channels 64 --crop "$CROP" \
          --batch "$BATCH" --steps 20 --budget-s "$BUDGET_S" --steps-only)
  echo "perceptual GAN stage: $STEPS steps fit in $BUDGET_S s"
fi
resume=()
[ -f "$RUN/last.pt" ] && resume=(--resume)
"$PY" -m gqtok.train train --data "$DATA" --out "$RUN" --init weights/default.safetensors \
  --decoder-only --device "$DEVICE" --crop "$CROP" --batch "$BATCH" --scale-levels 8 \
  --scale-min 0.25 --scale-max 1.0 --lr 1e-4 --disc-lr 1e-4 --adam-beta1 0.5 --adam-beta2 0.9 \
  --disc-weight 0.75 --disc-start "$DISC_START" --disc-channels 64 --disc-layers 3 \
  --perceptual alex --perceptual-weight 1.0 --seed 0 --steps "$STEPS" --minutes "$MINUTES" \
  --log-every 50 --ckpt-every 500 --eval-every 500 --eval-images 16 "${resume[@]}"
"$PY" -m gqtok.train export --overwrite --half "$RUN" "$RUN/default.decoder-perceptual.safetensors" \
  --name perceptual --blend 1.0
