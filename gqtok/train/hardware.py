"""Where a run trains: the torch device it asked for, and a description for the model card."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


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
