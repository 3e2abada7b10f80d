"""The context entropy model (gqtok.format.context, .gq format version 2) with the shipped
default model: smaller files for the same tokens and pixels, probabilities that are the same
in every process and batch split, the payload rules of version 2, hostile context tensors in
model files, and ``gqtok fit-context`` on a model with two token groups and a small codebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from gqtok import load_model
from gqtok.cli.app import app
from gqtok.codec import decode_bytes, encode_file, encode_pictures, pack_tokens, unpack_tokens
from gqtok.codec import rate as rc
from gqtok.errors import FormatError, ModelError
from gqtok.format import context as ctx
from gqtok.format.card import CARD_KEY
from gqtok.io.images import read_image
from gqtok.model import load_model_file
from tests import gqedit
from tests.conftest import DATA, REPO

MODEL = load_model()
CODER = MODEL.context_coder
PHOTOS = [DATA / "photo_a.jpg", DATA / "photo_b.png", REPO / "examples" / "sample.jpg"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
runner = CliRunner()


def test_the_default_model_ships_a_context_model() -> None:
    assert CODER is not None and MODEL.entropy_label == "context"
    card = MODEL.card["entropy"]["context"]
    assert card["fingerprint"] == CODER.fingerprint.hex() and card["bins"] == 32
    assert card["fitted"]["val_context_bits"] < 0.85 * card["fitted"]["val_static_bits"]


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
def test_context_files_hold_the_same_tokens_and_pixels_in_fewer_bytes(photo: Path) -> None:
    v2 = encode_file(MODEL, str(photo))
    v1 = encode_file(MODEL, str(photo), entropy="static")
    assert (v2.header.version, v2.entropy) == (2, "context")
    assert (v1.header.version, v1.entropy) == (1, "frequency")
    assert np.array_equal(v1.tokens.indices, v2.tokens.indices)
    _, back, _ = unpack_tokens(MODEL, v2.data)
    assert np.array_equal(back.indices, v2.tokens.indices)
    assert len(v2.data) < len(v1.data)
    if v2.header.num_tokens >= 1000:  # a small grid is mostly border: it gains little
        assert len(v2.data) < 0.93 * len(v1.data)
    im2, _ = decode_bytes(v2.data, MODEL)
    im1, _ = decode_bytes(v1.data, MODEL)
    assert np.array_equal(np.asarray(im1), np.asarray(im2))


def test_payload_is_within_a_fraction_of_a_percent_of_the_ideal_and_split_free() -> None:
    """The encoder computes every probability in big batches, the decoder one wavefront at a
    time: both must give the same rows, whatever the chunking."""
    grid = encode_file(MODEL, str(PHOTOS[2]), entropy="static").tokens.indices.numpy()
    payloads = {CODER.encode(grid, chunk_tokens=n) for n in (1, 97, 1 << 15)}
    assert len(payloads) == 1
    payload = payloads.pop()
    ideal = CODER.ideal_bits(grid)
    assert ideal <= 8 * len(payload) <= ideal * 1.003 + 64
    assert np.array_equal(CODER.decode(payload, grid.shape), grid)


def test_float64_sums_of_the_network_are_exact_integers() -> None:
    """The determinism argument: every product and partial sum is an integer below 2^53, so
    BLAS's order of summation cannot matter. Check it against exact int64 arithmetic."""
    grid = encode_file(MODEL, str(PHOTOS[0]), entropy="static").tokens.indices.numpy()
    x = ctx.grid_features(CODER.features, grid)[0]
    w1 = MODEL.context.arrays["w1"][0].astype(np.int64)
    b1 = MODEL.context.arrays["b1"][0].astype(np.int64)
    exact = x.astype(np.int64) @ w1 + b1
    assert np.array_equal(x @ w1.astype(np.float64) + b1, exact.astype(np.float64))
    assert np.abs(exact).max() < 2**40
    h1 = np.clip(exact >> int(MODEL.context.arrays["shifts"][0, 0]), 0, ctx.ACT_MAX)
    assert np.array_equal(ctx._layer(x, w1.astype(np.float64), b1, int(
        MODEL.context.arrays["shifts"][0, 0]), ctx.ACT_MAX), h1.astype(np.float64))


_ENCODE = """
import hashlib, sys
import torch
from gqtok import load_model
from gqtok.codec import encode_file, decode_bytes
m = load_model()
data = encode_file(m, sys.argv[1]).data
other = open(sys.argv[2], "rb").read() if len(sys.argv) > 2 else None
if other is not None:
    decode_bytes(other, m)  # must not raise
print(hashlib.sha256(data).hexdigest(), torch.get_num_threads())
"""


def test_processes_with_different_thread_counts_write_and_read_the_same_bytes(
    tmp_path: Path,
) -> None:
    here = encode_file(MODEL, str(PHOTOS[2])).data
    (tmp_path / "here.gq").write_bytes(here)
    digests, seen = set(), set()
    for threads in ("1", "2", "3"):
        env = {**ENV, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-c", _ENCODE, str(PHOTOS[2]), str(tmp_path / "here.gq")],
            env=env, capture_output=True, text=True, timeout=300, check=True,
        ).stdout.split()  # fmt: skip
        seen.add(out[1])
        digests.add(out[0])
    import hashlib

    assert digests == {hashlib.sha256(here).hexdigest()} and len(seen) >= 2


@pytest.mark.parametrize("size", [64, 161, 406, 1000])
def test_small_codebooks_are_coded_by_a_bin_and_position_in_fewer_bytes(size: int) -> None:
    """K < 32^2: the cell is the a bin alone (two symbols a token). Against the prior's table
    that coded these K before (entropy kind 3, still what --entropy static writes): the same
    tokens and pixels, 10-20 % fewer bytes on photos (a tiny grid is mostly border)."""
    m = rc.at_size(MODEL, size, coarse=False)  # the default's own decoder decodes MODEL's files
    coder = m.context_coder
    assert coder is not None and coder.coarse and coder.parts == 2 and coder.width == 32
    for photo in (DATA / "photo_a.jpg", REPO / "examples" / "sample.jpg"):
        pic = read_image(str(photo))
        enc = encode_pictures(m, [pic])[0]
        old = pack_tokens(m, enc.tokens, pic, entropy="static")
        assert (enc.header.version, enc.entropy, old.entropy) == (3, "context", "prior")
        assert old.header.version == 2
        _, back, _ = unpack_tokens(MODEL, enc.data)  # found under the header's K
        assert np.array_equal(back.indices, enc.tokens.indices)
        assert len(enc.data) < 0.92 * len(old.data)
        ideal = coder.ideal_bits(enc.tokens.indices.numpy()) / 8
        assert ideal <= enc.token_bytes <= 1.01 * ideal + 8
        im_new, _ = decode_bytes(enc.data, MODEL)
        im_old, _ = decode_bytes(old.data, MODEL)
        assert np.array_equal(np.asarray(im_new), np.asarray(im_old))


def test_the_context_model_covers_k_from_twice_its_bins() -> None:
    assert not rc.at_size(MODEL, 1024).context_coder.coarse  # B x B cells from K = B^2
    assert rc.at_size(MODEL, 1024).context_coder.parts == 3
    assert rc.at_size(MODEL, 63).context_coder is None  # a bins of one codeword: the prior
    assert rc.at_size(MODEL, 63).entropy.kind == "prior"


# -- version 2 payload and header rules ------------------------------------------------------

B2 = encode_file(MODEL, str(DATA / "photo_b.png")).data
A2 = encode_file(MODEL, str(DATA / "photo_a.jpg")).data
A2_COARSE = encode_pictures(rc.at_size(MODEL, 161, coarse=False),
                            [read_image(str(DATA / "photo_a.jpg"))])[0].data  # fmt: skip


def _refused(data: bytes, error: type, match: str, model=MODEL) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match) as info:
        decode_bytes(data, model, "bad.gq")
    assert "\n" not in str(info.value) and str(info.value).startswith("bad.gq: ")


def test_version_2_payloads_must_hold_exactly_their_tokens_and_the_end_marker() -> None:
    f = gqedit.fields(B2)
    tokens = f["tokens"]
    _refused(gqedit.edit(B2, tokens=b""), FormatError, "cannot hold 247 tokens")
    _refused(gqedit.edit(B2, tokens=tokens[:-4]), FormatError, "corrupt|end marker|trailing")
    _refused(gqedit.edit(B2, tokens=tokens + tokens[-4:]), FormatError, "marker|trailing|corrupt")
    a = gqedit.fields(A2)
    taller = gqedit.edit(A2, height=a["height"] + 16, grid_h=a["grid_h"] + 2)
    _refused(taller, FormatError, "end marker|corrupt|outside")
    _refused(gqedit.edit(B2, height=89, grid_h=12), FormatError, "end marker|trailing|corrupt")
    big = gqedit.edit(A2, width=2048, height=1536, grid_h=192, grid_w=256)
    _refused(big, FormatError, "cannot hold 49152 tokens")
    c = gqedit.fields(A2_COARSE)  # K = 161: two symbols a token
    assert c["size"] == 161
    _refused(gqedit.edit(A2_COARSE, tokens=c["tokens"][:-4]), FormatError, "corrupt|end marker")
    taller = gqedit.edit(A2_COARSE, height=c["height"] + 16, grid_h=c["grid_h"] + 2)
    _refused(taller, FormatError, "end marker|corrupt|outside")
    # a payload longer than 3 symbols of 24 bits a token can be is refused from the header
    _refused(gqedit.edit(B2, tokens=b"\1\0\0\0" * 1000), FormatError, "too long")


def test_versions_and_entropy_kinds_must_match() -> None:
    _refused(gqedit.edit(B2, entropy_kind=1), FormatError, "frequency in a version 2 file")
    v1 = encode_file(MODEL, str(DATA / "photo_b.png"), entropy="static").data
    _refused(gqedit.edit(v1, entropy_kind=2), FormatError, "context in a version 1 file")
    _refused(gqedit.edit(v1, version=2), FormatError, "frequency in a version 2 file")
    _refused(gqedit.edit(B2, version=7), FormatError, "unsupported .gq format version 7")
    # version 5 or 6 read into a version 2 file: its "extension" is payload bytes, never trusted
    _refused(gqedit.edit(B2, version=5), FormatError, "corrupt")
    _refused(gqedit.edit(B2, version=6), FormatError, "corrupt|truncated|filter radius")
    # version 3 is the context model's a bins alone (K < 32^2): each version its own sizes
    _refused(gqedit.edit(B2, version=3), FormatError, "version 3 file cannot hold .* K=65536")
    _refused(gqedit.edit(A2_COARSE, version=2), FormatError, "version 2 file cannot hold .* K=161")
    _refused(gqedit.edit(A2_COARSE, entropy_kind=3), FormatError, "prior in a version 3 file")
    bad_fp = gqedit.edit(B2, entropy_fingerprint=b"\0" * 8)
    _refused(bad_fp, ModelError, "context model does not match")


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)  # fmt: skip
@given(
    base=st.sampled_from([B2, A2, A2_COARSE]),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=4),
    cut=st.integers(-3, 3),
)
def test_mutated_version_2_payloads_decode_or_fail_in_one_line(
    base: bytes, edits: list[tuple[float, int]], cut: int
) -> None:
    """Structure-aware fuzz of the new payload: words replaced, the payload cut or grown by a
    few words, the CRC recomputed. A valid-looking stream may decode to another image (the
    format has no redundancy besides the CRC); anything else is a one-line FormatError."""
    f = gqedit.fields(base)
    words = bytearray(f["tokens"])
    n = len(words) // 4
    for where, value in edits:
        i = min(n - 1, int(where * n))
        words[4 * i : 4 * i + 4] = value.to_bytes(4, "little")
    if cut < 0:
        words = words[: 4 * cut]
    else:
        words += bytes(4 * cut)
    data = gqedit.edit(base, tokens=bytes(words))
    t0 = time.perf_counter()
    try:
        image, header = decode_bytes(data, MODEL, "fuzz.gq")
    except FormatError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.gq: ")
    else:
        assert image.size == (header.width, header.height)
    assert time.perf_counter() - t0 < 20


def _model_file(tmp_path: Path, edit) -> Path:  # noqa: ANN001
    """A copy of the default model file with its tensors and card changed by ``edit``."""
    src = REPO / "weights" / "default.safetensors"
    from safetensors import safe_open

    with safe_open(str(src), framework="np") as f:
        meta = dict(f.metadata())
    state = load_file(str(src))
    card = json.loads(meta[CARD_KEY])
    edit(state, card)
    meta[CARD_KEY] = json.dumps(card)
    out = tmp_path / "m.safetensors"
    save_file(state, str(out), metadata=meta)
    return out


def test_a_v2_file_needs_a_model_with_its_context_model(tmp_path: Path) -> None:
    def drop(state: dict, card: dict) -> None:
        for k in [k for k in state if k.startswith("entropy.context.")]:
            del state[k]
        del card["entropy"]["context"]

    old = load_model_file(_model_file(tmp_path, drop))
    assert old.context_coder is None and old.entropy_label == "static"
    _refused(B2, ModelError, "coded with a context model, but this model has none", old)
    # such a model writes version 1 whatever --entropy says, and says which it used
    enc = encode_file(old, str(DATA / "photo_b.png"))
    assert enc.header.version == 1 and enc.entropy == "frequency"
    assert decode_bytes(enc.data, MODEL)[0].size == (150, 97)


@pytest.mark.parametrize(
    ("what", "edit", "match"),
    [
        ("no tensors", lambda s, c: [s.pop(k) for k in list(s) if "context" in k], "no context"),
        ("float weights", lambda s, c: s.update({"entropy.context.w1": s[
            "entropy.context.w1"].astype(np.float32)}), "integer array"),
        ("wrong shape", lambda s, c: s.update({"entropy.context.w2": s[
            "entropy.context.w2"][:, :5]}), "w2 has shape"),
        ("shift", lambda s, c: s.update({"entropy.context.shifts": np.full(
            (1, 4), 99, np.int32)}), "shifts outside"),
        ("dims", lambda s, c: s.update({"entropy.context.dims": np.array(
            [[3, 3]], np.int32)}), "two different"),
        ("bias range", lambda s, c: s.update({"entropy.context.b1": s[
            "entropy.context.b1"].astype(np.int64) + (1 << 40)}), "outside"),
        ("bins", lambda s, c: c["entropy"]["context"].update(bins=16), "shape|bins"),
        ("fingerprint", lambda s, c: s.update({"entropy.context.ba": s[
            "entropy.context.ba"] + 1}), "fingerprint"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hostile_context_tensors_are_one_line_model_errors(
    tmp_path: Path, what: str, edit, match: str  # noqa: ANN001
) -> None:
    path = _model_file(tmp_path, edit)
    with pytest.raises(ModelError, match=match) as info:
        load_model_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    r = runner.invoke(app, ["encode", str(DATA / "photo_b.png"), "-m", str(path),
                            "-o", str(tmp_path / "x.gq")])  # fmt: skip
    assert r.exit_code == 5 and not (tmp_path / "x.gq").exists()


# -- fitting -------------------------------------------------------------------------------


def test_fit_context_on_a_two_group_model_with_a_small_codebook(tmp_path: Path) -> None:
    """`gqtok convert --group 8 --codebook-size 4096` gives a model without a frequency table
    (uniform coding); fit-context adds both, and its files round-trip through the CLI."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PHOTOS:
        (photos / p.name).write_bytes(p.read_bytes())
    base = tmp_path / "g8.safetensors"
    default = str(REPO / "weights" / "default.safetensors")
    r = runner.invoke(app, ["convert", default, "-o", str(base), "--group", "8",
                            "--codebook-size", "4096"])  # fmt: skip
    assert r.exit_code == 0, r.output
    fitted = tmp_path / "g8ctx.safetensors"
    r = runner.invoke(app, ["fit-context", str(photos), "-m", str(base), "-o", str(fitted),
                            "--epochs", "2", "--hidden", "16", "--bins", "8"])  # fmt: skip
    assert r.exit_code == 0, r.output
    m = load_model_file(fitted)
    assert m.groups == 2 and m.context_coder is not None and m.entropy.kind == "frequency"
    assert m.weights_sha256 == load_model_file(base).weights_sha256
    out = tmp_path / "b.gq"
    r = runner.invoke(app, ["encode", str(DATA / "photo_b.png"), "-m", str(fitted),
                            "-o", str(out), "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert rec["entropy"] == "context" and rec["format_version"] == 2
    header, back, _ = unpack_tokens(m, out.read_bytes())
    again = pack_tokens(m, back, entropy="static")
    assert header.groups == 2 and np.array_equal(unpack_tokens(m, again.data)[1].indices,
                                                 back.indices)  # fmt: skip
    uniform = pack_tokens(load_model_file(base), back)
    assert uniform.header.entropy_kind == "uniform"
    assert len(out.read_bytes()) < len(uniform.data)  # photos it was fitted on
    r = runner.invoke(app, ["decode", str(out), "-m", str(fitted), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    # refusing to replace its input without --overwrite, one line, nothing written
    r = runner.invoke(app, ["fit-context", str(photos), "-m", str(fitted), "-o", str(fitted),
                            "--epochs", "0.1"])  # fmt: skip
    assert r.exit_code != 0 and "exists" in r.output
