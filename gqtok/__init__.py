"""gqtok: image tokenizer and compressor built on Gaussian Quant (GQ).

The Python API mirrors the CLI: ``load_model`` gives a model that turns images into token
grids and back; ``codebook`` / ``quantize`` / ``dequantize`` are the exact GQ primitives.
Heavy modules (torch) load on first use, so ``gqtok info`` and ``--help`` start instantly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    DecompressionBombError,
    FormatError,
    GqtokError,
    InputError,
    ModelError,
    OutputError,
    UnsupportedVersionError,
)

__version__ = "0.1.0"

_LAZY = {
    "codebook": "codebooks",
    "codebook_sha256": "codebooks",
    "Model": "model",
    "QuantizerConfig": "model",
    "load_model": "model",
    "quantize": "quantizer",
    "dequantize": "quantizer",
    "encode_file": "codec",
    "encode_pictures": "codec",
    "decode_bytes": "codec",
    "Tokens": "codec",
    "read_image": "imageio",
}

if TYPE_CHECKING:
    from .codebooks import codebook, codebook_sha256
    from .codec import Tokens, decode_bytes, encode_file, encode_pictures
    from .imageio import read_image
    from .model import Model, QuantizerConfig, load_model
    from .quantizer import dequantize, quantize


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'gqtok' has no attribute {name!r}")


__all__ = [
    "DecompressionBombError",
    "FormatError",
    "GqtokError",
    "InputError",
    "Model",
    "ModelError",
    "OutputError",
    "QuantizerConfig",
    "Tokens",
    "UnsupportedVersionError",
    "__version__",
    "codebook",
    "codebook_sha256",
    "decode_bytes",
    "dequantize",
    "encode_file",
    "encode_pictures",
    "load_model",
    "quantize",
    "read_image",
]
