"""Decoder files: other decoders for the default model's tokens, chosen at decode time.

Until a trained perceptual decoder exists, the "perceptual" decoder here is a real decoder
file written by ``save_decoder`` from the default model's own decoder with deterministic noise
added to its weights: every path (discovery, binding, lazy loading, realism, CLI, eval and
compare rows) runs on real files, and "differs from fidelity" is a real difference in pixels.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import gqtok
from gqtok.cli.app import app
from gqtok.codec import decode_bytes, encode_file
from gqtok.errors import ModelError, OutputError
from gqtok.format.card import (
    DECODER_KEY,
    decoder_path,
    find_decoders,
    read_card,
    read_decoder_card,
)
from gqtok.model import decoder_card, load_model_file, save_decoder, weights_hash
from gqtok.nets.config import UNetConfig
from gqtok.nets.unet import Decoder
from gqtok.zoo.paths import list_local_models
from tests.conftest import DATA, REPO

MODEL = REPO / "weights" / "default.safetensors"
NAME = "gqtok-f8c16-cpu-v3"
runner = CliRunner()


def perturbed(decoder: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """The decoder with seeded noise of ``scale`` x each tensor's mean magnitude added."""
    out = copy.deepcopy(decoder)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.abs().mean())
    return out


def model_folder(root: Path, *decoders: Path) -> Path:
    """A weights folder: the default model (a link) and the given decoder files (links)."""
    root.mkdir(parents=True, exist_ok=True)
    os.symlink(MODEL, root / "default.safetensors")
    for d in decoders:
        os.symlink(d, root / d.name)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the default model with a "perceptual" decoder file beside it."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copy(MODEL, folder / "default.safetensors")
    base = load_model_file(folder / "default.safetensors")
    card = decoder_card(base, "perceptual", "test decoder: fidelity weights + seeded noise")
    save_decoder(decoder_path(folder / "default.safetensors", "perceptual"),
                 perturbed(base.decoder), card)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def net(weights: Path) -> gqtok.Model:
    return load_model_file(weights / "default.safetensors")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real photo (64 x 48), so that each decode takes a fraction of a second."""
    out = tmp_path_factory.mktemp("img") / "p.png"
    with Image.open(DATA / "photo_a.jpg") as im:
        im.convert("RGB").crop((120, 60, 184, 108)).save(out)
    return out


@pytest.fixture(scope="module")
def gq(net: gqtok.Model, photo: Path) -> bytes:
    return encode_file(net, str(photo)).data


@pytest.fixture()
def env(weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI finds the model (and its decoders) in ``weights`` first."""
    monkeypatch.setenv("GQTOK_WEIGHTS", str(weights))
    return weights


def test_save_decoder_writes_a_card_bound_to_the_model(weights: Path, net: gqtok.Model) -> None:
    path = weights / "default.decoder-perceptual.safetensors"
    card = read_decoder_card(path)
    assert json.loads(path.with_suffix(".json").read_text()) == card
    assert card["gqtok_decoder"] == 1 and card["name"] == "perceptual"
    assert card["base_model"] == NAME and card["base_weights_sha256"] == net.weights_sha256
    assert card["arch"] == "unet" and card["network"] == net.card["network"]
    assert card["storage_dtype"] == "float32"
    tensors = load_file(path)
    model_keys = {k for k in load_file(MODEL) if k.startswith("decoder.")}
    assert set(tensors) == model_keys
    assert weights_hash(tensors) == card["weights_sha256"]
    assert net.decoders == ["fidelity", "perceptual"] and net.decoder_problems == {}


def test_save_decoder_refuses_bad_names_networks_and_clobbering(
    tmp_path: Path, weights: Path, net: gqtok.Model
) -> None:
    good = decoder_card(net, "sharp")
    with pytest.raises(ModelError, match="fidelity"):
        save_decoder(tmp_path / "m.decoder-fidelity.safetensors", net.decoder,
                     decoder_card(net, "fidelity"))  # fmt: skip
    with pytest.raises(ModelError, match=r"named <model stem>\.decoder-sharp\.safetensors"):
        save_decoder(tmp_path / "sharp.safetensors", net.decoder, good)
    other = Decoder(UNetConfig.from_dict({**net.card["network"], "ch": 64}))
    with pytest.raises(ModelError, match="do not fit the card's network"):
        save_decoder(tmp_path / "m.decoder-sharp.safetensors", other, good)
    with pytest.raises(OutputError):
        save_decoder(weights / "default.decoder-perceptual.safetensors", net.decoder,
                     decoder_card(net, "perceptual"))  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_only_decoders_bound_to_the_model_weights_are_offered(
    tmp_path: Path, weights: Path, net: gqtok.Model
) -> None:
    """A decoder file made for other weights (a retrained model, say) or another network is
    there but never used: listed as refused, and named with its reason if asked for."""
    stale = tmp_path / "src" / "default.decoder-stale.safetensors"
    stale.parent.mkdir()
    old_weights = {**decoder_card(net, "stale"), "base_weights_sha256": "0" * 64}
    save_decoder(stale, net.decoder, old_weights)
    wide = tmp_path / "src" / "default.decoder-wide.safetensors"
    rewritten(weights / "default.decoder-perceptual.safetensors", wide,
              card=lambda c: c.update(name="wide", network={**c["network"], "ch": 64}))  # fmt: skip
    folder = model_folder(tmp_path / "w", weights / "default.decoder-perceptual.safetensors",
                          stale, wide)  # fmt: skip
    m = load_model_file(folder / "default.safetensors")
    assert m.decoders == ["fidelity", "perceptual"]
    assert set(m.decoder_problems) == {"stale", "wide"}
    assert "made for model weights 0000000000000000" in m.decoder_problems["stale"]
    assert "network differs" in m.decoder_problems["wide"]
    with pytest.raises(ModelError) as err:
        m.with_decoder("stale")
    assert err.value.path == str(folder / stale.name) and "\n" not in str(err.value)
    # the same answer from the cards alone (gqtok models, gqtok info)
    scan = find_decoders(folder / "default.safetensors", read_card(folder / "default.safetensors"))
    assert scan.names == m.decoders and set(scan.refused) == {"stale", "wide"}


def test_decoder_files_are_not_models(env: Path) -> None:
    found = [p for p, _ in list_local_models()]
    assert env / "default.safetensors" in found
    assert not [p for p in found if ".decoder-" in p.name]
    with pytest.raises(ModelError, match="a decoder file, not a model") as err:
        gqtok.load_model(env / "default.decoder-perceptual.safetensors")
    assert "\n" not in str(err.value)
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = [r for r in json.loads(res.stdout)["models"] if r["kind"] in ("default", "local")]
    assert "perceptual" not in [r["name"] for r in rows]
    mine = next(r for r in rows if r["path"] == str(env / "default.safetensors"))
    assert mine["decoders"] == ["fidelity", "perceptual"] and mine["decoders_refused"] == []
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "fidelity, perceptual" in res.stdout


def test_api_decoder_and_realism(net: gqtok.Model, photo: Path) -> None:
    tokens = gqtok.encode(net, Image.open(photo))
    fid = gqtok.decode_array(net, tokens)
    assert np.array_equal(gqtok.decode_array(net, tokens, decoder="fidelity"), fid)
    per = gqtok.decode_array(net, tokens, decoder="perceptual")
    assert np.abs(per.astype(int) - fid).mean() > 0.5
    assert np.array_equal(gqtok.decode_array(net, tokens, realism=0), fid)
    assert np.array_equal(gqtok.decode_array(net, tokens, realism=1.0), per)
    assert np.array_equal(gqtok.decode_array(net, tokens, decoder="perceptual", realism=0), fid)
    half = gqtok.decode_array(net, tokens, realism=0.5)
    gap = np.abs(per.astype(int) - fid).mean()
    assert 0 < np.abs(half.astype(int) - fid).mean() < gap
    assert 0 < np.abs(half.astype(int) - per).mean() < gap
    img = gqtok.decode(net, tokens, decoder="perceptual")
    assert np.array_equal(np.asarray(img), per)
    t = gqtok.decode_tensor(net, tokens, decoder="perceptual")
    assert torch.equal((t * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(per))

    # the weights: r = 0 and r = 1 are the two decoders, 0.5 their mean
    f, p = net.decoder.state_dict(), net.with_decoder("perceptual").decoder.state_dict()
    h = net.with_decoder(realism=0.5).decoder.state_dict()
    assert net.with_decoder(realism=0).decoder is net.decoder
    for key in f:
        torch.testing.assert_close(h[key], (f[key] + p[key]) / 2, rtol=0, atol=1e-6)


def test_with_decoder_shares_everything_that_identifies_the_tokens(
    net: gqtok.Model, photo: Path, gq: bytes
) -> None:
    per = net.with_decoder("perceptual")
    assert per is net.with_decoder("perceptual")  # made once, decoder read once
    assert per.encoder is net.encoder and per.card is net.card and per.quant == net.quant
    assert per.entropy is net.entropy and per.weights_sha256 == net.weights_sha256
    assert (per.name, per.label, per.decoder_name) == (NAME, f"{NAME}+perceptual", "perceptual")
    assert net.with_decoder(realism=0.25).label == f"{NAME}+perceptual@0.25"
    assert net.label == NAME and per.with_decoder("fidelity").label == NAME
    assert encode_file(per, str(photo)).data == gq  # the same .gq file whatever the decoder
    # a model that chose a decoder keeps it; decode_bytes takes the keywords too
    image, _ = decode_bytes(gq, per)
    again, _ = decode_bytes(gq, net, decoder="perceptual")
    plain, _ = decode_bytes(gq, net)
    assert np.array_equal(np.asarray(image), np.asarray(again))
    assert not np.array_equal(np.asarray(image), np.asarray(plain))


def test_unknown_decoder_and_bad_realism(tmp_path: Path, net: gqtok.Model) -> None:
    with pytest.raises(ModelError, match=r"unknown decoder 'sharp'.*available: fidelity, perc"):
        net.with_decoder("sharp")
    with pytest.raises(ValueError, match="realism"):
        net.with_decoder(realism=1.5)
    with pytest.raises(TypeError, match="realism"):
        net.with_decoder(realism=True)  # type: ignore[arg-type]
    alone = load_model_file(model_folder(tmp_path / "w") / "default.safetensors")
    assert alone.decoders == ["fidelity"]
    with pytest.raises(ModelError, match=r"realism needs a 'perceptual' decoder.* has fidelity"):
        alone.with_decoder(realism=0.5)


def test_cli_decode_with_a_decoder(env: Path, tmp_path: Path, net: gqtok.Model, gq: bytes) -> None:
    src = tmp_path / "p.gq"
    src.write_bytes(gq)

    def decode(out: str, *opts: str) -> bytes:
        res = runner.invoke(app, ["decode", str(src), "-o", str(tmp_path / out), "-q", *opts])
        assert res.exit_code == 0, res.output
        return (tmp_path / out).read_bytes()

    plain = decode("a.png")
    assert decode("b.png", "--decoder", "fidelity") == plain
    per = decode("c.png", "--decoder", "perceptual")
    assert per != plain
    want, _ = decode_bytes(gq, net, decoder="perceptual")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), np.asarray(want))
    assert decode("d.png", "--realism", "0") == plain
    assert decode("e.png", "--realism", "1") == per
    assert decode("f.png", "--realism", "0.5") not in (plain, per)
    # --json records the decoder that was used, not the options as typed
    for opts, used in ((["--realism", "0.5"], ["perceptual", 0.5]),
                       (["--realism", "1"], ["perceptual", None]), ([], ["fidelity", None])):
        res = runner.invoke(app, ["decode", str(src), "-o", str(tmp_path / "j.png"), "--json",
                                  "--overwrite", *opts])  # fmt: skip
        assert res.exit_code == 0, res.output
        rec = json.loads(res.stdout)
        assert [rec["decoder"], rec["realism"]] == used, opts
    res = runner.invoke(app, ["decode", str(src), "-o", str(tmp_path / "x.png"),
                              "--decoder", "sharp"])  # fmt: skip
    assert res.exit_code == 5
    assert res.stderr == (f"error: {src}: unknown decoder 'sharp' for model '{NAME}'"
                          " (available: fidelity, perceptual)\n")  # fmt: skip
    for opts in (["--decoder", "Sharp!"], ["--realism", "1.5"], ["--realism", "nan"]):
        res = runner.invoke(app, ["decode", str(src), "-o", str(tmp_path / "x.png"), *opts])
        assert res.exit_code == 2, opts
    assert not (tmp_path / "x.png").exists()


def test_cli_import_with_a_decoder(env: Path, tmp_path: Path, net: gqtok.Model,
                                   photo: Path) -> None:  # fmt: skip
    tokens = gqtok.encode(net, Image.open(photo))
    grid = tmp_path / "grid.npy"
    np.save(grid, tokens.indices.numpy().astype(np.uint16))
    size = f"{tokens.width}x{tokens.height}"
    out = tmp_path / "p.png"
    res = runner.invoke(app, ["import", str(grid), "-o", str(out), "--size", size,
                              "--decoder", "perceptual", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    want = gqtok.decode_array(net, tokens, decoder="perceptual")
    assert np.array_equal(np.asarray(Image.open(out)), want)
    res = runner.invoke(app, ["import", str(grid), "-o", str(tmp_path / "q.png"), "--size", size,
                              "--decoder", "sharp"])  # fmt: skip
    assert res.exit_code == 5 and "unknown decoder 'sharp'" in res.stderr
    assert res.stderr.count("\n") == 1


def test_info_shows_the_decoders_of_the_file_model(env: Path, tmp_path: Path, gq: bytes) -> None:
    src = tmp_path / "p.gq"
    src.write_bytes(gq)
    res = runner.invoke(app, ["info", str(src), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decoders"] == ["fidelity", "perceptual"]
    res = runner.invoke(app, ["info", str(src)])
    assert "fidelity, perceptual" in res.stdout


# Hostile decoder files ------------------------------------------------------------------------


def _parts(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict[str, Any], data: bytes) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def rewritten(
    src: Path,
    dst: Path,
    card: Callable[[dict[str, Any]], Any] | None = None,
    card_text: str | None = None,
) -> Path:
    """``src`` (a decoder file) with its card changed in place or replaced by raw text."""
    header, data = _parts(src)
    meta = header["__metadata__"]
    if card is not None:
        c = json.loads(meta[DECODER_KEY])
        card(c)
        meta[DECODER_KEY] = json.dumps(c)
    if card_text is not None:
        meta[DECODER_KEY] = card_text
    return _write(dst, header, data)


def _wrong_shape(src: Path, dst: Path) -> Path:
    """Tensors that do not fit the network, under a card that is otherwise right (its hash
    is of these very tensors): refused from the tensor table, before any is read."""
    state = load_file(src)
    state["decoder.conv_out.weight"] = torch.zeros(3, 7, 3, 3)
    card = read_decoder_card(src)
    card["weights_sha256"] = weights_hash(state)
    save_file(state, str(dst), metadata={DECODER_KEY: json.dumps(card)})
    return dst


def _extra_tensor(src: Path, dst: Path) -> Path:
    state = {**load_file(src), "encoder.conv_in.weight": torch.zeros(2)}
    card = {**read_decoder_card(src), "weights_sha256": weights_hash(state)}
    save_file(state, str(dst), metadata={DECODER_KEY: json.dumps(card)})
    return dst


def _altered(src: Path, dst: Path) -> Path:
    header, data = _parts(src)
    return _write(dst, header, bytes([data[0] ^ 1]) + data[1:])


def _huge_header(src: Path, dst: Path) -> Path:
    dst.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    return dst


HOSTILE = {
    "truncated": (lambda s, d: d.write_bytes(s.read_bytes()[:-1000]) and d,
                  r"cannot read decoder file"),
    "stub": (lambda s, d: d.write_bytes(b"\x01\x02\x03") and d, "too short"),
    "not-json": (lambda s, d: rewritten(s, d, card_text="{oops"), "bad decoder card: not JSON"),
    "no-card": (lambda s, d: rewritten(s, d, card_text=None, card=lambda c: c.clear()),
                "bad decoder card: gqtok_decoder: is missing"),
    "bad-field": (lambda s, d: rewritten(s, d, card=lambda c: c.update(storage_dtype="int8")),
                  "bad decoder card: storage_dtype"),
    "wrong-shape": (_wrong_shape, r"decoder.conv_out.weight has shape \(3, 7, 3, 3\)"),
    "extra-tensor": (_extra_tensor, "unexpected encoder.conv_in.weight"),
    "altered": (_altered, "do not hash to the card's weights_sha256"),
    "huge-header": (_huge_header, "header of 1099511627776 bytes exceeds"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_decoder_file_is_one_line_naming_it(
    case: str, tmp_path: Path, weights: Path
) -> None:
    make, match = HOSTILE[case]
    bad = make(weights / "default.decoder-perceptual.safetensors",
               tmp_path / "default.decoder-perceptual.safetensors")  # fmt: skip
    folder = model_folder(tmp_path / "w", bad)
    m = load_model_file(folder / "default.safetensors")  # the model itself is unharmed
    assert m.decoder_name == "fidelity"
    with pytest.raises(ModelError, match=match) as err:
        _ = m.with_decoder("perceptual").decoder
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{folder / bad.name}: ")


def test_cli_hostile_decoder_file(tmp_path: Path, weights: Path, gq: bytes,
                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    bad = _wrong_shape(weights / "default.decoder-perceptual.safetensors",
                       tmp_path / "default.decoder-perceptual.safetensors")  # fmt: skip
    stub = tmp_path / "default.decoder-stub.safetensors"
    stub.write_bytes(b"{}")
    folder = model_folder(tmp_path / "w", bad, stub)
    monkeypatch.setenv("GQTOK_WEIGHTS", str(folder))
    src = tmp_path / "p.gq"
    src.write_bytes(gq)
    out = tmp_path / "x.png"
    res = runner.invoke(app, ["decode", str(src), "-o", str(out), "--decoder", "perceptual"])
    assert res.exit_code == 5 and not out.exists()
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert res.stderr.startswith(f"error: {folder / bad.name}: tensor decoder.conv_out.weight")
    res = runner.invoke(app, ["decode", str(src), "-o", str(out), "--decoder", "stub"])
    assert res.exit_code == 5 and res.stderr.startswith(f"error: {folder / stub.name}: ")
    res = runner.invoke(app, ["decode", str(src), "-o", str(out), "-q"])  # fidelity still works
    assert res.exit_code == 0 and out.exists()
    res = runner.invoke(app, ["models", "--json"])
    rows = json.loads(res.stdout)["models"]
    row = next(r for r in rows if r["path"] == str(folder / "default.safetensors"))
    assert row["decoders"] == ["fidelity", "perceptual"]  # its card is valid: found, fails on use
    assert [r["name"] for r in row["decoders_refused"]] == ["stub"]


# Eval and compare ----------------------------------------------------------------------------


def test_eval_and_compare_rows_per_decoder(env: Path, tmp_path: Path, photo: Path) -> None:
    res = runner.invoke(app, ["eval", str(photo), "--decoder", "perceptual", "--metrics", "psnr",
                              "--json", "-", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["model"] == f"{NAME}+perceptual" and rep["decoder"] == "perceptual"
    res = runner.invoke(app, ["eval", str(photo), "--realism", "0.5", "--metrics", "psnr",
                              "--json", "-", "-q"])  # fmt: skip
    assert json.loads(res.stdout)["model"] == f"{NAME}+perceptual@0.5"

    res = runner.invoke(app, ["compare", str(photo), "--bpp", "1", "--codecs", "jpeg", "--decoder",
                              "fidelity,perceptual", "--decoder", "perceptual@1", "-o",
                              str(tmp_path / "rd"), "--json", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["models"] == [NAME, f"{NAME}+perceptual"]
    rows = {(r["target"], r["codec"]): r for r in rep["summary"]}
    own = f"@{NAME}"
    fid, per = rows[(own, f"gqtok:{NAME}")], rows[(own, f"gqtok:{NAME}+perceptual")]
    assert fid["bpp"] == per["bpp"] and fid["psnr"] != per["psnr"]  # same tokens, two decoders
    jpeg = [p for p in rep["points"] if p["codec"] == "jpeg" and p["target"] == own]
    assert len(jpeg) == 1  # the classical codec is matched once at gqtok's rate


def test_shipped_perceptual_decoder_serves_the_default_model() -> None:
    """The embedded default's perceptual decoder: bound, and on a real held-out-style photo
    sharper by ST-LPIPS than the fidelity decoder at a bounded PSNR cost, same .gq bytes."""
    from gqtok.eval.metrics.fidelity import psnr
    from gqtok.eval.metrics.lpips import load_distance

    model = gqtok.load_model()
    assert model.decoders == ["fidelity", "perceptual"] and not model.decoder_problems
    enc = encode_file(model, str(REPO / "examples" / "sample.jpg"))
    assert encode_file(model.with_decoder("perceptual"), str(REPO / "examples" / "sample.jpg")
                       ).data == enc.data  # the decoder never changes the tokens
    rgb = np.asarray(Image.open(REPO / "examples" / "sample.jpg").convert("RGB"))
    out = {n: np.asarray(decode_bytes(enc.data, model, decoder=n)[0].convert("RGB"))
           for n in ("fidelity", "perceptual")}
    dist = load_distance("stlpips_alex")
    d_fid, d_perc = dist(rgb, out["fidelity"]), dist(rgb, out["perceptual"])
    assert d_perc < 0.8 * d_fid, (d_fid, d_perc)
    assert psnr(rgb, out["perceptual"]) > psnr(rgb, out["fidelity"]) - 2.5
