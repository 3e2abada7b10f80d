#!/usr/bin/env bash
# The recipe of the default's coarse-codebook model (weights/gqtok-f8c16-cpu-v3-coarse.*):
# gqtok-f8c16-cpu-v3 with its decoder fine-tuned on the GQ codewords of small codebooks.
# Rate control codes quality Q < 75 with codebooks smaller than the model's own (K = 64 at
# Q = 0), whose codewords lie farther from the encoder's posterior than anything the decoder
# saw in training; this decoder learnt them (README, "Rate control").
#   train:  --decoder-only from the default (encoder, codebook, entropy models frozen), L1,
#           each step at a K drawn log-uniformly from [SIZE_MIN, SIZE_MAX], Adam 1e-4
#           cosine-annealed to 1e-5 over STEPS steps of 8 crops of 128 px
#   export: --own-decoder: a whole model, the default with this decoder as its own (same
#           tokens and bytes, its own name and weights hash), half precision like the default
#   link:   the default's perceptual decoder served beside it too (same tokens), and the
#           default's card naming it for K < BELOW (tensors untouched: same weights hash)
# Usage: scripts/train_coarse.sh [MINUTES]  -- resumable: run again to continue.
#        RELINK=1 scripts/train_coarse.sh   -- only rebuild + link (after make fit-context)
# CPU, 2 threads: ~0.6 s a step (~32 min for 3 000 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-0}"
STEPS="${STEPS:-3000}"
SIZE_MIN="${SIZE_MIN:-64}"
SIZE_MAX="${SIZE_MAX:-16384}"
BELOW="${BELOW:-6144}"  # where it stops beating the default's own decoder (README): Q <= 10
BASE="${BASE:-weights/default.safetensors}"
NAME="${NAME:-gqtok-f8c16-cpu-v3-coarse}"
RUN="${RUN:-runs/coarse}"
OUT="${OUT:-weights/$NAME.safetensors}"
PY="${PY:-.venv/bin/python}"

reached() { "$PY" -m gqtok.train reached "$RUN"; }  # the step its checkpoint reached (0: none)
resume() { [ -f "$RUN/last.pt" ] && echo --resume || true; }

if [ "${RELINK:-0}" = 1 ]; then
  # after `make fit-context` (or `make train-perceptual`): the default's entropy models (or
  # perceptual decoder) changed; rebuild the coarse model from its own file's decoder on the
  # default as it is now, then link again below (no training, no run needed)
  "$PY" - "$BASE" "$OUT" <<'PY'
import sys
from pathlib import Path

from gqtok.model import load_model_file, save_with_decoder

base, old = load_model_file(Path(sys.argv[1])), load_model_file(Path(sys.argv[2]))
save_with_decoder(base, old.decoder, old.card, sys.argv[2], overwrite=True)
PY
elif [ "$(reached)" -lt "$STEPS" ]; then
  # shellcheck disable=SC2046
  "$PY" -m gqtok.train train --data data/prepared --out "$RUN" --init "$BASE" --decoder-only \
    --perceptual none --disc-start 1000000000 --size-min "$SIZE_MIN" --size-max "$SIZE_MAX" \
    --crop 128 --batch 8 --lr 1e-4 --lr-schedule cosine --lr-min 1e-5 --warmup-steps 100 \
    --scale-min 0.25 --scale-max 1.0 --seed 0 --threads 2 --log-every 100 --ckpt-every 500 \
    --eval-every 0 --steps "$STEPS" --minutes "$MINUTES" $(resume)
  [ "$(reached)" -ge "$STEPS" ] || { echo "not finished: run again"; exit 0; }
fi
[ "${RELINK:-0}" = 1 ] || \
  "$PY" -m gqtok.train export --overwrite --own-decoder "$RUN" "$OUT" --name "$NAME"
"$PY" - "$BASE" "$OUT" "$BELOW" <<'PY'
import sys
from pathlib import Path

from gqtok.model import copy_decoder, load_model_file, save_with_coarse

base, member = load_model_file(Path(sys.argv[1])), load_model_file(Path(sys.argv[2]))
if "perceptual" in base.decoders:
    copy_decoder(base, "perceptual", member, overwrite=True)
save_with_coarse(base, member, int(sys.argv[3]), sys.argv[1], overwrite=True)
print(f"{sys.argv[1]}: codes K < {sys.argv[3]} with {member.name}")
PY
