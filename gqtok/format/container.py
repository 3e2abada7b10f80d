"""The .gq container: a compact, versioned, self-describing header plus entropy-coded tokens.

Layout of format version 1 (all integers little-endian; see docs/format.md for the full spec):

    magic "GQTK" | version u8 | flags u8 | layout u8 | pad_mode u8
    model_id_len u8 | model_id utf-8 | weights_hash 8B
    dim u16 | size u32 | seed u64 | beta f32 | codebook_fingerprint 8B
    width u32 | height u32 | groups u16 | grid_h u32 | grid_w u32
    entropy_kind u8 | entropy_fingerprint 8B
    token_len u32 | alpha_len u32
    token payload | alpha payload | crc32 u32 (over everything before it)

Parsing validates every field and length before anything is allocated, so corrupt or hostile
files end in a FormatError, never in a crash or a huge allocation.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from gqtok.errors import FormatError, UnsupportedVersionError

MAGIC = b"GQTK"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

FLAG_ALPHA = 0x01
FLAG_GRAY = 0x02
_KNOWN_FLAGS = FLAG_ALPHA | FLAG_GRAY

LAYOUTS = ("bchw", "blc")
PAD_MODES = ("replicate", "reflect")
ENTROPY_KINDS = ("uniform", "frequency")

_PRE = struct.Struct("<4sBBBBB")  # magic, version, flags, layout, pad_mode, model_id_len
_MID = struct.Struct("<8sHIQf8sIIHIIB8sII")
MAX_SIDE = 1 << 20  # a million pixels per side: far beyond any real image


@dataclass(frozen=True)
class Header:
    """Everything needed to decode a file, besides the named model's weights."""

    model_id: str
    weights_hash: bytes
    dim: int
    size: int
    seed: int
    beta: float
    codebook_fingerprint: bytes
    width: int
    height: int
    groups: int
    grid_h: int
    grid_w: int
    entropy_kind: str
    entropy_fingerprint: bytes
    layout: str = "bchw"
    pad_mode: str = "replicate"
    has_alpha: bool = False
    grayscale: bool = False
    version: int = FORMAT_VERSION

    @property
    def num_tokens(self) -> int:
        return self.groups * self.grid_h * self.grid_w

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("weights_hash", "codebook_fingerprint", "entropy_fingerprint"):
            d[key] = d[key].hex()
        return d


def pack(header: Header, tokens: bytes, alpha: bytes = b"") -> bytes:
    """Serialise a header and its payloads into the bytes of a .gq file."""
    model_id = header.model_id.encode("utf-8")
    if not 1 <= len(model_id) <= 255:
        raise ValueError("model id must be 1..255 bytes of UTF-8")
    if bool(alpha) != header.has_alpha:
        raise ValueError("alpha payload present iff header.has_alpha")
    flags = (FLAG_ALPHA if header.has_alpha else 0) | (FLAG_GRAY if header.grayscale else 0)
    out = bytearray(
        _PRE.pack(
            MAGIC,
            FORMAT_VERSION,
            flags,
            LAYOUTS.index(header.layout),
            PAD_MODES.index(header.pad_mode),
            len(model_id),
        )
    )
    out += model_id
    out += _MID.pack(
        header.weights_hash,
        header.dim,
        header.size,
        header.seed,
        header.beta,
        header.codebook_fingerprint,
        header.width,
        header.height,
        header.groups,
        header.grid_h,
        header.grid_w,
        ENTROPY_KINDS.index(header.entropy_kind),
        header.entropy_fingerprint,
        len(tokens),
        len(alpha),
    )
    out += tokens
    out += alpha
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def unpack(data: bytes, name: str | None = None) -> tuple[Header, bytes, bytes]:
    """Parse and verify a .gq file; returns (header, token payload, alpha payload)."""

    def bad(msg: str) -> FormatError:
        return FormatError(msg, name)

    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise bad("not a .gq file (bad magic bytes)")
    if len(data) < _PRE.size:
        raise bad("truncated .gq file (header incomplete)")
    _, version, flags, layout, pad_mode, id_len = _PRE.unpack_from(data, 0)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"unsupported .gq format version {version} (this gqtok reads version"
            f" {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade gqtok to decode it",
            name,
        )
    pos = _PRE.size
    if len(data) < pos + id_len + _MID.size + 4:
        raise bad("truncated .gq file (header incomplete)")
    if flags & ~_KNOWN_FLAGS or layout >= len(LAYOUTS) or pad_mode >= len(PAD_MODES):
        raise bad("corrupt .gq header (unknown flag, layout or padding code)")
    if id_len == 0:
        raise bad("corrupt .gq header (empty model id)")
    try:
        model_id = data[pos : pos + id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise bad("corrupt .gq header (model id is not UTF-8)") from None
    pos += id_len
    (
        weights_hash,
        dim,
        size,
        seed,
        beta,
        cb_fp,
        width,
        height,
        groups,
        grid_h,
        grid_w,
        ent_kind,
        ent_fp,
        token_len,
        alpha_len,
    ) = _MID.unpack_from(data, pos)
    pos += _MID.size
    expected = pos + token_len + alpha_len + 4
    if expected != len(data):
        what = "truncated" if expected > len(data) else "has trailing bytes"
        raise bad(f"corrupt .gq file ({what}: {len(data)} bytes, header says {expected})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise bad("corrupt .gq file (checksum mismatch)")
    if ent_kind >= len(ENTROPY_KINDS):
        raise bad(f"corrupt .gq header (unknown entropy model {ent_kind})")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise bad(f"corrupt .gq header (image size {width}x{height})")
    if not (
        dim > 0 and size > 0 and groups > 0 and 0 < grid_h <= MAX_SIDE and 0 < grid_w <= MAX_SIDE
    ):
        raise bad("corrupt .gq header (token grid or codebook parameters)")
    if bool(flags & FLAG_ALPHA) != (alpha_len > 0):
        raise bad("corrupt .gq header (alpha flag and alpha payload disagree)")
    header = Header(
        model_id=model_id,
        weights_hash=weights_hash,
        dim=dim,
        size=size,
        seed=seed,
        beta=beta,
        codebook_fingerprint=cb_fp,
        width=width,
        height=height,
        groups=groups,
        grid_h=grid_h,
        grid_w=grid_w,
        entropy_kind=ENTROPY_KINDS[ent_kind],
        entropy_fingerprint=ent_fp,
        layout=LAYOUTS[layout],
        pad_mode=PAD_MODES[pad_mode],
        has_alpha=bool(flags & FLAG_ALPHA),
        grayscale=bool(flags & FLAG_GRAY),
        version=version,
    )
    tokens = data[pos : pos + token_len]
    alpha = data[pos + token_len : pos + token_len + alpha_len]
    return header, tokens, alpha
