#!/usr/bin/env bash
# The recipe of the embedded default model (weights/default.safetensors), in three stages.
# Usage: scripts/train_default.sh [MINUTES]   -- resumable: run again to continue training.
#   stage 1 (runs/default):    random init, lr 4e-4 constant, STEPS1=8169 steps, 128 px crops
#                              -> runs/default/model.safetensors (= gqtok-f8c16-cpu-v1), CPU
#   stage 2 (runs/default-v2): starts from stage 1's model (weights + TDC multipliers),
#                              lr 2e-4 cosine-decayed to 1e-5 over STEPS2 steps, CPU
#                              -> runs/default-v2/model.safetensors (= gqtok-f8c16-cpu-v2)
#   stage 3 (runs/default-v3): one CUDA GPU (scripts/train_stage3_gpu.sh): starts from stage 2's
#                              model, 256 px crops, batch 32, cosine 3e-4 -> 1e-5 over
#                              STEPS3A=12315 steps, then resumed with the schedule stretched to
#                              STEPS3B=19500 steps (lr back up to 9.7e-5, annealed again)
#                              -> weights/default.safetensors (gqtok-f8c16-cpu-v3)
# MINUTES (0 = no limit) only bounds one invocation of each stage; a stage that stopped early is
# continued by the next invocation and only a finished stage is exported. Stage 3 runs on CPU
# too (--device cuda is its only GPU need: edit it), but takes days there instead of 11 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-0}"
STEPS1="${STEPS1:-8169}"
STEPS2="${STEPS2:-3400}"
STEPS3A="${STEPS3A:-12315}"
STEPS3B="${STEPS3B:-19500}"
PY=.venv/bin/python
COMMON=(--data data/prepared --crop 128 --batch 8 --kl-weight 0.1 --perceptual none
        --scale-min 0.25 --scale-max 1.0 --seed 0 --threads 2
        --log-every 50 --ckpt-every 250 --eval-every 500 --eval-images 16 --minutes "$MINUTES")

# Prints the step a run's checkpoint reached (0 when there is none; read on the CPU, so a GPU
# run's checkpoint, which holds CUDA RNG state, reads here too).
reached() { "$PY" -m gqtok.train reached "$1"; }

stage() {  # stage RUN STEPS ARGS...
  local run="$1" steps="$2"; shift 2
  local resume=()
  [ -f "$run/last.pt" ] && resume=(--resume)
  "$PY" -m gqtok.train train "${COMMON[@]}" --out "$run" --steps "$steps" "$@" "${resume[@]}" \
    || exit $?  # a failure, not a time budget: stop the script with its status
  [ "$(reached "$run")" -ge "$steps" ]
}

if [ ! -f runs/default/model.safetensors ]; then
  stage runs/default "$STEPS1" --lr 4e-4 || { echo "stage 1 not finished: run again"; exit 0; }
  "$PY" -m gqtok.train export --overwrite runs/default runs/default/model.safetensors \
    --name gqtok-f8c16-cpu-v1 --half
fi
if [ ! -f runs/default-v2/model.safetensors ]; then
  stage runs/default-v2 "$STEPS2" --lr 2e-4 --lr-schedule cosine --lr-min 1e-5 \
    --init runs/default/model.safetensors || { echo "stage 2 not finished: run again"; exit 0; }
  "$PY" -m gqtok.train export --overwrite runs/default-v2 runs/default-v2/model.safetensors \
    --name gqtok-f8c16-cpu-v2 --half --token-stats-images 200
fi
stage3() {  # stage3 STEPS: run or resume stage 3 until it reaches STEPS, unless it already has
  [ "$(reached runs/default-v3)" -ge "$1" ] && return 0
  STEPS="$1" MINUTES="$MINUTES" PY="$PY" scripts/train_stage3_gpu.sh \
    runs/default-v2/model.safetensors runs/default-v3 || exit $?  # a failure, not a time budget
  [ "$(reached runs/default-v3)" -ge "$1" ]
}
stage3 "$STEPS3A" || { echo "stage 3 not finished: run again"; exit 0; }
stage3 "$STEPS3B" || { echo "stage 3 not finished: run again"; exit 0; }
"$PY" -m gqtok.train export --overwrite runs/default-v3 weights/default.safetensors \
  --name gqtok-f8c16-cpu-v3 --half --token-stats-images 200
# The context entropy model (.gq format version 2): ~3 min on 2 cores, same as `make fit-context`.
"$PY" -m gqtok fit-context data/prepared/train --val data/prepared/val \
  -o weights/default.safetensors --overwrite
