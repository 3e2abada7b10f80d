"""The .gq container: round trip, validation, versioning, and the entropy coder."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from gqtok.errors import DecompressionBombError, FormatError, UnsupportedVersionError
from gqtok.format import container
from gqtok.format.bounds import payload_limit, quantized_max
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
    data[4] = 7
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(UnsupportedVersionError, match="unsupported .gq format version 7"):
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


# ----------------------------------------------------------------------------------------------
# Hostile headers (CRC recomputed by tests/gqedit.py, so the checksum does not catch them)

from tests import gqedit  # noqa: E402


def _good(**kw: object) -> bytes:
    """A valid file of 15 uniform tokens (3x5 grid of a 33x17 image at f=8), for editing."""
    tokens = uniform(65536).encode(np.arange(15) * 4000 + 7)
    return container.pack(_header(**kw), tokens)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"size": 2**24 + 5}, "codebook size K=16777221 outside"),
        ({"size": 1}, "codebook size K=1 outside"),
        ({"size": 0}, "codebook size K=0"),
        ({"dim": 0}, "codebook dim G=0"),
        ({"dim": 16, "size": 2**24 - 2}, "exceeds 16777216 values"),
        ({"dim": 30000}, "codebook dim G=30000"),
        ({"width": 0}, "image size 0x17"),
        ({"height": 2**21}, "image size"),
        ({"groups": 0}, "token groups 0"),
        ({"grid_w": 7}, "not ceil"),
        ({"grid_h": 18}, "not ceil"),
        ({"grid_h": 17, "grid_w": 5}, "not ceil"),  # f=1 vertically, f=8 across
        ({"beta": float("nan")}, "beta nan"),
        ({"beta": float("inf")}, "beta inf"),
        ({"model_id": "bad\nid"}, "control character"),
        ({"model_id": "\x00"}, "control character"),
        ({"entropy_kind": 7}, "unknown entropy model 7"),
        ({"tokens": b"\x01\x02\x03"}, "multiple of 4"),
        ({"tokens": b"\x01" * 4000}, "too long for 15 tokens"),
        ({"tokens": b""}, "cannot hold 15 tokens"),
        ({"flags": 1, "alpha": b""}, "alpha flag"),
        ({"alpha": b"x" * 10}, "alpha flag"),
        ({"flags": 1, "alpha": b"x" * 200_000}, "alpha payload of 200000 bytes is too long"),
    ],
)
def test_crafted_header_fields_are_refused(changes: dict, match: str) -> None:
    data = gqedit.edit(_good(), **changes)
    with pytest.raises(FormatError, match=match) as info:
        container.unpack(data, "x.gq")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.gq: corrupt .gq")


def test_a_2kb_file_claiming_a_huge_grid_is_refused_before_decoding() -> None:
    """2^20 x 2^20 pixels at f=1 under a uniform model: the payload cannot hold the tokens."""
    data = gqedit.edit(
        _good(), width=2**20, height=2**20, grid_h=2**20, grid_w=2**20, tokens=b"\x11" * 2000
    )
    with pytest.raises(FormatError, match="cannot hold 1099511627776 tokens"):
        container.unpack(data, "x.gq")
    header, _, _ = container.unpack(gqedit.edit(data, width=33, height=17, grid_h=3, grid_w=5,
                                                tokens=_good()[-64:-4]))  # fmt: skip
    with pytest.raises(DecompressionBombError, match="raise it with --max-pixels"):
        container.check_pixels(container.Header(**{**header.__dict__, "width": 2**20}), 10**6)
    container.check_pixels(header, 33 * 17)


def test_gqedit_round_trips_a_valid_file() -> None:
    data = _good(has_alpha=False)
    assert gqedit.build(gqedit.fields(data)) == data
    assert gqedit.recrc(data) == data


@pytest.mark.parametrize(
    "model_id,ok",
    [("a", True), ("x" * 255, True), ("é" * 127, True), ("é" * 128, False), ("", False),
     ("x" * 256, False), ("tab\there", False), ("nul\x00", False), ("del\x7f", False),
     ("\ud800", False), ("gqtok-f8c16-cpu-v3", True), ("名前", True)],
)  # fmt: skip
def test_check_model_id(model_id: str, ok: bool) -> None:
    if ok:
        assert container.check_model_id(model_id) == model_id
    else:
        with pytest.raises(ValueError, match="model id"):
            container.check_model_id(model_id)


def test_grid_fits_exactly_the_ceil_grids() -> None:
    for w in range(1, 40):
        for h in (1, 7, 17, 33):
            fits = {(gh, gw) for gh in range(1, h + 1) for gw in range(1, w + 1)
                    if container.grid_fits(w, h, gh, gw)}  # fmt: skip
            want = {(-(-h // f), -(-w // f)) for f in range(1, 2 * max(w, h) + 2)}
            assert fits == want, (w, h)


def test_max_codebook_dim_is_the_sobol_limit() -> None:
    from gqtok.quant.codebook import MAX_DIM

    assert container.MAX_CODEBOOK_DIM == MAX_DIM


# ----------------------------------------------------------------------------------------------
# The token payload holds exactly the tokens the header claims


def _models() -> list:
    skewed = np.ones(4096, dtype=np.int64)
    skewed[17] = 10**7  # one symbol takes almost all of the probability
    zero_heavy = np.full(300, 5, dtype=np.int64)
    zero_heavy[0] = 10**6
    return [uniform(65536), uniform(2), uniform(1000), from_counts(skewed),
            from_counts(zero_heavy), from_counts(np.arange(1, 257) ** 3)]  # fmt: skip


@pytest.mark.parametrize("model", _models(), ids=lambda m: f"{m.kind}{m.size}")
def test_stream_bounds_hold_for_extreme_sequences(model) -> None:  # noqa: ANN001
    """token_limit and payload_limit bound real streams: the most and least probable symbols
    repeated (cheapest and dearest tokens), random draws, and maximal free index-0 tails."""
    rng = np.random.default_rng(1)
    p = model.probabilities
    cheap, dear = int(np.argmax(p)), int(np.argmin(p))
    for n in (1, 2, 3, 10, 100, 1000, 20000):
        draws = rng.choice(model.size, size=n, p=p)
        for sym in (np.full(n, cheap), np.full(n, dear), draws):
            sym = sym.copy()
            sym[-min(n, model.free_tail) :] = 0
            if n > model.free_tail and sym[-model.free_tail - 1] == 0:
                sym[-model.free_tail - 1] = 1
            data = model.encode(sym)
            assert len(data) <= payload_limit(n)
            limit = model.max_tokens(len(data))
            assert limit is None or n <= limit
            assert np.array_equal(model.decode(data, n), sym)


def test_short_or_padded_payloads_are_refused() -> None:
    model = from_counts(np.arange(1, 65537) % 97)
    rng = np.random.default_rng(2)
    sym = rng.choice(65536, size=500, p=model.probabilities)
    sym[-1] = 3
    data = model.encode(sym)
    with pytest.raises(ValueError, match="cannot hold 500 tokens"):
        model.decode(b"", 500)
    with pytest.raises(ValueError, match="cannot hold"):
        model.decode(data[: len(data) // 4 // 4 * 4], 500)
    for cut in (8, 12, 40):  # words missing: the stream runs dry or desynchronises
        with pytest.raises(ValueError):
            model.decode(data[:-cut], 500)
    # The top word holds only 3 bits of state here: without it the payload is still a valid
    # stream of 500 other tokens. No check can tell (the format has no redundancy but the
    # CRC); what it guarantees is that the payload is exactly a stream of the claimed count.
    assert model.decode(data[:-4], 500).shape == (500,)
    with pytest.raises(ValueError, match="cannot hold 2000"):
        model.decode(data, 2000)  # far more tokens claimed than the payload can hold
    with pytest.raises(ValueError, match="ran out 2[0-9] tokens before the end"):
        model.decode(data, 520)  # a few more: the stream runs dry before the last ones
    with pytest.raises(ValueError, match="trailing"):
        model.decode(data, 400)
    with pytest.raises(ValueError, match="trailing"):
        model.decode(b"\x01\x00\x00\x00", 0)
    with pytest.raises(ValueError, match="too long"):
        model.decode(data + b"\x01\x00\x00\x00" * 2000, 500)


def test_free_zero_tails_are_bounded_on_both_sides() -> None:
    """Index 0 at the end of a grid costs nothing (an empty coder encodes it for free): up to
    FREE_BITS of such a tail decodes; a longer one is refused by the encoder and the decoder."""
    model = uniform(65536)
    assert model.zero_slot == 256 and model.free_tail == 4  # 16 bits each, 64 bits in all
    sym = np.arange(1, 11)
    sym[-4:] = 0
    assert np.array_equal(model.decode(model.encode(sym), 10), sym)
    sym[-5] = 0
    with pytest.raises(FormatError, match="ends in 5 index-0 tokens"):
        model.encode(sym)
    with pytest.raises(ValueError, match="ran out 5 tokens before the end"):
        model.decode(uniform(65536).encode(sym[:5]), 10)
    with pytest.raises(ValueError, match="ran out"):
        model.decode(b"", 4 + 1)
    assert np.array_equal(model.decode(b"", 4), np.zeros(4))  # all-zero grid of 4: valid
    assert uniform(2).free_tail == 64


def test_zero_slot_is_exact() -> None:
    for model in _models():
        q = quantized_max(float(model.probabilities[0]), model.size)
        assert 1 <= model.zero_slot <= q


# ----------------------------------------------------------------------------------------------
# read_header: the same checks as unpack, streaming, in bounded memory


def test_read_header_agrees_with_unpack(tmp_path) -> None:  # noqa: ANN001
    import io

    data = _good()
    f = tmp_path / "a.gq"
    f.write_bytes(data)
    info = container.read_header(f)
    header, tok, alpha = container.unpack(data)
    assert info.header == header and (info.token_bytes, info.alpha_bytes) == (len(tok), 0)
    assert info.file_bytes == len(data) and info.header_bytes == 82 + len(header.model_id)
    assert container.read_header(io.BytesIO(data), "<stdin>").header == header

    class Trickle(io.RawIOBase):  # a pipe that hands out three bytes per read
        def __init__(self, b: bytes) -> None:
            self.b = b

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            out, self.b = self.b[: min(3, n)], self.b[min(3, n) :]
            return out

    assert container.read_header(Trickle(data)).header == header


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: b"PNG0" + d[4:], "not a .gq file"),
        (lambda d: d[:-1], r"truncated: (\d+) bytes, header says (?!\1)\d+"),
        (lambda d: d[:20], "header incomplete"),
        (lambda d: d + b"\x00", "trailing"),
        (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:], "checksum"),
        (lambda d: gqedit.edit(d, size=1), "codebook size K=1"),
        (lambda d: gqedit.edit(d, tokens=b""), "cannot hold"),
        (lambda d: b"", "not a .gq file"),
    ],
)
def test_read_header_refuses_like_unpack(tmp_path, mutate, match: str) -> None:  # noqa: ANN001
    import io

    data = mutate(_good())
    f = tmp_path / "bad.gq"
    f.write_bytes(data)
    for source in (f, io.BytesIO(data)):
        with pytest.raises(FormatError, match=match.split(":")[0]):
            container.read_header(source, "bad.gq")
    with pytest.raises(FormatError, match=match):
        container.read_header(f, "bad.gq")
    with pytest.raises(FormatError, match=match.split(":")[0]):
        container.unpack(data, "bad.gq")


def test_read_header_streams_a_large_file(tmp_path) -> None:  # noqa: ANN001
    """A 192 MiB file (a sparse 8192x8192 f=1 grid) is checked with a few MiB of memory."""
    import subprocess
    import sys

    n = 8192 * 8192
    tokens_len = 2 * n + 64  # a uniform 16-bit token each, plus the coder's head
    head = gqedit.build(
        {**gqedit.fields(_good()), "width": 8192, "height": 8192, "grid_h": 8192,
         "grid_w": 8192, "tokens": b"", "token_len": tokens_len}, crc=False,
    )[:-4]  # fmt: skip
    crc = zlib.crc32(head)
    zeros = bytes(1 << 20)
    for _ in range(tokens_len >> 20):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(tokens_len & ((1 << 20) - 1)), crc)
    f = tmp_path / "big.gq"
    with open(f, "wb") as out:
        out.write(head)
        out.seek(tokens_len, 1)
        out.write(struct.pack("<I", crc & 0xFFFFFFFF))
    code = (
        "import resource, sys\n"
        "from gqtok.format.container import read_header\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "info = read_header(sys.argv[1])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(info.header.num_tokens, info.token_bytes, (after - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()  # fmt: skip
    assert out[:2] == [str(n), str(tokens_len)]
    assert int(out[2]) < 16, f"peak memory grew by {out[2]} MiB"
