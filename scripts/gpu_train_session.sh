#!/usr/bin/env bash
# One device command for all the training a lent GPU is for (issue 14, then issue 15), so that
# one machine start serves both; each stage's products are copied to $OUT as soon as it ends.
#   1. the perceptual decoder's GAN stage   scripts/train_perceptual_gpu.sh   PERCEPTUAL_PCT %
#   2. the rate family, G = 8               scripts/train_family.sh g8        G8_PCT %
#   3. the rate family, G = 4               scripts/train_family.sh g4        the rest
# of TOTAL_S seconds of training (default 300; each stage also pays its start-up, photo
# loading and resizing, a short speed calibration (bench/train_speed.py), evaluations and its
# export: budget ~60-100 s a stage on an H200, so 300 s of training fits a 590 s call).
# A stage stopped by its timeout still returns its last checkpoint, exported here.
#
# Prepare here, then run through the device tool (the carry limit is 64 MiB: the ST-LPIPS
# wheel alone is 64 MB, so only its AlexNet weight file travels, 9.9 MB, checked by sha256
# when loaded):
#   make data gpu-carry          # data/prepared (35 MB) and .gpu-carry/ (the weight file)
#   run: OUT=$OUT TOTAL_S=300 bash scripts/gpu_train_session.sh
#        carry ["data/prepared", ".gpu-carry"], timeout_s 590
# At most 8 files come back from $OUT (16 MiB each), so it holds seven: the perceptual decoder
# exported at three blends with the base decoder, perceptual-b{0.5,0.7,1.0}.safetensors (3.5
# MB each; the 34 MB checkpoint cannot come back to blend it here), family-g8.safetensors and
# family-g4.safetensors (6 MB), session.log, and records.tar.gz (every stage's log, metrics.csv
# and cards; rewritten after each stage). Back here: README, "Training on a lent GPU".
#
# STEPS=N runs every stage for N steps instead of a time share (a dry run on the CPU:
# DEVICE=cpu STEPS=2 CROP=32 BATCH=2 DATA=<photos>, as tests/test_gpu_scripts.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
TOTAL_S="${TOTAL_S:-300}"
PERCEPTUAL_PCT="${PERCEPTUAL_PCT:-50}"
G8_PCT="${G8_PCT:-25}"
BLENDS="${BLENDS:-0.5 0.7 1.0}"
DATA="${DATA:-data/prepared}"
PY="${PY:-python3}"
PERCEPTUAL_RUN="${PERCEPTUAL_RUN:-runs/perceptual-gpu}"
FAMILY_RUNS="${FAMILY_RUNS:-runs}"
WORK="${WORK:-runs/gpu-session}"  # logs, metrics and cards, packed into records.tar.gz
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 DATA PY
[ -d .gpu-carry ] && export PYTHONPATH="$PWD/.gpu-carry${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/session.log"; }
pack() { tar czf "$OUT/records.tar.gz" -C "$WORK" . 2>/dev/null || log "could not pack records"; }
[ -d "$DATA/train" ] || { log "$DATA/train missing: make data here and carry data/prepared"; exit 2; }
share() { echo $((TOTAL_S * $1 / 100)); }
budget() { if [ -n "${STEPS:-}" ]; then echo "STEPS=$STEPS"; else echo "BUDGET_S=$1"; fi; }
status=0

if [ -n "${STEPS:-}" ]; then log "start: $STEPS steps a stage, data $DATA"
else log "start: $TOTAL_S s of training, data $DATA"; fi
# shellcheck disable=SC2046
env $(budget "$(share "$PERCEPTUAL_PCT")") RUN="$PERCEPTUAL_RUN" \
  timeout $(($(share "$PERCEPTUAL_PCT") + 150)) bash scripts/train_perceptual_gpu.sh \
  > "$WORK/perceptual.log" 2>&1 || { status=$?; log "perceptual stage ended with status $status"; }
if [ -f "$PERCEPTUAL_RUN/last.pt" ]; then
  for b in $BLENDS; do  # the decoder at each blend with the base: the blend is chosen here later
    mkdir -p "$WORK/b$b"
    "$PY" -m gqtok.train export --overwrite --half "$PERCEPTUAL_RUN" \
      "$WORK/b$b/default.decoder-perceptual.safetensors" --name perceptual --blend "$b" \
      >> "$WORK/perceptual.log" 2>&1 \
      && mv "$WORK/b$b/default.decoder-perceptual.safetensors" "$OUT/perceptual-b$b.safetensors" \
      || log "perceptual export at blend $b failed"
  done
  cp "$PERCEPTUAL_RUN/metrics.csv" "$WORK/perceptual.metrics.csv" 2>/dev/null
fi
log "perceptual stage done: $(tail -n 1 "$WORK/perceptual.log")"
pack

rest=$((100 - PERCEPTUAL_PCT - G8_PCT))
for member in g8 g4; do
  pct=$G8_PCT
  [ "$member" = g4 ] && pct=$rest
  run="$FAMILY_RUNS/family-$member"
  # shellcheck disable=SC2046
  env $(budget "$(share "$pct")") MEMBER="$member" RUN="$run" \
    timeout $(($(share "$pct") + 150)) bash scripts/train_family.sh \
    > "$WORK/family-$member.log" 2>&1 || { status=$?; log "family $member ended with status $status"; }
  if [ ! -f "$run/model.safetensors" ] && [ -f "$run/last.pt" ]; then  # stopped before export
    "$PY" -m gqtok.train export --overwrite --half "$run" "$run/model.safetensors" \
      --name "gqtok-f8c16-$member-v1" --token-stats-images 200 >> "$WORK/family-$member.log" 2>&1 \
      || log "family $member: export of its last checkpoint failed"
  fi
  [ -f "$run/model.safetensors" ] && cp "$run/model.safetensors" "$OUT/family-$member.safetensors"
  for f in model.json metrics.csv; do
    [ -f "$run/$f" ] && cp "$run/$f" "$WORK/family-$member.$f"
  done
  log "family $member done: $(tail -n 1 "$WORK/family-$member.log")"
  pack
done
ls -la "$OUT" >> "$OUT/session.log"
exit "$status"
