"""The .gq container: a compact, versioned, self-describing header plus entropy-coded tokens.

Layout of format versions 1 and 2 (the same; version 2 codes the tokens with a context model,
gqtok.format.context). All integers little-endian; docs/format.md is the full spec:

    magic "GQTK" | version u8 | flags u8 | layout u8 | pad_mode u8
    model_id_len u8 | model_id utf-8 | weights_hash 8B
    dim u16 | size u32 | seed u64 | beta f32 | codebook_fingerprint 8B
    width u32 | height u32 | groups u16 | grid_h u32 | grid_w u32
    entropy_kind u8 | entropy_fingerprint 8B
    token_len u32 | alpha_len u32
    token payload | alpha payload | crc32 u32 (over everything before it)

Version 4 marks an image coded at another scale: the same fields, then ``coding u8`` (the
version 1, 2 or 3 whose token coding the file uses) | ``filter u8`` (0: gqtok.io.resample) |
``coded_width u32 | coded_height u32`` (the size the token grid decodes to, resampled to
width x height) before the payloads. ``Header.version`` holds the coding version. Version 5
is version 4 with a colour correction after it: ``12 x i16`` (gqtok.io.color: 3 x 3 gains
minus the identity in 1/4096, then 3 offsets in 1/16 of a level), applied to the resampled
pixels. Version 6 is version 5 with a restoration filter after the correction: ``radius u8``
(0: none) then ``18 r (r + 1) x i16`` taps (gqtok.io.color), part of the same map; unlike
version 5 its coded size may be 0 x 0, the image's own (a correction without a scaling).

Parsing validates every field against the limits of docs/format.md before anything is
allocated, so corrupt or hostile files end in a FormatError, never in a crash or a huge
allocation. ``read_header`` checks a file on disk (or a stream) without holding its payload.
"""

from __future__ import annotations

import math
import os
import struct
import unicodedata
import zlib
from dataclasses import asdict, dataclass
from typing import IO, Any

from gqtok.errors import (
    DecompressionBombError,
    FormatError,
    InputError,
    UnsupportedVersionError,
)
from gqtok.format import bounds

MAGIC = b"GQTK"
FORMAT_VERSION = 1  # files coded with a static table (uniform or frequency)
CONTEXT_VERSION = 2  # files coded with a context model (gqtok.format.context)
COARSE_VERSION = 3  # context-coded files of a codebook too small for B x B cells (K < B^2)
SCALED_VERSION = 4  # any of the three, coded at another scale (an extension names which)
COLOR_VERSION = 5  # a version 4 file with a colour correction after its extension
FILTER_VERSION = 6  # a version 5 file with a restoration filter after its colour correction
CODING_VERSIONS = (1, 2, 3)
SUPPORTED_VERSIONS = (1, 2, 3, 4, 5, 6)
FILTERS = ("cubic",)  # version 4 resampling filters: 0 = gqtok.io.resample

FLAG_ALPHA = 0x01
FLAG_GRAY = 0x02
_KNOWN_FLAGS = FLAG_ALPHA | FLAG_GRAY

LAYOUTS = ("bchw", "blc")
PAD_MODES = ("replicate", "reflect")
ENTROPY_KINDS = ("uniform", "frequency", "context", "prior")
VERSION_KINDS = {  # entropy models per version
    1: ("uniform", "frequency"),
    2: ("context", "prior"),
    3: ("context",),
}

_PRE = struct.Struct("<4sBBBBB")  # magic, version, flags, layout, pad_mode, model_id_len
_MID = struct.Struct("<8sHIQf8sIIHIIB8sII")
_EXT = struct.Struct("<BBII")  # version 4: coding version, filter, coded width, coded height
COLOR_VALUES = 12  # version 5's colour correction: 9 gains, 3 offsets (gqtok.io.color)
_COLOR = struct.Struct(f"<{COLOR_VALUES}h")  # version 5: after the extension of version 4
FILTER_RADII = (1, 2, 3)  # version 6: gqtok.io.color.RADII, not imported (it loads torch)
V6_RADII = (0, *FILTER_RADII)  # a version 6 file's radius byte: 0 is the affine map alone
_RADIUS = struct.Struct("<B")  # version 6: after the colour correction, then the taps


def filter_taps(radius: int) -> int:
    """i16 tap values of a version 6 filter of this radius (3 x 3 channel pairs x the
    (2r + 1)^2 // 2 offsets of one half of its window): gqtok.io.color.taps."""
    return 18 * radius * (radius + 1)


COLOR_LENGTHS = (COLOR_VALUES, *(COLOR_VALUES + filter_taps(r) for r in FILTER_RADII))
_CRC = struct.Struct("<I")

# Limits of docs/format.md. Sides: a million pixels, far beyond any real image. Codebook: K
# as far as the 24-bit ANS coder can code it, G as far as torch's Sobol engine draws, and at
# most 2^24 values (a 64 MiB float32 table), so a header cannot make a decoder build a huge one.
MAX_SIDE = 1 << 20
MAX_ID_BYTES = 255
MIN_CODEBOOK_SIZE = bounds.MIN_SIZE
MAX_CODEBOOK_SIZE = bounds.MAX_SIZE
MAX_CODEBOOK_DIM = 21201  # gqtok.quant.codebook.MAX_DIM, not imported: that would load torch
MAX_CODEBOOK_VALUES = 1 << 24
MAX_SCALE = 4  # a version 4 file's coded sides are within this factor of the image's
MAX_HEADER_BYTES = (_PRE.size + MAX_ID_BYTES + _MID.size + _EXT.size + _COLOR.size + _RADIUS.size
                    + 2 * filter_taps(FILTER_RADII[-1]) + _CRC.size)  # fmt: skip
_CHUNK = 1 << 20  # read_header streams the payload through the CRC in pieces of this size
_TRAILING_COUNTED = 1 << 24  # trailing bytes of a stream counted for the message, at most


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
    version: int = FORMAT_VERSION  # how the tokens are coded: 1, 2 or 3 (also in a v4 file)
    coded_width: int = 0  # version 4: the size the tokens decode to; 0: width x height
    coded_height: int = 0
    color: tuple[int, ...] = ()  # versions 5, 6: the colour correction (12 values + taps)

    @property
    def num_tokens(self) -> int:
        return self.groups * self.grid_h * self.grid_w

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def scaled(self) -> bool:
        """True for an image coded at another size (written as format version 4)."""
        return bool(self.coded_width or self.coded_height)

    @property
    def coded_size(self) -> tuple[int, int]:
        """(width, height) the token grid decodes to, before resampling to the image size."""
        return (self.coded_width, self.coded_height) if self.scaled else (self.width, self.height)

    @property
    def file_version(self) -> int:
        """The version byte of the file: 6 with a restoration filter or a correction at the
        image's own size, 5 with a colour correction, 4 when scaled, else the coding
        version."""
        if self.color:
            if len(self.color) > COLOR_VALUES or not self.scaled:
                return FILTER_VERSION
            return COLOR_VERSION
        return SCALED_VERSION if self.scaled else self.version

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; "version" is the file's (4, 5 or 6 for a scaled or
        corrected image, whose token coding is then "coding_version"), coded sizes only for a
        scaled image."""
        d = asdict(self)
        for key in ("weights_hash", "codebook_fingerprint", "entropy_fingerprint"):
            d[key] = d[key].hex()
        if self.scaled or self.color:
            d["coding_version"], d["version"] = self.version, self.file_version
        if not self.scaled:
            del d["coded_width"], d["coded_height"]
        if self.color:
            d["color"] = list(self.color)
        else:
            del d["color"]
        return d


@dataclass(frozen=True)
class FileInfo:
    """A checked .gq file as ``read_header`` sees it: the header and the sizes of its parts."""

    header: Header
    file_bytes: int
    token_bytes: int
    alpha_bytes: int

    @property
    def header_bytes(self) -> int:
        """Everything but the two payloads: fixed fields, model id and CRC."""
        return self.file_bytes - self.token_bytes - self.alpha_bytes


# ----------------------------------------------------------------------------------------------
# Field checks, shared by pack, unpack, read_header, model cards and the model loader


def check_model_id(model_id: str) -> str:
    """``model_id`` if a .gq header can store it: 1..255 bytes of UTF-8 without control
    characters (it is printed in one-line messages); ValueError saying why otherwise."""
    if not isinstance(model_id, str):
        raise ValueError(f"model id must be a string, got {type(model_id).__name__}")
    try:
        n = len(model_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("model id is not valid Unicode (lone surrogate)") from None
    if not 1 <= n <= MAX_ID_BYTES:
        raise ValueError(f"model id must be 1..{MAX_ID_BYTES} bytes of UTF-8, got {n}")
    if any(unicodedata.category(c) == "Cc" for c in model_id):
        raise ValueError("model id contains a control character")
    return model_id


def check_codebook(dim: int, size: int) -> None:
    """ValueError unless G and K are within the limits every gqtok can code and rebuild."""
    if not 1 <= dim <= MAX_CODEBOOK_DIM:
        raise ValueError(f"codebook dim G={dim} outside 1..{MAX_CODEBOOK_DIM}")
    if not MIN_CODEBOOK_SIZE <= size <= MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook size K={size} outside {MIN_CODEBOOK_SIZE}..{MAX_CODEBOOK_SIZE}")
    if dim * size > MAX_CODEBOOK_VALUES:
        raise ValueError(f"codebook of K={size} x G={dim} exceeds {MAX_CODEBOOK_VALUES} values")


def _scale_range(side: int, cells: int) -> tuple[int, float]:
    """The downsampling factors f with ceil(side / f) == cells, as [low, high]."""
    low = -(-side // cells)
    high = math.inf if cells == 1 else (side - 1) // (cells - 1)
    return low, high


def grid_fits(width: int, height: int, grid_h: int, grid_w: int) -> bool:
    """True if one factor f gives grid_h = ceil(height / f) and grid_w = ceil(width / f)."""
    if not (1 <= grid_h <= height and 1 <= grid_w <= width):
        return False
    lo_h, hi_h = _scale_range(height, grid_h)
    lo_w, hi_w = _scale_range(width, grid_w)
    return max(lo_h, lo_w) <= min(hi_h, hi_w)


def alpha_limit(width: int, height: int) -> int:
    """Most bytes an alpha payload may take: twice the filtered 8-bit plane plus 64 KiB (a PNG
    of incompressible data stays far below that)."""
    return 2 * height * (width + 1) + (1 << 16)


def check_header(h: Header) -> None:
    """ValueError naming the first field of ``h`` outside the limits of docs/format.md."""
    check_model_id(h.model_id)
    for key in ("weights_hash", "codebook_fingerprint", "entropy_fingerprint"):
        if not isinstance(getattr(h, key), bytes) or len(getattr(h, key)) != 8:
            raise ValueError(f"{key} must be 8 bytes")
    if h.layout not in LAYOUTS or h.pad_mode not in PAD_MODES:
        raise ValueError("unknown layout or padding")
    if h.entropy_kind not in ENTROPY_KINDS:
        raise ValueError(f"unknown entropy model {h.entropy_kind!r}")
    if h.entropy_kind not in VERSION_KINDS.get(h.version, ()):
        raise ValueError(f"entropy model {h.entropy_kind} in a version {h.version} file")
    check_codebook(h.dim, h.size)
    if not 0 <= h.seed < 1 << 64:
        raise ValueError(f"codebook seed {h.seed} outside 0..2^64-1")
    if not math.isfinite(h.beta):
        raise ValueError(f"beta {h.beta} is not finite")
    if not (0 < h.width <= MAX_SIDE and 0 < h.height <= MAX_SIDE):
        raise ValueError(f"image size {h.width}x{h.height} outside 1..{MAX_SIDE} per side")
    if not 1 <= h.groups <= 0xFFFF:
        raise ValueError(f"token groups {h.groups} outside 1..65535")
    if h.scaled:
        check_scale(h.width, h.height, h.coded_width, h.coded_height)
    if h.color:
        if len(h.color) not in COLOR_LENGTHS or not all(-32768 <= v <= 32767 for v in h.color):
            raise ValueError(
                "a colour correction is 12 int16 values, or 12 + the taps of a filter of"
                " radius 1, 2 or 3"
            )
    cw, ch = h.coded_size
    if not grid_fits(cw, ch, h.grid_h, h.grid_w):
        raise ValueError(
            f"token grid {h.grid_h}x{h.grid_w} is not ceil(size / f) of a {cw}x{ch}"
            " image for any f"
        )


def check_scale(width: int, height: int, coded_width: int, coded_height: int) -> None:
    """ValueError unless a width x height image may be coded at coded_width x coded_height:
    a different size, each side within 1..2^20 and a factor MAX_SCALE of the image's."""
    if not (0 < coded_width <= MAX_SIDE and 0 < coded_height <= MAX_SIDE):
        raise ValueError(
            f"coded size {coded_width}x{coded_height} outside 1..{MAX_SIDE} per side"
        )
    if (coded_width, coded_height) == (width, height):
        raise ValueError("a scaled image's coded size equals its size")
    for side, coded in ((width, coded_width), (height, coded_height)):
        if coded > MAX_SCALE * side or side > MAX_SCALE * coded:
            raise ValueError(
                f"coded size {coded_width}x{coded_height} is not within a factor {MAX_SCALE}"
                f" of {width}x{height}"
            )


def check_payloads(h: Header, token_bytes: int, alpha_bytes: int) -> None:
    """ValueError unless the payload lengths can be those of the header's tokens and alpha.

    A token costs at most 24 bits (plus rounding), so the payload is bounded by the token
    count; under a uniform model a token costs at least about log2 K bits, so the token count
    is bounded by the payload (frequency models are bounded when decoding, with their table).
    """
    n = h.num_tokens
    if token_bytes % 4:
        raise ValueError("token payload length is not a multiple of 4")
    symbols = n if h.version == FORMAT_VERSION else 3 * n + 1  # v2: at most 3 symbols a token + end
    if token_bytes > bounds.payload_limit(symbols):
        raise ValueError(f"token payload of {token_bytes} bytes is too long for {n} tokens")
    if h.entropy_kind == "uniform":
        bound = bounds.quantized_max(1.0 / h.size, h.size)
        limit = bounds.token_limit(token_bytes, h.size, 1.0 / h.size, bound)
        if limit is not None and n > limit:
            raise ValueError(
                f"token payload of {token_bytes} bytes cannot hold {n} tokens of K={h.size}"
            )
    if h.has_alpha != (alpha_bytes > 0):
        raise ValueError("alpha flag and alpha payload disagree")
    if alpha_bytes > alpha_limit(h.width, h.height):
        raise ValueError(f"alpha payload of {alpha_bytes} bytes is too long for the image")


def check_pixels(h: Header, max_pixels: int, name: str | None = None) -> None:
    """DecompressionBombError (exit 3) if the image has more pixels than ``max_pixels``: the
    same limit, class and message as reading an image to encode (--max-pixels)."""
    if max_pixels < 1:
        raise ValueError("max_pixels must be at least 1")
    pixels = max(h.pixels, h.coded_size[0] * h.coded_size[1])  # decoded at both sizes
    if pixels > max_pixels:
        raise DecompressionBombError(
            f"image has {pixels} pixels, over the limit of {max_pixels}"
            " (raise it with --max-pixels)",
            name,
        )


# ----------------------------------------------------------------------------------------------
# Writing and reading


def pack(header: Header, tokens: bytes, alpha: bytes = b"") -> bytes:
    """Serialise a header and its payloads into the bytes of a .gq file.

    Only what the layout itself needs is checked (ValueError): tests forge headers with it.
    The encoder's headers come from a loaded model, whose card passed the same limits.
    """
    check_model_id(header.model_id)
    if header.version not in CODING_VERSIONS:
        raise ValueError(f"cannot write format version {header.version}")
    if bool(alpha) != header.has_alpha:
        raise ValueError("alpha payload present iff header.has_alpha")
    model_id = header.model_id.encode("utf-8")
    flags = (FLAG_ALPHA if header.has_alpha else 0) | (FLAG_GRAY if header.grayscale else 0)
    out = bytearray(
        _PRE.pack(
            MAGIC,
            header.file_version,
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
    v6 = header.file_version == FILTER_VERSION
    if header.scaled or v6:  # version 6 at the image's own size: coded size 0 x 0
        out += _EXT.pack(header.version, 0, header.coded_width, header.coded_height)
    if header.color:
        out += _COLOR.pack(*header.color[:COLOR_VALUES])
    if v6:
        radius = COLOR_LENGTHS.index(len(header.color))  # ValueError for another length
        out += _RADIUS.pack(radius)
        out += struct.pack(f"<{filter_taps(radius)}h", *header.color[COLOR_VALUES:])
    out += tokens
    out += alpha
    out += _CRC.pack(zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def _parse_head(head: bytes, name: str | None) -> tuple[Header, int, int, int]:
    """(header, offset of the token payload, token_len, alpha_len) from the first bytes of a
    file (at least the whole header, or all of a shorter file). Checks magic, version, codes
    and the model id, not yet the other fields: those wait until the CRC has been checked."""

    def bad(msg: str) -> FormatError:
        return FormatError(msg, name)

    if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
        raise bad("not a .gq file (bad magic bytes)")
    if len(head) < _PRE.size:
        raise bad("truncated .gq file (header incomplete)")
    _, version, flags, layout, pad_mode, id_len = _PRE.unpack_from(head, 0)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"unsupported .gq format version {version} (this gqtok reads version"
            f" {', '.join(map(str, SUPPORTED_VERSIONS))}); upgrade gqtok to decode it",
            name,
        )
    pos = _PRE.size
    ext = {SCALED_VERSION: _EXT.size, COLOR_VERSION: _EXT.size + _COLOR.size,
           FILTER_VERSION: _EXT.size + _COLOR.size + _RADIUS.size}.get(version, 0)  # fmt: skip
    if len(head) < pos + id_len + _MID.size + ext + _CRC.size:
        raise bad("truncated .gq file (header incomplete)")
    radius = 0
    if version == FILTER_VERSION:
        (radius,) = _RADIUS.unpack_from(head, pos + id_len + _MID.size + ext - _RADIUS.size)
        if radius not in V6_RADII:
            raise bad(f"corrupt .gq header (restoration filter radius {radius}, not 0..3)")
        ext += 2 * filter_taps(radius)
        if len(head) < pos + id_len + _MID.size + ext + _CRC.size:
            raise bad("truncated .gq file (header incomplete)")
    if flags & ~_KNOWN_FLAGS or layout >= len(LAYOUTS) or pad_mode >= len(PAD_MODES):
        raise bad("corrupt .gq header (unknown flag, layout or padding code)")
    if id_len == 0:
        raise bad("corrupt .gq header (empty model id)")
    try:
        model_id = head[pos : pos + id_len].decode("utf-8")
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
    ) = _MID.unpack_from(head, pos)
    pos += _MID.size
    coded_width = coded_height = 0
    color: tuple[int, ...] = ()
    if ext:
        file_version = version
        version, filt, coded_width, coded_height = _EXT.unpack_from(head, pos)
        if version not in CODING_VERSIONS or filt >= len(FILTERS):
            raise bad("corrupt .gq header (unknown coding version or resampling filter)")
        if file_version in (COLOR_VERSION, FILTER_VERSION):
            color = _COLOR.unpack_from(head, pos + _EXT.size)
            if radius:
                at = pos + _EXT.size + _COLOR.size + _RADIUS.size
                color += struct.unpack_from(f"<{filter_taps(radius)}h", head, at)
            if file_version == COLOR_VERSION and not (coded_width or coded_height):
                raise bad("corrupt .gq header (a colour correction without a scaled coding)")
            scaled = coded_width or coded_height
            if file_version == FILTER_VERSION and not radius and scaled:  # one way per file
                raise bad("corrupt .gq header (version 6 without a filter is for an unscaled"
                          " image; a scaled one is version 5)")  # fmt: skip
        pos += ext
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
        entropy_kind=ENTROPY_KINDS[ent_kind] if ent_kind < len(ENTROPY_KINDS) else str(ent_kind),
        entropy_fingerprint=ent_fp,
        layout=LAYOUTS[layout],
        pad_mode=PAD_MODES[pad_mode],
        has_alpha=bool(flags & FLAG_ALPHA),
        grayscale=bool(flags & FLAG_GRAY),
        version=version,
        coded_width=coded_width,
        coded_height=coded_height,
        color=color,
    )
    return header, pos, token_len, alpha_len


def _check_fields(header: Header, token_len: int, alpha_len: int, name: str | None) -> None:
    if header.entropy_kind not in ENTROPY_KINDS:
        raise FormatError(f"corrupt .gq header (unknown entropy model {header.entropy_kind})", name)
    try:
        check_header(header)
        check_payloads(header, token_len, alpha_len)
    except ValueError as exc:
        raise FormatError(f"corrupt .gq header ({exc})", name) from None


def _size_error(actual: int | None, expected: int, name: str | None) -> FormatError:
    if actual is None:
        return FormatError(f"corrupt .gq file (has trailing bytes: header says {expected})", name)
    what = "truncated" if expected > actual else "has trailing bytes"
    return FormatError(f"corrupt .gq file ({what}: {actual} bytes, header says {expected})", name)


def unpack(data: bytes, name: str | None = None) -> tuple[Header, bytes, bytes]:
    """Parse and verify a .gq file; returns (header, token payload, alpha payload)."""
    header, pos, token_len, alpha_len = _parse_head(data, name)
    expected = pos + token_len + alpha_len + _CRC.size
    if expected != len(data):
        raise _size_error(len(data), expected, name)
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: -_CRC.size]) & 0xFFFFFFFF != crc:
        raise FormatError("corrupt .gq file (checksum mismatch)", name)
    _check_fields(header, token_len, alpha_len, name)
    tokens = data[pos : pos + token_len]
    alpha = data[pos + token_len : pos + token_len + alpha_len]
    return header, tokens, alpha


def peek_header(
    f: IO[bytes], name: str | None = None, size: int | None = None
) -> tuple[Header, int]:
    """The header of the .gq file starting at ``f``'s position and the file size its payload
    lengths imply, from at most MAX_HEADER_BYTES read from ``f``: enough to refuse a file by
    its size or its pixels (``check_pixels``) before reading the rest of it.

    Checks what ``unpack`` checks, with the same errors, except the CRC, which needs the whole
    file: magic, version, codes, the file's ``size`` against the implied one (when the caller
    knows it), then every field, so that the implied size is within the limits of the image.
    Without its CRC the header is not verified: ``unpack`` or ``read_header`` must still check
    the whole file before anything uses it."""
    head = _read_upto(f, MAX_HEADER_BYTES)
    header, pos, token_len, alpha_len = _parse_head(head, name)
    expected = pos + token_len + alpha_len + _CRC.size
    if size is not None and size != expected:
        raise _size_error(size, expected, name)
    _check_fields(header, token_len, alpha_len, name)
    return header, expected


def read_header(
    source: str | os.PathLike[str] | IO[bytes], name: str | None = None
) -> FileInfo:
    """Check a .gq file exactly as ``unpack`` does (same errors), holding at most the header
    and a 1 MiB chunk in memory: lengths against the file size, the CRC streamed over the
    payload, then every field. ``source`` is a path or a binary stream (read to its end)."""
    if isinstance(source, (str, os.PathLike)):
        label = name if name is not None else os.fspath(source)
        try:
            with open(source, "rb") as f:
                return _read_header(f, label, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise InputError(f"cannot read ({e.strerror or e})", label) from None
    return _read_header(source, name, None)


def _read_header(f: IO[bytes], name: str | None, file_size: int | None) -> FileInfo:
    head = _read_upto(f, MAX_HEADER_BYTES)
    header, pos, token_len, alpha_len = _parse_head(head, name)
    expected = pos + token_len + alpha_len + _CRC.size
    if file_size is not None and file_size != expected:
        raise _size_error(file_size, expected, name)
    body = expected - _CRC.size
    crc = zlib.crc32(head[:body])
    rest = head[body:]  # bytes past the payloads already read: the CRC, maybe trailing data
    remaining = body - min(body, len(head))
    seen = min(body, len(head))
    while remaining:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            raise _size_error(seen, expected, name)
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
        seen += len(chunk)
    stored = rest + _read_upto(f, _CRC.size - len(rest)) if len(rest) < _CRC.size else rest
    if len(stored) < _CRC.size:
        raise _size_error(seen + len(stored), expected, name)
    trailing = len(stored) - _CRC.size or len(f.read(1))
    if trailing:
        if file_size is None:  # a stream: count what follows (up to a bound) for the message
            more = _read_upto(f, _TRAILING_COUNTED)
            if len(more) < _TRAILING_COUNTED:
                file_size = expected + trailing + len(more)
        raise _size_error(file_size, expected, name)
    stored = stored[: _CRC.size]
    if crc & 0xFFFFFFFF != _CRC.unpack(stored)[0]:
        raise FormatError("corrupt .gq file (checksum mismatch)", name)
    _check_fields(header, token_len, alpha_len, name)
    return FileInfo(header, expected, token_len, alpha_len)


def _read_upto(f: IO[bytes], n: int) -> bytes:
    """Up to n bytes (fewer only at the end of the stream: pipes return short reads)."""
    parts: list[bytes] = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)
