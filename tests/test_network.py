"""The UNet reproduces the reference outputs and the released parameter layout."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from gqtok.nets.config import UNetConfig
from gqtok.nets.unet import Decoder, Encoder
from gqtok.quant.search import quantize
from tests.conftest import FIXTURES

U = load_file(str(FIXTURES / "unet_small.safetensors"))


def _small() -> tuple[Encoder, Decoder]:
    cfg = UNetConfig.from_dict(json.loads((FIXTURES / "unet_small.json").read_text())["config"])
    enc, dec = Encoder(cfg).eval(), Decoder(cfg).eval()
    enc.load_state_dict({k[8:]: v for k, v in U.items() if k.startswith("encoder.")})
    dec.load_state_dict({k[8:]: v for k, v in U.items() if k.startswith("decoder.")})
    return enc, dec


def test_unet_small_matches_reference_outputs() -> None:
    enc, dec = _small()
    with torch.no_grad():
        moments = enc(U["io.x"])
        torch.testing.assert_close(moments, U["io.moments"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            dec(U["io.moments"][:, :16]), U["io.mu_decoded"], rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(dec(U["io.g16.zhat"]), U["io.g16.decoded"], rtol=1e-4, atol=1e-4)
    # End to end: our encoder + our GQ give the reference indices (no token is near a flip).
    idx, zhat = quantize(moments, 16)
    assert torch.equal(idx, U["io.g16.indices"])
    assert torch.equal(zhat, U["io.g16.zhat"])


def test_released_config_has_reference_parameter_names_and_shapes() -> None:
    full = json.loads((FIXTURES / "unet_full_keys.json").read_text())
    cfg = UNetConfig.from_dict(full["config"])
    assert cfg == UNetConfig()  # defaults are the released sd3unet_gq_* config
    enc, dec = Encoder(cfg), Decoder(cfg)
    n_enc = sum(p.numel() for p in enc.parameters())
    n_dec = sum(p.numel() for p in dec.parameters())
    assert (n_enc, n_dec) == (35_325_856, 51_648_771)
    shapes = {f"encoder.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    shapes.update({f"decoder.{k}": list(v.shape) for k, v in dec.state_dict().items()})
    assert shapes == full["keys"]
    keys = list(shapes)
    assert (
        "decoder.up.3.attn.2.proj_out.weight" in keys and "encoder.mid.attn_1.q.weight" not in keys
    )


def test_stem_extension_keeps_names_and_downsampling() -> None:
    cfg = UNetConfig(ch=32, ch_mult=(2, 2, 4), num_res_blocks=1, attn_resolutions=(), stem=2)
    assert cfg.downsample == 8
    enc, dec = Encoder(cfg), Decoder(cfg)
    x = torch.rand(1, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        m = enc(x)
        assert m.shape == (1, 32, 5, 3)
        assert dec(m[:, :16]).shape == (1, 3, 40, 24)
    assert enc.conv_in.weight.shape == (32, 12, 3, 3)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
