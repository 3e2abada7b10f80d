"""The .gq container: round trip, validation, versioning, and the entropy coder."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from gqtok.errors import FormatError, UnsupportedVersionError
from gqtok.format import container
from gqtok.format.entropy import from_counts, uniform
from gqtok.quant.codebook import codebook_fingerprint


def _header(**kw: object) -> container.Header:
    base = dict(
        model_id="test-model",
        weights_hash=b"\x01" * 8,
        dim=16,
        size=65536,
        seed=42,
        beta=1.0,
        codebook_fingerprint=codebook_fingerprint(16),
        width=33,
        height=17,
        groups=1,
        grid_h=3,
        grid_w=5,
        entropy_kind="uniform",
        entropy_fingerprint=uniform(65536).fingerprint,
    )
    base.update(kw)
    return container.Header(**base)  # type: ignore[arg-type]


def test_round_trip_and_documented_offsets() -> None:
    h = _header(has_alpha=True, grayscale=True, pad_mode="reflect")
    data = container.pack(h, b"\xaa" * 12, b"alpha")
    h2, tok, alpha = container.unpack(data)
    assert h2 == h and tok == b"\xaa" * 12 and alpha == b"alpha"
    n = len(h.model_id)
    assert data[:4] == b"GQTK" and data[4] == 1 and data[8] == n
    assert struct.unpack_from("<II", data, 43 + n) == (33, 17)
    assert len(data) == 82 + n + 12 + 5


def test_unsupported_version_is_a_clear_error() -> None:
    data = bytearray(container.pack(_header(), b"\x00" * 4))
    data[4] = 2
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(UnsupportedVersionError, match="unsupported .gq format version 2"):
        container.unpack(bytes(data), "x.gq")


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: b"PNG0" + d[4:], "not a .gq file"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[:20], "truncated"),
        (lambda d: d + b"\x00", "trailing"),
        (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:], "checksum"),
        (lambda d: b"", "not a .gq file"),
    ],
)
def test_corruption_is_detected(mutate, match: str) -> None:  # noqa: ANN001
    data = container.pack(_header(), b"\x10\x20\x30\x40")
    with pytest.raises(FormatError, match=match):
        container.unpack(mutate(data), "x.gq")


def test_alpha_flag_must_match_payload() -> None:
    with pytest.raises(ValueError):
        container.pack(_header(has_alpha=True), b"\x00" * 4, b"")


def test_entropy_coder_round_trip_and_rate() -> None:
    rng = np.random.default_rng(0)
    k = 65536
    train = rng.zipf(1.5, 100_000) % k
    model = from_counts(np.bincount(train, minlength=k))
    sym = rng.zipf(1.5, 5000) % k
    data = model.encode(sym)
    assert np.array_equal(model.decode(data, sym.size), sym)
    ideal = model.ideal_bits(sym)
    assert len(data) * 8 <= ideal * 1.01 + 64  # ANS is within a word of the ideal rate
    assert len(data) * 8 < 16 * sym.size * 0.6  # and far below the uniform 16 bits
    # unseen symbols stay encodable thanks to smoothing
    rare = np.array([k - 1, k - 2, 12345])
    assert np.array_equal(model.decode(model.encode(rare), 3), rare)
    u = uniform(k)
    assert len(u.encode(sym)) * 8 == pytest.approx(16 * sym.size, abs=64)


def test_entropy_fingerprint_identifies_table() -> None:
    c = np.ones(256, dtype=np.int64)
    a, b = from_counts(c), from_counts(c + np.eye(256, dtype=np.int64)[3])
    assert a.fingerprint != b.fingerprint != uniform(256).fingerprint
    assert from_counts(c.copy()).fingerprint == a.fingerprint
    with pytest.raises(ValueError):
        from_counts(c, smoothing=0.0)
