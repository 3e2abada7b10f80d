"""Reference checkpoints and released models: safe loading, inferred configs, the ViT family
with tiling, registry names in .gq files, and the Hugging Face download path (local server)."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from gqtok import load_model
from gqtok.codec import decode_bytes, decode_to_array, encode_arrays, pack_tokens
from gqtok.errors import ModelError
from gqtok.nets.config import UNetConfig, ViTConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.nets.vit import ViTDecoder, ViTEncoder
from gqtok.quant.search import quantize
from gqtok.zoo.convert import infer_network, read_state
from tests.conftest import FIXTURES

TOL = {"rtol": 1e-4, "atol": 1e-4}
U = load_file(str(FIXTURES / "unet_small.safetensors"))
V = load_file(str(FIXTURES / "vit_small.safetensors"))
CKPT = FIXTURES / "unet_small_lightning.ckpt"
VIT = FIXTURES / "vit_small.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Custom:
    """A pickled object that weights_only loading refuses."""

    def __init__(self) -> None:
        self.note = "training callback state"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread; gqtok and Hub caches in tmp; no Hub settings from the environment."""
    monkeypatch.setenv("GQTOK_CACHE", str(tmp_path / "gqtok-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in (
        "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "GQTOK_HF_REVISION"
    ):
        monkeypatch.delenv(var, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vit_grid(t: torch.Tensor, side: int = 4) -> torch.Tensor:
    """(B, L, C) raster tokens -> (B, C, h, w)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, -1)


def _fake_entry(name: str, filename: str, arch: str = "unet", heads: int | None = None):  # noqa: ANN202
    from gqtok.zoo.registry import Entry

    return Entry(
        name=name, arch=arch, dim=16, bpp=0.25, repo="test/GQModel", filename=filename, heads=heads
    )


# ------------------------------------------------------------------------------------------
# Reference outputs through the checkpoint loader


def test_lightning_checkpoint_reproduces_reference_unet() -> None:
    model = load_model(CKPT)
    assert model.arch == "unet" and model.layout == "bchw" and model.clamp is None
    assert model.name == "unet_small_lightning"
    # Inferred config: same network as the fixture's (resolution 64, attn [8]) == (256, [32]).
    ref = UNetConfig.from_dict(json.loads((FIXTURES / "unet_small.json").read_text())["config"])
    got = UNetConfig.from_dict(model.card["network"])
    assert (got.ch, got.ch_mult, got.num_res_blocks, got.z_channels) == (32, (1, 2, 2, 4), 1, 16)
    with torch.device("meta"):
        shapes_ref = {k: v.shape for k, v in Encoder(ref).state_dict().items()}
        shapes_got = {k: v.shape for k, v in Encoder(got).state_dict().items()}
    assert shapes_ref == shapes_got
    moments = model.moments(U["io.x"])
    torch.testing.assert_close(moments, U["io.moments"], **TOL)
    idx, zhat = model.quantize(moments)
    assert torch.equal(idx, U["io.g16.indices"]) and torch.equal(zhat, U["io.g16.zhat"])
    torch.testing.assert_close(model.decode_indices(idx), U["io.g16.decoded"], **TOL)
    torch.testing.assert_close(
        model.decode_latent(U["io.moments"][:, :16]), U["io.mu_decoded"], **TOL
    )
    # Training-only keys (loss.*) were dropped.
    assert all(k.startswith(("encoder.", "decoder.")) for k in read_state(CKPT))


def test_vit_fixture_reproduces_reference_outputs() -> None:
    model = load_model(VIT, heads=2)
    assert model.arch == "vit" and model.layout == "blc" and model.clamp == (-1.0, 1.0)
    cfg = json.loads((FIXTURES / "vit_small.json").read_text())["config"]
    assert ViTConfig.from_dict(model.card["network"]) == ViTConfig.from_dict(cfg)
    moments = model.moments(V["io.x"])  # (B, 32, 4, 4) grid
    torch.testing.assert_close(moments, _vit_grid(V["io.moments"]), **TOL)
    idx, _ = model.quantize(moments)
    assert torch.equal(idx.permute(0, 2, 3, 1).reshape(2, 16, 1), V["io.g16.indices"])
    torch.testing.assert_close(model.decode_indices(idx), V["io.g16.decoded_clamped"], **TOL)
    with torch.inference_mode():
        raw = model.decoder(_vit_grid(V["io.g16.zhat"]))
        mu = model.decoder(_vit_grid(V["io.moments"][..., :16].contiguous()))
        blc = model.encoder.tokens(V["io.x"])
    torch.testing.assert_close(raw, V["io.g16.decoded"], **TOL)
    torch.testing.assert_close(mu, V["io.mu_decoded"], **TOL)
    torch.testing.assert_close(blc, V["io.moments"], **TOL)


@pytest.mark.parametrize("dim", [16, 8, 4])
def test_grid_quantization_equals_reference_blc_quantization(dim: int) -> None:
    """GQ per token does not depend on position: the stitched grid gives the blc tokens."""
    blc_idx, blc_z = quantize(V["io.moments"], dim, layout="blc")
    grid_idx, grid_z = quantize(_vit_grid(V["io.moments"]), dim, layout="bchw")
    ng = 16 // dim
    assert torch.equal(grid_idx.permute(0, 2, 3, 1).reshape(2, 16, ng), blc_idx)
    assert torch.equal(_vit_grid(blc_z), grid_z)
    if dim == 16:
        assert torch.equal(blc_idx, V["io.g16.indices"])


def test_vit_runs_on_any_image_size_through_tiles() -> None:
    model = load_model(VIT, heads=2)
    rng = np.random.default_rng(0)
    # Exactly 2 x 1 tiles: each tile is the reference on its crop.
    x = torch.rand(1, 3, 64, 32) * 2 - 1
    grid = model.moments(x)
    with torch.inference_mode():
        top, bottom = model.encoder.tokens(x[..., :32, :]), model.encoder.tokens(x[..., 32:, :])
    torch.testing.assert_close(grid[..., :4, :], _vit_grid(top), **TOL)
    torch.testing.assert_close(grid[..., 4:, :], _vit_grid(bottom), **TOL)
    # Overlapping last tiles (40 x 56) and a padded short side (20 x 24), full codec round trip.
    for h, w in ((40, 56), (20, 24), (33, 70)):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (tok,) = encode_arrays(model, [rgb])
        assert tuple(tok.indices.shape) == (1, -(-h // 8), -(-w // 8))
        enc = pack_tokens(model, tok)
        assert enc.header.layout == "blc"
        image, header = decode_bytes(enc.data, model)
        assert image.size == (w, h) and header.layout == "blc"
        assert decode_to_array(model, tok).shape == (h, w, 3)


# ------------------------------------------------------------------------------------------
# Released key lists: the full configs are inferred exactly (meta tensors, nothing allocated)


def _meta_state(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    full = json.loads((FIXTURES / name).read_text())
    return full, {k: torch.empty(v, device="meta") for k, v in full["keys"].items()}


def test_released_unet_keys_infer_released_config() -> None:
    full, state = _meta_state("unet_full_keys.json")
    arch, cfg = infer_network(state)
    assert arch == "unet" and cfg == UNetConfig() == UNetConfig.from_dict(full["config"])
    with torch.device("meta"):
        enc, dec = Encoder(cfg), Decoder(cfg)
    shapes = {f"encoder.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    shapes.update({f"decoder.{k}": list(v.shape) for k, v in dec.state_dict().items()})
    assert shapes == full["keys"]


def test_released_vit_keys_infer_released_config() -> None:
    full, state = _meta_state("vit_full_keys.json")
    arch, cfg = infer_network(state)  # heads: 768 / 64 = 12, the released value
    assert arch == "vit" and cfg == ViTConfig() == ViTConfig.from_dict(full["config"])
    with torch.device("meta"):
        enc, dec = ViTEncoder(cfg), ViTDecoder(cfg)
    assert sum(p.numel() for p in enc.parameters()) == full["num_params"]["encoder"]
    assert sum(p.numel() for p in dec.parameters()) == full["num_params"]["decoder"]
    keys = [f"encoder.{k}" for k in enc.state_dict()] + [f"decoder.{k}" for k in dec.state_dict()]
    assert keys == list(full["keys"])  # same names, same order
    shapes = {f"encoder.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    shapes.update({f"decoder.{k}": list(v.shape) for k, v in dec.state_dict().items()})
    assert shapes == full["keys"]


# ------------------------------------------------------------------------------------------
# Safety and error messages


def _unet_state() -> dict[str, torch.Tensor]:
    return {k: v for k, v in U.items() if not k.startswith("io.")}


def test_pickle_beyond_weights_is_refused_unless_trusted(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.ckpt"
    torch.save({"state_dict": _unet_state(), "callbacks": {"x": Custom()}}, path)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert "--trust-pickle" in msg and "Custom" in msg and "\n" not in msg
    model = load_model(path, trust_pickle=True)
    torch.testing.assert_close(model.moments(U["io.x"]), U["io.moments"], **TOL)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state = _unet_state()
    del state["decoder.conv_out.bias"]
    state["encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as exc:
        load_model(path)
    assert "decoder.conv_out.bias" in str(exc.value) and "encoder.extra.weight" in str(exc.value)
    vit = {k: v for k, v in V.items() if not k.startswith("io.")}
    del vit["encoder.transformer.resblocks.1.attn.in_proj_bias"]
    torch.save({"state_dict": vit}, tmp_path / "vit.ckpt")
    with pytest.raises(ModelError, match=r"encoder\.transformer\.resblocks\.1\.attn\.in_proj_bias"):
        load_model(tmp_path / "vit.ckpt", heads=2)


def test_not_a_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_model(bad)
    torch.save({"state_dict": {"loss.logvar": torch.zeros(())}}, tmp_path / "loss.ckpt")
    with pytest.raises(ModelError, match="no encoder"):
        load_model(tmp_path / "loss.ckpt")


# ------------------------------------------------------------------------------------------
# Registry names, conversion, decoding by model id


def test_registry_name_converts_once_and_decodes_by_model_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gqtok.zoo import registry
    from gqtok.zoo.hub import is_available
    from gqtok.zoo.load import model_for_header

    entry = _fake_entry("fake_gq_0.25", "fake_gq_0.25.ckpt")
    monkeypatch.setitem(registry.ENTRIES, entry.name, entry)
    drop = registry.dropin_path(entry)
    drop.parent.mkdir(parents=True)
    shutil.copy(CKPT, drop)
    model = load_model(entry.name)
    cached = registry.converted_path(entry)
    assert cached.is_file() and model.name == entry.name
    assert model.card["origin"]["file"] == entry.filename
    rgb = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    enc = pack_tokens(model, encode_arrays(model, [rgb])[0])
    drop.unlink()  # later runs use the converted copy only
    assert is_available(entry.name)
    image, header = decode_bytes(enc.data, model_for_header)
    assert header.model_id == entry.name and image.size == (40, 24)
    direct = load_model(CKPT)  # checkpoint and conversion hash alike
    assert direct.weights_sha256 == model.weights_sha256


def test_header_quantizer_settings_follow_the_file(tmp_path: Path) -> None:
    from gqtok.model import save_model
    from gqtok.zoo.load import model_for_header

    base = load_model(CKPT)
    save_model(tmp_path / "small.safetensors", base.encoder, base.decoder, base.card)
    g8 = load_model(CKPT, dim=8)
    assert g8.quant.dim == 8 and g8.groups == 2
    rgb = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    enc = pack_tokens(g8, encode_arrays(g8, [rgb])[0])
    image, header = decode_bytes(
        enc.data, lambda h: model_for_header(h, str(tmp_path / "small.safetensors"))
    )
    assert header.dim == 8 and image.size == (24, 16)


def test_convert_command_writes_a_gqtok_model(tmp_path: Path) -> None:
    import typer

    from gqtok.cli.models import register
    from gqtok.format.card import read_card

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register(app)
    out = tmp_path / "model.safetensors"
    args = ["convert", str(VIT), "-o", str(out), "--heads", "2", "--group", "8", "--name", "tiny"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    card = read_card(out)
    assert (card["name"], card["arch"], card["layout"]) == ("tiny", "vit", "blc")
    assert card["quantizer"]["dim"] == 8 and card["network"]["heads"] == 2
    model = load_model(out)
    assert model.weights_sha256 == load_model(VIT, heads=2).weights_sha256
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 6


def test_models_table_lists_released_models() -> None:
    from gqtok.cli.models import models_table

    rows = {r["name"]: r for r in models_table()}
    for name in ("sd3unet_gq_0.25", "sd3unet_gq_1.00", "bsqvit_gq_0.50"):
        assert rows[name]["kind"] == "released" and rows[name]["available"] is False
        assert rows[name]["est_cpu_s_256"] > 0
    assert rows["sd3unet_gq_0.50"]["dim"] == 8 and rows["bsqvit_gq_1.00"]["bpp_nominal"] == 1.0
    assert [r["kind"] for r in rows.values()].count("default") == 1


# ------------------------------------------------------------------------------------------
# The Hugging Face Hub path, against a local server speaking the resolve endpoint


class _HubHandler(http.server.BaseHTTPRequestHandler):
    def _headers(self) -> bytes | None:
        files: dict[str, bytes] = self.server.files  # type: ignore[attr-defined]
        self.server.log.append((self.command, self.path))  # type: ignore[attr-defined]
        body = files.get(self.path.split("?")[0])
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        return body

    def do_HEAD(self) -> None:  # noqa: N802 - http.server API
        self._headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = self._headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    server.files = {"/test/GQModel/resolve/main/hub_gq_0.25.ckpt": CKPT.read_bytes()}  # type: ignore[attr-defined]
    server.log = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()


def test_hub_download_offline_cache_and_offline_error(
    hub: http.server.ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gqtok.zoo import load, registry

    entry = _fake_entry("hub_gq_0.25", "hub_gq_0.25.ckpt")
    monkeypatch.setitem(registry.ENTRIES, entry.name, entry)
    # Online: HEAD + GET through hf_hub_download into HF_HOME, then one conversion.
    path = load.ensure(entry.name)
    methods = [m for m, _ in hub.log]  # type: ignore[attr-defined]
    assert "GET" in methods and "HEAD" in methods
    blob = tmp_path / "hf" / "hub" / "models--test--GQModel" / "snapshots" / COMMIT
    assert (blob / entry.filename).is_file()
    model = load_model(entry.name)
    assert model.card["origin"]["commit"] == COMMIT and Path(model.source) == path
    # Offline with the checkpoint in the Hub cache: converts again without any request.
    path.unlink()
    hub.log.clear()  # type: ignore[attr-defined]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load.ensure(entry.name) == path and path.is_file()
    assert hub.log == []  # type: ignore[attr-defined]
    # Offline, nothing cached: one line saying what to download and where to put it.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("GQTOK_CACHE", str(tmp_path / "empty-gqtok"))
    with pytest.raises(ModelError) as exc:
        load_model(entry.name)
    msg = str(exc.value)
    assert "\n" not in msg and "hf download test/GQModel hub_gq_0.25.ckpt" in msg
    assert str(registry.dropin_path(entry)) in msg and "--model PATH" in msg
    assert hub.log == []  # type: ignore[attr-defined]


def test_hub_missing_file_is_a_model_error(
    hub: http.server.ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gqtok.zoo import load, registry

    entry = _fake_entry("absent_gq", "absent_gq.ckpt")
    monkeypatch.setitem(registry.ENTRIES, entry.name, entry)
    with pytest.raises(ModelError, match="absent_gq.ckpt"):
        load.ensure(entry.name)


def test_hub_revision_pin_is_requested(
    hub: http.server.ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gqtok.zoo import load, registry

    pin = "0123456789abcdef0123456789abcdef01234567"
    hub.files[f"/test/GQModel/resolve/{pin}/pinned_gq.ckpt"] = CKPT.read_bytes()  # type: ignore[attr-defined]
    entry = _fake_entry("pinned_gq", "pinned_gq.ckpt")
    monkeypatch.setitem(registry.ENTRIES, entry.name, entry)
    monkeypatch.setenv("GQTOK_HF_REVISION", pin)
    path = load.ensure(entry.name)
    assert pin in path.name
    paths = [p for _, p in hub.log]  # type: ignore[attr-defined]
    assert paths and all(f"/resolve/{pin}/" in p for p in paths)
