#!/usr/bin/env bash
# The rate family (issue 15): the default's network retrained for more tokens per position,
# G = 8 (2 tokens of 16 bits per 8x8 block: ~0.5 bpp before entropy coding) or G = 4 (~1 bpp),
# K = 2^16, warm-started from the default's weights (train --init: weights only, the TDC
# multipliers start over for the new target).
# Usage: MEMBER=g8|g4 STEPS=N scripts/train_family.sh        (or BUDGET_S=seconds instead of STEPS)
#   DEVICE  cuda (default) or cpu; CROP / BATCH default 256 / 32 on cuda, 128 / 8 on cpu
#   MINUTES wall-clock bound of this invocation (0 = none); run again to resume
#   LR      peak learning rate of the cosine schedule (default 3e-4)
#   PY      the Python with torch (default python3)
#   DATA    prepared photos (default data/prepared), RUN the run folder (default runs/family-$MEMBER)
# Writes runs/family-$MEMBER/{last.pt,metrics.csv,model.safetensors}. Needs only torch, numpy,
# pillow and safetensors (a GPU machine without constriction); then, where gqtok is installed:
#   gqtok fit-context data/prepared/train --val data/prepared/val \
#       -m runs/family-g8/model.safetensors -o weights/family-g8.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
MEMBER="${MEMBER:?set MEMBER=g8 or MEMBER=g4}"
case "$MEMBER" in
  g8) DIM=8 ;;
  g4) DIM=4 ;;
  *) echo "MEMBER must be g8 or g4" >&2; exit 2 ;;
esac
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
MINUTES="${MINUTES:-0}"
LR="${LR:-3e-4}"
INIT="${INIT:-weights/default.safetensors}"
DATA="${DATA:-data/prepared}"
RUN="${RUN:-runs/family-$MEMBER}"
if [ "$DEVICE" = cuda ]; then CROP="${CROP:-256}"; BATCH="${BATCH:-32}"
else CROP="${CROP:-128}"; BATCH="${BATCH:-8}"; fi
if [ -z "${STEPS:-}" ]; then
  BUDGET_S="${BUDGET_S:?set STEPS or BUDGET_S}"
  STEPS=$("$PY" bench/train_speed.py --crop "$CROP" --batch "$BATCH" --steps 30 \
          --budget-s "$BUDGET_S" --steps-only)
  echo "family $MEMBER: $STEPS steps fit in $BUDGET_S s"
fi
resume=()
[ -f "$RUN/last.pt" ] && resume=(--resume)
"$PY" -m gqtok.train train --data "$DATA" --out "$RUN" --init "$INIT" --device "$DEVICE" \
  --dim "$DIM" --codebook-size 65536 \
  --crop "$CROP" --batch "$BATCH" --scale-levels 8 --scale-min 0.25 --scale-max 1.0 \
  --lr "$LR" --lr-schedule cosine --lr-min 1e-5 --warmup-steps 200 --kl-weight 0.1 \
  --perceptual none --seed 0 --steps "$STEPS" --minutes "$MINUTES" \
  --log-every 100 --ckpt-every 500 --eval-every 500 --eval-images 16 "${resume[@]}"
"$PY" -m gqtok.train export --overwrite "$RUN" "$RUN/model.safetensors" \
  --name "gqtok-f8c16-$MEMBER-v1" --half --token-stats-images 200
