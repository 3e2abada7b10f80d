"""Structure-aware fuzzing: valid .gq files with header fields and payloads mutated and the CRC
recomputed (so the checksum does not stop them, unlike tests/test_fuzz.py's bit flips), and
tampered model cards and token manifests. Every case must end in a decoded image of the size
the header states or in a documented error class (FormatError, ModelError, InputError with
DecompressionBombError), never another exception, and in bounded time. A few cases also go
through the real command line: documented exit code, one stderr line, no output file left."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from gqtok import export as ex
from gqtok import load_model
from gqtok.codec import decode_bytes, encode_file, encode_pictures
from gqtok.errors import (
    DecompressionBombError,
    FormatError,
    GqtokError,
    InputError,
    ModelError,
)
from gqtok.format import container, shards
from gqtok.format.card import check_card
from gqtok.io.images import read_image
from gqtok.model import build_from_state
from gqtok.quant.config import QuantizerConfig
from gqtok.zoo.load import model_for_record
from tests import gqedit
from tests.conftest import DATA, REPO

MODEL = load_model()
SMALL_K = MODEL.requantized(QuantizerConfig(16, 4096, 42, 1.0))  # the prior + context model
RESEEDED = MODEL.requantized(QuantizerConfig(16, 4096, 7, 1.0))  # the uniform code
DOCUMENTED = (FormatError, ModelError, InputError)  # InputError covers DecompressionBombError
SECONDS = 20.0  # per case, generous for a shared 2-core machine (a case takes ~0.1 s)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=True)  # fmt: skip
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _rgba() -> bytes:
    im = Image.open(DATA / "photo_b.png").convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return encode_pictures(MODEL, [read_image(buf.getvalue())])[0].data


BASES = [
    encode_file(MODEL, str(DATA / "photo_b.png")).data,  # format version 2 (context model)
    encode_file(MODEL, str(DATA / "photo_b.png"), entropy="static").data,  # version 1
    encode_file(SMALL_K, str(DATA / "photo_b.png")).data,
    encode_file(RESEEDED, str(DATA / "photo_b.png")).data,
    _rgba(),
    # version 5: coded at 1.58 times the size, with a colour correction
    encode_pictures(MODEL, [read_image(str(DATA / "photo_b.png"))], quality=90)[0].data,
    # version 6: coded at 2.5 times the size, colour correction and restoration filter
    encode_pictures(MODEL, [read_image(str(DATA / "photo_b.png"))], quality=100)[0].data,
    # version 4: coded at 0.8 times the size
    encode_pictures(MODEL, [read_image(str(DATA / "photo_b.png"))], quality=60)[0].data,
]


def resolve(header: container.Header):  # noqa: ANN201
    """The CLI's model lookup without reloading the file: the named model, requantized."""
    if header.model_id != MODEL.name:
        raise ModelError(f"model {header.model_id!r} named in the file is not available")
    return MODEL.requantized(QuantizerConfig(header.dim, header.size, header.seed, 1.0))


def decode_contract(data: bytes, max_pixels: int = 10**8) -> str:
    """Decode under the contract; returns the outcome's class name."""
    t0 = time.perf_counter()
    try:
        image, header = decode_bytes(data, resolve, "fuzz.gq", max_pixels=max_pixels)
    except DOCUMENTED as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.gq: "), str(e)
        outcome = type(e).__name__
    else:
        assert image.size == (header.width, header.height)
        outcome = "decoded"
    assert time.perf_counter() - t0 < SECONDS
    # read_header reaches the same verdict on the same bytes, streaming them.
    try:
        info = container.read_header(io.BytesIO(data), "fuzz.gq")
    except FormatError as e:
        with pytest.raises(type(e), match="^" + re.escape(str(e)) + "$"):
            container.unpack(data, "fuzz.gq")
    else:
        assert info.header == container.unpack(data, "fuzz.gq")[0]
    return outcome


FIELDS = sorted(gqedit.WIDTHS)
MAXIMA = {k: (1 << (8 * {"B": 1, "H": 2, "I": 4, "Q": 8, "h": 1}[c])) - 1  # h: 0..255 of int16
          for k, c in gqedit.WIDTHS.items()}  # fmt: skip


@st.composite
def field_edits(draw: st.DrawFn) -> dict[str, Any]:
    """One to three header fields set to a boundary, a near-original or any value."""
    out: dict[str, Any] = {}
    base = gqedit.fields(BASES[0])
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        top = MAXIMA[name]
        orig = base.get(name, 0)
        out[name] = draw(st.one_of(
            st.sampled_from([0, 1, 2, top, top - 1, top // 2]),
            st.integers(max(0, orig - 3), min(top, orig + 3)),
            st.sampled_from([min(top, orig * 2), orig // 2, min(top, orig * 8)]),
            st.integers(0, top),
        ))  # fmt: skip
    return out


@FUZZ
@given(st.sampled_from(range(len(BASES))), field_edits(), st.sampled_from([10**8, 20000, 1]))
def test_header_fields(base: int, edits: dict[str, Any], max_pixels: int) -> None:
    decode_contract(gqedit.edit(BASES[base], **edits), max_pixels)


@FUZZ
@given(
    st.sampled_from(range(len(BASES))),
    st.sampled_from(["cut", "extend", "replace", "swap", "alpha", "lie"]),
    st.integers(0, 1 << 16),
    st.binary(max_size=64),
)
def test_payloads(base: int, how: str, n: int, blob: bytes) -> None:
    f = gqedit.fields(BASES[base])
    tokens, alpha = f["tokens"], f["alpha"]
    if how == "cut":
        tokens = tokens[: n % (len(tokens) + 1)]
    elif how == "extend":
        tokens = tokens + blob
    elif how == "replace":
        rng = np.random.default_rng(n)
        tokens = rng.integers(0, 256, len(tokens), dtype=np.uint8).tobytes()
    elif how == "swap":
        tokens = gqedit.fields(BASES[(base + 1) % len(BASES)])["tokens"]
    elif how == "alpha":
        alpha = alpha[: n % (len(alpha) + 1)] + blob
    if how == "lie":
        data = gqedit.build({**f, "token_len": n, "alpha_len": len(alpha)})
    else:
        data = gqedit.edit(BASES[base], tokens=tokens, alpha=alpha)
    decode_contract(data)


@FUZZ
@given(st.binary(min_size=0, max_size=255), st.floats(allow_nan=True, width=32))
def test_model_id_and_beta(model_id: bytes, beta: float) -> None:
    decode_contract(gqedit.edit(BASES[0], model_id=model_id, beta=beta))


def test_the_bases_decode() -> None:
    assert [decode_contract(b) for b in BASES] == ["decoded"] * len(BASES)


# ----------------------------------------------------------------------------------------------
# Model cards and token manifests

DEFAULT = REPO / "weights" / "default.safetensors"
CARD = MODEL.card
STATE = {k: v for k, v in load_file(str(DEFAULT)).items() if k != "entropy.counts"}
COUNTS = load_file(str(DEFAULT))["entropy.counts"].numpy()

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),  # fmt: skip
    max_leaves=6,
)
DELETE = object()


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple, value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    node = doc
    for p in path[:-1]:
        node = node[p]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


CARD_PATHS = [p for p in _paths(CARD) if p[0] not in ("training", "quality", "token_stats")]
SMALL_INTS = st.integers(-3, 70_000) | st.sampled_from([2**24 - 2, 2**24, 2**31, 2**64])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(CARD_PATHS), JSON | SMALL_INTS | st.just(DELETE)),
                min_size=1, max_size=3))  # fmt: skip
def test_tampered_cards(edits: list[tuple[tuple, Any]]) -> None:
    card: Any = CARD
    for path, value in edits:
        try:
            card = _mutate(card, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    t0 = time.perf_counter()
    try:
        check_card(card, "fuzz.safetensors")
        model = build_from_state(STATE, card, "fuzz.safetensors", COUNTS)
    except ModelError as e:
        assert "\n" not in str(e) and str(e).startswith("fuzz.safetensors: ")
    else:
        assert model.quant.size == card.get("quantizer", {}).get("size", 65536)
    assert time.perf_counter() - t0 < SECONDS


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:  # noqa: ANN001
    src = tmp_path_factory.mktemp("src")
    shutil.copy(DATA / "photo_b.png", src / "b.png")
    shutil.copy(DATA / "photo_c.jpg", src / "c.jpg")
    out = tmp_path_factory.mktemp("export") / "tokens"
    ex.export_tokens(MODEL, src, out, resize=32, center_crop=32, shard_size=1)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)  # fmt: skip
@given(st.data())
def test_tampered_manifests(export_dir: Path, tmp_path_factory, data) -> None:  # noqa: ANN001
    folder = tmp_path_factory.mktemp("m")
    for p in export_dir.iterdir():
        shutil.copy(p, folder / p.name)
    manifest = json.loads((export_dir / shards.MANIFEST).read_text())
    paths = [p for p in _paths(manifest) if p[0] not in ("protocol", "sources")]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(JSON | SMALL_INTS | st.just(DELETE) | st.sampled_from(
        ["../shard-00000.safetensors", "/etc/passwd", "shard-00001.safetensors", "a\x00b"]))
    (folder / shards.MANIFEST).write_text(json.dumps(_mutate(manifest, path, value)))
    t0 = time.perf_counter()
    try:
        got = list(shards.iter_entries(folder))
        model = model_for_record(shards.read_manifest(folder), str(DEFAULT))
    except DOCUMENTED as e:
        assert "\n" not in str(e)
    else:
        for entry in got:
            assert entry.tokens.shape[0] == model.groups
            assert int(entry.tokens.max()) < model.quant.size
    assert time.perf_counter() - t0 < SECONDS


# ----------------------------------------------------------------------------------------------
# Through the command line


CLI_CASES = [
    ("big_k", lambda d: gqedit.edit(d, size=2**24 + 5), 4),
    ("huge_grid", lambda d: gqedit.edit(d, width=2**20, height=2**20, grid_h=2**17,
                                        grid_w=2**17), 3),  # fmt: skip
    ("empty_payload", lambda d: gqedit.edit(d, tokens=b""), 4),
    ("too_many_rows", lambda d: gqedit.edit(d, height=97 + 16, grid_h=15), 4),
]


@pytest.mark.parametrize("name,craft,code", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_decode_of_crafted_files(tmp_path: Path, name: str, craft, code: int) -> None:  # noqa: ANN001
    bad = tmp_path / f"{name}.gq"
    bad.write_bytes(craft(BASES[0]))
    out = tmp_path / "out.png"
    res = subprocess.run([sys.executable, "-m", "gqtok", "decode", str(bad), "-o", str(out)],
                         capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]  # no output, no temp file
    assert DecompressionBombError.exit_code == 3 and FormatError.exit_code == 4
    assert issubclass(DecompressionBombError, GqtokError)
