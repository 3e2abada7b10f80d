"""`gqtok train --decoder-only`: a second decoder for a frozen model's tokens (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gqtok.nets.patchgan import PatchDiscriminator, hinge_d_loss
from gqtok.train.checkpoints import load_checkpoint
from gqtok.train.export_model import export
from gqtok.train.loop import run
from gqtok.train.losses import step_size
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


@pytest.mark.parametrize("sizes", [(0, 0), (16, 1 << 20)])
def test_decoder_only_resume_is_bit_identical(
    data_dir: Path, base_model: Path, tmp_path: Path, sizes: tuple[int, int]  # noqa: F811
) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    kw = {"perceptual": "none", "size_min": sizes[0], "size_max": sizes[1]}
    run(_decoder_cfg(data_dir, full, base_model, **kw))
    run(_decoder_cfg(data_dir, split, base_model, steps=3, **kw))
    run(_decoder_cfg(data_dir, split, base_model, resume=True, **kw))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    for part in ("decoder", "disc"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs"


def test_codebook_size_per_step_is_log_uniform_and_repeatable(
    data_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    cfg = _cfg(data_dir, tmp_path, decoder_only=True, init="m", size_min=64, size_max=1 << 20)
    sizes = [step_size(cfg, s) for s in range(400)]
    assert sizes == [step_size(cfg, s) for s in range(400)]  # a resumed run draws the same
    assert all(64 <= k <= 1 << 20 for k in sizes)
    assert all(k % 16 == 0 for k in sizes if k >= 8192)  # the windowed search's sizes
    octaves = np.bincount(np.floor(np.log2(sizes)).astype(int) - 6, minlength=14)
    assert octaves.min() >= 10 and octaves.max() <= 50  # ~29 per octave over 14 octaves
    other = _cfg(data_dir, tmp_path, decoder_only=True, init="m", size_min=64, size_max=1 << 20,
                 seed=4)
    assert [step_size(other, s) for s in range(400)] != sizes
    assert step_size(_cfg(data_dir, tmp_path, decoder_only=True, init="m"), 7) == 65536
    for bad in ({"size_min": 64}, {"decoder_only": True, "init": "m", "size_min": 70000},
                {"decoder_only": True, "init": "m", "size_min": 1}):
        with pytest.raises(ValueError, match="--size-min"):
            _cfg(data_dir, tmp_path, **bad).check()


def test_own_decoder_export_is_a_model_with_the_base_tokens(
    data_dir: Path, base_model: Path, tmp_path: Path  # noqa: F811
) -> None:
    import shutil

    from PIL import Image

    from gqtok import api
    from gqtok.codec import pack_tokens
    from gqtok.errors import ModelError
    from gqtok.format.card import decoder_path
    from gqtok.model import copy_decoder, load_model_file, save_model

    out = tmp_path / "run"
    run(_decoder_cfg(data_dir, out, base_model, perceptual="none", eval_every=0, size_min=16,
                     size_max=4096))
    models = tmp_path / "models"
    models.mkdir()
    base_path = models / "tiny.safetensors"
    shutil.copy(base_model, base_path)
    card = export(out, models / "tiny-v2.safetensors", "tiny-v2", own_decoder=True)
    assert card["training"]["size_range"] == [16, 4096]
    assert card["training"]["stage"] == "decoder-only" and "16..4096" in card["description"]
    base, new = load_model_file(base_path), load_model_file(models / "tiny-v2.safetensors")
    assert new.name == "tiny-v2" and new.weights_sha256 != base.weights_sha256
    assert card["quantizer"] == base.card["quantizer"] and card["entropy"] == base.card["entropy"]
    state = load_checkpoint(out / "last.pt")
    for key, value in new.decoder.state_dict().items():  # the run's decoder is its own
        assert torch.equal(value, state["decoder"][key]), key
    photo = np.asarray(Image.open("tests/data/photo_a.jpg").convert("RGB"))[:64, :96]
    a, b = api.encode(base, photo), api.encode(new, photo)
    assert torch.equal(a.indices, b.indices)  # same encoder and quantizer: the same tokens
    pa, pb = pack_tokens(base, a), pack_tokens(new, b)
    n = pa.token_bytes  # the same entropy model: the same coded tokens (before the CRC)
    assert n == pb.token_bytes and pa.data[-n - 4 : -4] == pb.data[-n - 4 : -4]
    assert not np.array_equal(api.decode_array(base, a), api.decode_array(new, b))
    # the base's second decoder, served beside the new model too
    export(out, decoder_path(base_path, "sharp"), "sharp")
    base = load_model_file(base_path)
    dcard = copy_decoder(base, "sharp", new)
    assert dcard["base_weights_sha256"] == new.weights_sha256
    again = load_model_file(models / "tiny-v2.safetensors")
    assert again.decoders == ["fidelity", "sharp"]
    for key, value in base.with_decoder("sharp").decoder.state_dict().items():
        assert torch.equal(again.with_decoder("sharp").decoder.state_dict()[key], value), key
    # a model whose encoder differs makes other tokens: the decoder is refused
    enc = base.encoder
    with torch.no_grad():
        next(iter(enc.parameters())).add_(0.01)
    other = models / "other.safetensors"
    save_model(other, enc, base.decoder, {**base.card, "name": "other"}, base.entropy.counts)
    with pytest.raises(ModelError, match="encoder or quantizer"):
        copy_decoder(load_model_file(base_path), "sharp", load_model_file(other))


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


def test_coarse_member_codes_the_small_codebooks(
    data_dir: Path, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """A model whose card names a coarse-codebook model codes K < below with it: the same
    tokens and bytes, the member's id in the header, its decoder's pixels."""
    import shutil

    from PIL import Image

    from gqtok.codec import decode_bytes, encode_pictures
    from gqtok.codec.rate import at_size
    from gqtok.errors import ModelError
    from gqtok.io.images import Picture
    from gqtok.model import load_model_file, save_model, save_with_coarse
    from gqtok.zoo.load import model_for_header

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("GQTOK_WEIGHTS", str(weights))
    base_path = weights / "tiny.safetensors"
    shutil.copy(base_model, base_path)
    out = tmp_path / "run"
    run(_decoder_cfg(data_dir, out, base_model, perceptual="none", eval_every=0, size_min=64,
                     size_max=1024))
    export(out, weights / "tiny-coarse.safetensors", "tiny-coarse", own_decoder=True)
    base, member = load_model_file(base_path), load_model_file(weights / "tiny-coarse.safetensors")
    card = save_with_coarse(base, member, 1024, base_path, overwrite=True)
    assert card["coarse"] == {"below": 1024, "model": "tiny-coarse",
                              "weights_sha256": member.weights_sha256}
    linked = load_model_file(base_path)
    assert linked.weights_sha256 == base.weights_sha256  # tensors byte for byte
    rgb = np.asarray(Image.open("tests/data/photo_a.jpg").convert("RGB"))[:64, :96].copy()
    pic = Picture(rgb, None, "RGB", "PNG", 8)
    plain = load_model_file(base_model)  # the same model without the link
    for size, who in ((161, "tiny-coarse"), (1024, "tiny-base"), (4096, "tiny-base")):
        enc = encode_pictures(at_size(linked, size), [pic])[0]
        ref = encode_pictures(at_size(plain, size), [pic])[0]
        assert enc.header.model_id == who and enc.header.size == size
        assert torch.equal(enc.tokens.indices, ref.tokens.indices)
        n = enc.token_bytes
        assert n == ref.token_bytes and enc.data[-n - 4 : -4] == ref.data[-n - 4 : -4]
        image, header = decode_bytes(enc.data, model_for_header)  # found by id in weights/
        mine = np.asarray(image)
        theirs = np.asarray(decode_bytes(ref.data, plain)[0])
        assert np.array_equal(mine, theirs) == (who == "tiny-base")
        assert at_size(linked, size).name == who
    assert at_size(linked, 64, coarse=False).name == "tiny-base"
    # the link belongs to the model's own settings: a requantized model codes with itself
    assert at_size(at_size(linked, 4096, coarse=False), 64).name == "tiny-base"
    # a link to other weights, or to a model that makes other tokens, is refused
    bad = dict(linked.card)
    bad["coarse"] = {**bad["coarse"], "weights_sha256": "0" * 64}
    save_model(tmp_path / "bad.safetensors", linked.encoder, linked.decoder, bad,
               linked.entropy.counts)
    with pytest.raises(ModelError, match="tiny-coarse"):
        at_size(load_model_file(tmp_path / "bad.safetensors"), 64)
    enc_net = member.encoder
    with torch.no_grad():
        next(iter(enc_net.parameters())).add_(0.01)
    save_model(weights / "tiny-coarse.safetensors", enc_net, member.decoder, member.card,
               member.entropy.counts)
    other = load_model_file(weights / "tiny-coarse.safetensors")
    with pytest.raises(ModelError, match="does not code"):
        save_with_coarse(load_model_file(base_path), other, 1024, base_path, overwrite=True)
    # a link written by hand is refused where rate control follows it
    forged = {**linked.card, "coarse": {"below": 1024, "model": "tiny-coarse",
                                        "weights_sha256": other.weights_sha256}}
    save_model(base_path, linked.encoder, linked.decoder, forged, linked.entropy.counts)
    with pytest.raises(ModelError, match="does not make"):
        at_size(load_model_file(base_path), 64)
