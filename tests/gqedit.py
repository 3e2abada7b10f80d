"""A small .gq header editor for tests: parse any file's fields without validating them, change
some, and write the file back with a fresh CRC, so that crafted headers get past the checksum.

Deliberately independent of gqtok.format.container (it reads the layout of docs/format.md
itself): a bug in the parser under test cannot hide in the tool that crafts its inputs.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

_PRE = struct.Struct("<4sBBBBB")
_MID = struct.Struct("<8sHIQf8sIIHIIB8sII")
PRE_FIELDS = ("magic", "version", "flags", "layout", "pad_mode", "id_len")
MID_FIELDS = (
    "weights_hash",
    "dim",
    "size",
    "seed",
    "beta",
    "codebook_fingerprint",
    "width",
    "height",
    "groups",
    "grid_h",
    "grid_w",
    "entropy_kind",
    "entropy_fingerprint",
    "token_len",
    "alpha_len",
)
_EXT = struct.Struct("<BBII")  # versions 4 and 5
EXT_FIELDS = ("coding_version", "filter", "coded_width", "coded_height")
_COLOR = struct.Struct("<12h")  # versions 5 and 6, after the extension
COLOR_FIELDS = tuple(f"color{i}" for i in range(12))
# version 6, after the colour correction: the filter's radius, then 18 r (r + 1) i16 taps
FILTER_FIELDS = ("radius", "taps")
# Numeric fields and their struct codes, for strategies that draw any value a field can hold.
WIDTHS = {"version": "B", "flags": "B", "layout": "B", "pad_mode": "B", "dim": "H", "size": "I",
          "seed": "Q", "width": "I", "height": "I", "groups": "H", "grid_h": "I", "grid_w": "I",
          "entropy_kind": "B", "token_len": "I", "alpha_len": "I", "coding_version": "B",
          "filter": "B", "coded_width": "I", "coded_height": "I", "radius": "B",
          **{k: "h" for k in COLOR_FIELDS}}  # fmt: skip


def fields(data: bytes) -> dict[str, Any]:
    """Every field of a well-formed file (raw values, no checks), plus the two payloads; a
    version 4 file also has the fields of its extension (EXT_FIELDS), a version 5 file those
    and its colour correction (COLOR_FIELDS), a version 6 file also its filter (``radius`` and
    ``taps``, a tuple)."""
    pre = dict(zip(PRE_FIELDS, _PRE.unpack_from(data, 0), strict=True))
    pos = _PRE.size
    out: dict[str, Any] = {k: v for k, v in pre.items() if k != "id_len"}
    out["model_id"] = data[pos : pos + pre["id_len"]]
    pos += pre["id_len"]
    out.update(zip(MID_FIELDS, _MID.unpack_from(data, pos), strict=True))
    pos += _MID.size
    if out["version"] in (4, 5, 6):
        out.update(zip(EXT_FIELDS, _EXT.unpack_from(data, pos), strict=True))
        pos += _EXT.size
    if out["version"] in (5, 6):
        out.update(zip(COLOR_FIELDS, _COLOR.unpack_from(data, pos), strict=True))
        pos += _COLOR.size
    if out["version"] == 6:
        r = out["radius"] = data[pos]
        n = 18 * r * (r + 1)
        out["taps"] = struct.unpack_from(f"<{n}h", data, pos + 1)
        pos += 1 + 2 * n
    out["tokens"] = data[pos : pos + out["token_len"]]
    out["alpha"] = data[pos + out["token_len"] : pos + out["token_len"] + out["alpha_len"]]
    return out


def build(f: dict[str, Any], *, crc: bool = True) -> bytes:
    """Bytes of a file with these fields. ``token_len``/``alpha_len``/``id_len`` follow the
    payloads unless given explicitly (to lie about them); the CRC is recomputed."""
    model_id = f["model_id"]
    if isinstance(model_id, str):
        model_id = model_id.encode("utf-8")
    id_len = f.get("id_len", len(model_id))
    out = bytearray(
        _PRE.pack(f["magic"], f["version"], f["flags"], f["layout"], f["pad_mode"], id_len)
    )
    out += model_id
    values = dict(f)
    values.setdefault("token_len", len(f["tokens"]))
    values.setdefault("alpha_len", len(f["alpha"]))
    out += _MID.pack(*(values[k] for k in MID_FIELDS))
    if any(k in values for k in EXT_FIELDS):  # version 4's extension (or forged onto another)
        defaults = {"coding_version": 2, "filter": 0, "coded_width": values["width"],
                    "coded_height": values["height"]}  # fmt: skip
        out += _EXT.pack(*(values.get(k, defaults[k]) for k in EXT_FIELDS))
    if any(k in values for k in COLOR_FIELDS):  # version 5's colour correction (or forged)
        out += _COLOR.pack(*(values.get(k, 0) for k in COLOR_FIELDS))
    if any(k in values for k in FILTER_FIELDS):  # version 6's filter (or forged)
        taps = values.get("taps", ())
        out += struct.pack(f"<B{len(taps)}h", values.get("radius", 2), *taps)
    out += f["tokens"] + f["alpha"]
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF if crc else 0)
    return bytes(out)


def edit(data: bytes, **changes: Any) -> bytes:
    """``data`` with some fields changed (payload lengths follow new payloads), CRC fixed."""
    f = fields(data)
    if "tokens" in changes or "alpha" in changes:
        f.pop("token_len")
        f.pop("alpha_len")
    f.update(changes)
    return build(f)


def recrc(data: bytes) -> bytes:
    """Any byte string with its last four bytes replaced by the CRC of the rest."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
