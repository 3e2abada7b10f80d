"""Rough CPU cost of a model, so users can pick one before downloading 1 GB of weights.

Counted, not timed: floating-point operations of one encode + decode of a 256x256 image
(network FLOPs from torch's FLOP counter on meta tensors, which allocates nothing, plus the
GQ search GEMM), divided by an assumed float32 throughput per CPU thread. Timing the released
networks would take tens of seconds per model; a count is instant and scales with image area.

torch is imported only to count a network that is not in the precounted table, so listing the
shipped and released models (``gqtok models``) needs no torch.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any

GFLOPS_PER_THREAD = 20.0  # assumed sustained float32 rate of one modern x86 core in torch
SIDE = 256

# Counted once with _count() for the released configs (~1 s each) and the bundled default
# model (weights/default.json); other networks are counted on first use, which needs torch.
_KNOWN = {
    (
        "unet",
        '{"attn_resolutions": [], "ch": 32, "ch_mult": [2, 2, 4], "double_z": true,'
        ' "in_channels": 3, "num_res_blocks": 1, "out_ch": 3, "resolution": 256, "stem": 2,'
        ' "z_channels": 16}',
    ): 16.232,
    (
        "unet",
        '{"attn_resolutions": [32], "ch": 128, "ch_mult": [1, 2, 4, 4], "double_z": true,'
        ' "in_channels": 3, "num_res_blocks": 2, "out_ch": 3, "resolution": 256, "stem": 1,'
        ' "z_channels": 16}',
    ): 908.134,
    (
        "vit",
        '{"dim_ffn_output": 3072, "double_z": true, "heads": 12, "image_size": 256,'
        ' "layers": 12, "mlp_ratio": 4, "patch_size": 8, "width": 768, "z_channels": 16}',
    ): 431.619,
}


def _key(arch: str, network: dict[str, Any]) -> tuple[str, str]:
    import json

    from gqtok.nets.config import CONFIGS

    cfg = CONFIGS[arch].from_dict(network)
    return arch, json.dumps(cfg.to_dict(), sort_keys=True)


@lru_cache(maxsize=16)
def _count(arch: str, network_json: str, side: int) -> float:
    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gqtok.model import ARCHS

    config_cls, encoder_cls, decoder_cls = ARCHS[arch]
    cfg = config_cls.from_dict(json.loads(network_json))
    with torch.device("meta"), torch.inference_mode():
        enc, dec = encoder_cls(cfg).eval(), decoder_cls(cfg).eval()
        x = torch.empty(1, 3, side, side)
        with FlopCounterMode(display=False) as counter:
            z = enc(x)
            dec(z[:, : cfg.z_channels])
    return counter.get_total_flops() / 1e9


def network_gflops(arch: str, network: dict[str, Any], side: int = SIDE) -> float:
    """GFLOPs of encoder + decoder on one side x side image."""
    key = _key(arch, network)
    if side == SIDE and key in _KNOWN:
        return _KNOWN[key]
    return _count(key[0], key[1], side)


def search_gflops(network: dict[str, Any], quantizer: dict[str, Any], side: int = SIDE) -> float:
    """GFLOPs of GQ's shortlist GEMM: every token against all K codewords, 2G terms each."""
    f = int(network.get("patch_size", 0)) or int(network.get("stem", 1)) * 2 ** (
        len(network.get("ch_mult", [1])) - 1
    )
    dim = int(quantizer.get("dim", 16))
    tokens = (side // f) ** 2 * int(network.get("z_channels", 16)) // dim
    return 2.0 * tokens * int(quantizer.get("size", 65536)) * 2 * dim / 1e9


def default_threads() -> int:
    """torch's thread count if torch is loaded, else the CPUs this process may run on (what
    torch would use on most machines), so an estimate does not load torch for one number."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def estimate(card: dict[str, Any], threads: int | None = None, side: int = SIDE) -> dict[str, Any]:
    """{"gflops", "cpu_seconds", "threads"} for encode + decode of one image (an estimate)."""
    arch = str(card.get("arch", "unet"))
    gflops = network_gflops(arch, card["network"], side) + search_gflops(
        card["network"], card.get("quantizer", {}), side
    )
    n = threads or default_threads()
    return {
        "gflops": round(gflops, 1),
        "cpu_seconds": round(gflops / (GFLOPS_PER_THREAD * n), 1),
        "threads": n,
    }
