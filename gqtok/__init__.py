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
    "encode": "api",
    "encode_batch": "api",
    "decode": "api",
    "decode_array": "api",
    "decode_tensor": "api",
    "export_tokens": "export",
    "iter_entries": "shards",
    "read_shard": "shards",
    "encode_large": "largeimage",
    "decode_large": "largeimage",
}

if TYPE_CHECKING:
    from .api import decode, decode_array, decode_tensor, encode, encode_batch
    from .codebooks import codebook, codebook_sha256
    from .codec import Tokens, decode_bytes, encode_file, encode_pictures
    from .export import export_tokens
    from .imageio import read_image
    from .largeimage import decode_large, encode_large
    from .model import Model, QuantizerConfig, load_model
    from .quantizer import dequantize, quantize
    from .shards import iter_entries, read_shard


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
    "decode",
    "decode_array",
    "decode_bytes",
    "decode_large",
    "decode_tensor",
    "dequantize",
    "encode",
    "encode_batch",
    "encode_file",
    "encode_large",
    "encode_pictures",
    "export_tokens",
    "iter_entries",
    "load_model",
    "quantize",
    "read_image",
    "read_shard",
]
