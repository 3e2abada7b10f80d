"""gqtok: image tokenizer and compressor built on Gaussian Quant (GQ).

The Python API mirrors the CLI: ``load_model`` gives a model that turns images into token
grids and back; ``codebook`` / ``quantize`` / ``dequantize`` are the exact GQ primitives.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .codebook import codebook, codebook_sha256
from .errors import (
    DecompressionBombError,
    FormatError,
    GqtokError,
    InputError,
    ModelError,
    OutputError,
    UnsupportedVersionError,
)
from .model import Model, QuantizerConfig, load_model
from .quantizer import dequantize, quantize

__all__ = [
    "DecompressionBombError",
    "FormatError",
    "GqtokError",
    "InputError",
    "Model",
    "ModelError",
    "OutputError",
    "QuantizerConfig",
    "UnsupportedVersionError",
    "__version__",
    "codebook",
    "codebook_sha256",
    "dequantize",
    "load_model",
    "quantize",
]
