"""Where a run trained, described for the model card."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def hardware_string(device: torch.device) -> str:
    """Human-readable description of where training ran (goes into the model card)."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    what = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        what = f"{what}, {torch.get_num_threads()} threads"
    return f"{what}; {platform.system()} {platform.machine()}; torch {torch.__version__}"
