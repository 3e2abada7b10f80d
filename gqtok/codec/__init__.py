"""The codec: images to GQ tokens to .gq bytes and back, in bounded memory.

``tokens`` (the grid), ``budget`` (memory estimates), ``windowed`` (large images in windows),
``engine`` (whole-image network + GQ passes), ``bytes`` (entropy coding and the container).
The names below are the codec's public API; import them from here.
"""

from gqtok.codec.bytes import (
    Encoded,
    TokenFile,
    check_compatible,
    decode_bytes,
    encode_file,
    encode_pictures,
    pack_tokens,
    read_token_file,
    render_token_file,
    unpack_tokens,
)
from gqtok.codec.engine import decode_to_array, decode_tokens, encode_arrays, encode_pil
from gqtok.codec.tokens import Tokens
from gqtok.codec.windowed import decode_large, encode_large

__all__ = [
    "Encoded",
    "TokenFile",
    "Tokens",
    "check_compatible",
    "decode_bytes",
    "decode_large",
    "decode_tokens",
    "decode_to_array",
    "encode_arrays",
    "encode_file",
    "encode_large",
    "encode_pictures",
    "encode_pil",
    "pack_tokens",
    "read_token_file",
    "render_token_file",
    "unpack_tokens",
]
