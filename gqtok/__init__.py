"""gqtok: image tokenizer and compressor built on Gaussian Quant (GQ).

The Python API mirrors the CLI: ``load_model`` gives a model that turns images into token
grids and back; ``codebook`` / ``quantize`` / ``dequantize`` are the exact GQ primitives.
Heavy modules (torch) load on first use, so ``gqtok info`` and ``--help`` start instantly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gqtok.errors import (
    DecompressionBombError,
    FormatError,
    GqtokError,
    InputError,
    ModelError,
    OutputError,
    UnsupportedVersionError,
)
from gqtok.version import __version__

_LAZY = {
    "codebook": "quant.codebook",
    "codebook_sha256": "quant.codebook",
    "Model": "model",
    "QuantizerConfig": "quant.config",
    "load_model": "zoo.load",
    "save_decoder": "model",
    "decoder_card": "model",
    "quantize": "quant.search",
    "dequantize": "quant.search",
    "encode_file": "codec",
    "encode_pictures": "codec",
    "decode_bytes": "codec",
    "Tokens": "codec",
    "read_image": "io.images",
    "encode": "api",
    "encode_batch": "api",
    "decode": "api",
    "decode_array": "api",
    "decode_tensor": "api",
    "export_tokens": "export",
    "merge_export": "export",
    "iter_entries": "format.shards",
    "read_shard": "format.shards",
    "encode_large": "codec",
    "decode_large": "codec",
}

if TYPE_CHECKING:
    from gqtok.api import decode, decode_array, decode_tensor, encode, encode_batch
    from gqtok.codec import (
        Tokens,
        decode_bytes,
        decode_large,
        encode_file,
        encode_large,
        encode_pictures,
    )
    from gqtok.export import export_tokens, merge_export
    from gqtok.format.shards import iter_entries, read_shard
    from gqtok.io.images import read_image
    from gqtok.model import Model, decoder_card, save_decoder
    from gqtok.quant.codebook import codebook, codebook_sha256
    from gqtok.quant.config import QuantizerConfig
    from gqtok.quant.search import dequantize, quantize
    from gqtok.zoo.load import load_model


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
    "decoder_card",
    "dequantize",
    "encode",
    "encode_batch",
    "encode_file",
    "encode_large",
    "encode_pictures",
    "export_tokens",
    "iter_entries",
    "load_model",
    "merge_export",
    "quantize",
    "read_image",
    "read_shard",
    "save_decoder",
]
