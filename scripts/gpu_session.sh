#!/usr/bin/env bash
# One GPU session, from the repository root of a checkout on a CUDA machine (no internet):
#   1. scripts/gpu_check.py     the CUDA search must give the CPU's tokens (exit 1 if not)
#   2. bench/gpu_throughput.py  fp32, then bf16: images/s and tokens/s, search vs dense
#   3. bench/decode_workers.py  `gqtok decode` of 64 files at --workers 0, 1, 2
# Everything goes under $OUT (default ./gpu-out), eight files: session.log (machine, steps),
# STEP.log (each step's output, the markdown tables included) and STEP.json. Each step
# has a `timeout`, so the session ends within about 8 minutes; a step that times out is
# logged and the next one still runs. Exit status: gpu_check's (0: exact, 1: mismatch,
# 2: no CUDA here, 124: it timed out).
#
# Python: $PYTHON, else the first of .venv/bin/python and python3 whose torch sees CUDA.
# Wheels in .whl/ are installed into a temporary folder first: constriction (the entropy
# coder) is needed by step 3 and by gpu_check's .gq round trip, which are skipped without it.
# Fetch it where pip works, for the device's Python (3.12 on this project's H200 image):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl constriction==0.5.0
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d)
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$site"
fi
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python python3; do
        if "$candidate" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null
        then
            PY=$candidate
            break
        fi
    done
fi
if [ -z "$PY" ]; then
    echo "no Python here whose torch sees a CUDA device" | tee "$OUT/session.log"
    exit 2
fi

{
    date -u
    nvidia-smi 2>&1 || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(0))'
    git log -1 --oneline 2>/dev/null || true
} >"$OUT/session.log" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, remember the status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/session.log"
    return $rc
}

step gpu_check 120 "$PY" scripts/gpu_check.py --json "$OUT/gpu_check.json"
check=$?
step bench_fp32 150 "$PY" bench/gpu_throughput.py --device cuda --precision fp32 \
    --json "$OUT/bench_fp32.json"
step bench_bf16 90 "$PY" bench/gpu_throughput.py --device cuda --precision bf16 \
    --json "$OUT/bench_bf16.json"
if "$PY" -c 'import constriction' 2>/dev/null; then
    step decode_workers 90 "$PY" bench/decode_workers.py --device cuda --files 64 --workers 0,1,2
else
    echo "decode_workers: skipped (no constriction: see the top of this script)" \
        | tee -a "$OUT/session.log" "$OUT/decode_workers.log"
fi
grep -E '^(FAIL|[0-9]+ checks)' "$OUT/gpu_check.log"
grep -E '^(\||device:)' "$OUT/bench_fp32.log" "$OUT/bench_bf16.log"
grep -E '^--workers' "$OUT/decode_workers.log"
exit $check
