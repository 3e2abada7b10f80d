#!/usr/bin/env bash
# The recipe of the embedded default model's perceptual decoder
# (weights/default.decoder-perceptual.safetensors): decoder-only fine-tuning of
# gqtok-f8c16-cpu-v3's decoder on its own GQ tokens (encoder, codebook, entropy model frozen).
#   stage A: L1 + ST-LPIPS (Alex), + a patch discriminator (hinge, adaptive weight) from step
#            300, Adam 1e-4 constant, to STEPS_A steps
#   stage B: resumed without the adversarial term (the small discriminator had stopped telling
#            real from decoded crops, see README), rate cosine-annealed to 1e-6 by STEPS_B
# then exported (half precision) next to the model, bound to it by its weights hash, as the
# network interpolation BLEND of the trained decoder with the base one (0.7 measured best).
# Usage: scripts/train_perceptual.sh [MINUTES]  -- resumable: run again to continue.
# CPU, 2 threads: ~1.6 s a step of 8 crops of 128 px (bench/train_speed.py --decoder-only).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-0}"
STEPS_A="${STEPS_A:-2160}"
STEPS_B="${STEPS_B:-3200}"
BLEND="${BLEND:-0.7}"  # stored: 0.3 x the base decoder + 0.7 x the trained one (README)
RUN="${RUN:-runs/perceptual}"
OUT="${OUT:-weights/default.decoder-perceptual.safetensors}"
PY="${PY:-.venv/bin/python}"
COMMON=(--data data/prepared --out "$RUN" --init weights/default.safetensors --decoder-only
        --crop 128 --batch 8 --lr 1e-4 --disc-lr 1e-4 --disc-weight 0.75 --disc-channels 32
        --disc-layers 3 --perceptual alex --perceptual-weight 1.0 --scale-min 0.25
        --scale-max 1.0 --seed 0 --threads 2 --log-every 25 --ckpt-every 100 --eval-every 250
        --eval-images 16 --minutes "$MINUTES")

reached() { "$PY" -m gqtok.train reached "$RUN"; }  # the step its checkpoint reached (0: none)
resume() { [ -f "$RUN/last.pt" ] && echo --resume || true; }

if [ "$(reached)" -lt "$STEPS_A" ]; then
  # shellcheck disable=SC2046
  "$PY" -m gqtok.train train "${COMMON[@]}" --steps "$STEPS_A" --disc-start 300 $(resume)
  [ "$(reached)" -ge "$STEPS_A" ] || { echo "stage A not finished: run again"; exit 0; }
fi
if [ "$(reached)" -lt "$STEPS_B" ]; then
  "$PY" -m gqtok.train train "${COMMON[@]}" --steps "$STEPS_B" --disc-start 1000000000 \
    --lr-schedule cosine --lr-min 1e-6 --resume
  [ "$(reached)" -ge "$STEPS_B" ] || { echo "stage B not finished: run again"; exit 0; }
fi
"$PY" -m gqtok.train export --overwrite --half "$RUN" "$OUT" --name perceptual --blend "$BLEND"
