#!/usr/bin/env bash
# One device session for the rate family: train G = 8, then G = 4 (scripts/train_family.sh)
# on a CUDA GPU within BUDGET_S seconds of training each, export both models, and copy what
# comes back to $OUT (8 files: each member's model.safetensors (6 MB, half), card,
# metrics.csv and log; the 34 MB checkpoints stay behind: a later session warm-starts from the model).
# Run through the device tool with data/prepared carried (make data here first, 36 MB):
#   OUT=$OUT BUDGET_S=210 bash scripts/gpu_family_session.sh
# Then here: gqtok fit-context data/prepared/train --val data/prepared/val \
#   -m <model> -o weights/family-g8.safetensors   (and g4), and measure with gqtok compare.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
BUDGET_S="${BUDGET_S:-210}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f data/prepared/manifest.json ] || { echo "data/prepared missing: carry it" >&2; exit 2; }
status=0
for member in g8 g4; do
  MEMBER="$member" BUDGET_S="$BUDGET_S" timeout $((BUDGET_S + 180)) bash scripts/train_family.sh \
    2>&1 | tee "$OUT/family-$member.log" || status=$?
  for f in model.safetensors model.json metrics.csv; do
    [ -f "runs/family-$member/$f" ] && cp "runs/family-$member/$f" "$OUT/family-$member.${f}"
  done
done
ls -la "$OUT"
exit "$status"
