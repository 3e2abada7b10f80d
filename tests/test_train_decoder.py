"""`gqtok train --decoder-only`: a second decoder for a frozen model's tokens (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gqtok.nets.patchgan import PatchDiscriminator, hinge_d_loss
from gqtok.train.checkpoints import load_checkpoint
from gqtok.train.export_model import export
from gqtok.train.loop import run
from tests.test_train import HAS_STLPIPS, _cfg, data_dir, full_run  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def base_model(full_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    export(full_run, path, "tiny-base", token_stats_images=2)
    return path


def _decoder_cfg(data: Path, out: Path, base: Path, **kw: object):  # noqa: ANN202
    return _cfg(data, out, init=str(base), decoder_only=True, disc_start=2, disc_channels=8,
                disc_layers=2, **kw)


def _model_part(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k[len(prefix):]: v.float() for k, v in load_file(str(path)).items()
            if k.startswith(prefix)}


def test_decoder_only_freezes_encoder_and_trains_decoder(
    data_dir: Path, base_model: Path, tmp_path: Path  # noqa: F811
) -> None:
    out = tmp_path / "dec"
    run(_decoder_cfg(data_dir, out, base_model))
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 4 and state["config"]["decoder_only"]
    enc0, dec0 = _model_part(base_model, "encoder."), _model_part(base_model, "decoder.")
    for key, value in enc0.items():  # not one encoder weight moved
        assert torch.equal(state["encoder"][key], value), key
    moved = [k for k, v in dec0.items() if not torch.equal(state["decoder"][k], v)]
    assert moved, "the decoder did not train"
    assert set(state["disc"]) and state["disc_optimizer"]["state"]
    rows = (out / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    train = [dict(zip(head, r.split(","), strict=True)) for r in rows[1:]
             if r.startswith("train")]
    # the adversarial terms start at disc_start (after 2 steps), not before
    assert [r["gan_d"] != "" for r in train] == [False, False, True, True]
    assert all(float(r["gan_weight"]) >= 0 for r in train[2:])
    evals = [dict(zip(head, r.split(","), strict=True)) for r in rows[1:]
             if r.startswith("eval")]
    if HAS_STLPIPS:
        assert evals and all(0 <= float(r["val_stlpips_q"]) < 1 for r in evals)


def test_decoder_only_resume_is_bit_identical(
    data_dir: Path, base_model: Path, tmp_path: Path  # noqa: F811
) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    run(_decoder_cfg(data_dir, full, base_model, perceptual="none"))
    run(_decoder_cfg(data_dir, split, base_model, perceptual="none", steps=3))
    run(_decoder_cfg(data_dir, split, base_model, perceptual="none", resume=True))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    for part in ("decoder", "disc"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs"


def test_decoder_only_needs_a_model_to_start_from(
    data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    with pytest.raises(ValueError, match="--init"):
        run(_cfg(data_dir, tmp_path / "x", decoder_only=True))
    with pytest.raises(ValueError, match="decoder_only differs"):
        out = tmp_path / "y"
        run(_cfg(data_dir, out, steps=1, eval_every=0, perceptual="none"))
        base = tmp_path / "b.safetensors"
        export(out, base, "b", token_stats_images=1)
        run(_decoder_cfg(data_dir, out, base, resume=True))


def test_patch_discriminator_and_hinge() -> None:
    d = PatchDiscriminator(8, 3)
    out = d(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1, 6, 6)  # three stride-2 layers, then two 4x4 stride-1 ones
    # hinge: zero once real logits exceed +1 and fake ones fall below -1, linear otherwise
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -3.0))) == 0.0
    assert float(hinge_d_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(1.0)
    assert float(hinge_d_loss(torch.full((4,), -1.0), torch.full((4,), 1.0))) == pytest.approx(2.0)


def test_decoder_only_run_exports_a_decoder_the_model_serves(
    data_dir: Path, base_model: Path, tmp_path: Path  # noqa: F811
) -> None:
    import shutil

    from gqtok.format.card import decoder_path
    from gqtok.model import load_model_file

    out = tmp_path / "dec"
    run(_decoder_cfg(data_dir, out, base_model, perceptual="none", eval_every=0))
    base = tmp_path / "models" / "tiny.safetensors"
    base.parent.mkdir()
    shutil.copy(base_model, base)
    path = decoder_path(base, "sharp")
    card = export(out, path, "sharp")
    assert card["base_weights_sha256"] == load_model_file(base).weights_sha256
    assert card["training"]["steps"] == 4 and card["training"]["disc_start"] == 2
    model = load_model_file(base)
    assert model.decoders == ["fidelity", "sharp"]
    state = load_checkpoint(out / "last.pt")
    served = model.with_decoder("sharp").decoder.state_dict()
    for key, value in state["decoder"].items():
        assert torch.equal(served[key], value), key
    # the same tokens, two decoders: the fidelity one is the base model's own
    z = torch.randn(1, 16, 4, 4)
    a = model.decode_latent(z)
    b = model.with_decoder("sharp").decode_latent(z)
    assert not torch.equal(a, b)
    # --blend b stores (1 - b) * the base decoder + b * the trained one
    half_way = decoder_path(base, "half")
    card = export(out, half_way, "half", blend=0.5)
    assert card["training"]["blend"] == 0.5 and "blended 0.5" in card["description"]
    served = load_model_file(base).with_decoder("half").decoder.state_dict()
    own = model.decoder.state_dict()
    for key, value in state["decoder"].items():
        assert torch.allclose(served[key], (own[key] + value) / 2, atol=1e-6), key
    with pytest.raises(ValueError, match="blend"):
        export(out, decoder_path(base, "none"), "none", blend=0.0)
