"""Models by name or path: the one place that turns what a user typed into a loaded Model.

Order of lookup: an existing path; ``<name>.safetensors`` in the weights folders; a released
model (converted copy in the cache, else fetched and converted once). Reference checkpoints get
their quantizer settings here, from the registry entry of their file name or from options,
and are handed to gqtok.zoo.convert with those settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gqtok.errors import ModelError
from gqtok.format.card import has_card
from gqtok.format.shards import check_record
from gqtok.model import Model, load_model_file
from gqtok.quant.codebook import codebook_fingerprint
from gqtok.quant.config import ModelOptions, QuantizerConfig
from gqtok.zoo.convert import model_from_checkpoint, save_converted
from gqtok.zoo.hub import fetch_checkpoint
from gqtok.zoo.paths import (
    DEFAULT_MODEL,
    MODEL_FILE_SUFFIXES,
    local_models_named,
    weights_dirs,
)
from gqtok.zoo.registry import ENTRIES, converted_path, entry_for_file, released_names

if TYPE_CHECKING:
    from gqtok.format.container import Header


def resolve_model_path(name_or_path: str | os.PathLike[str], trust_pickle: bool = False) -> Path:
    """A model file for a path, a local model name, or a released model name."""
    p = Path(name_or_path)
    if p.suffix in MODEL_FILE_SUFFIXES or p.exists():
        if not p.exists():
            raise ModelError("model file not found", str(p))
        return p
    name = str(name_or_path)
    for d in weights_dirs():
        cand = d / f"{name}.safetensors"
        if cand.exists():
            return cand
    if name in ENTRIES and ENTRIES[name].repo:
        return ensure(name, trust_pickle=trust_pickle)
    where = ", ".join(str(d) for d in weights_dirs())
    known = ", ".join(released_names())
    raise ModelError(f"unknown model {name!r} (looked in {where}; released models: {known})")


def checkpoint_settings(path: Path, opts: ModelOptions) -> tuple[QuantizerConfig, int | None, str]:
    """(quantizer, heads, name) for a reference checkpoint: options first, then the registry
    entry of the file's name, then GQ's defaults."""
    entry = entry_for_file(path.name)
    base = entry.quantizer() if entry else QuantizerConfig()
    heads = opts.heads if opts.heads is not None else (entry.heads if entry else None)
    return opts.apply(base), heads, entry.name if entry else path.stem


def open_model(
    path: Path,
    opts: ModelOptions,
    name: str | None = None,
    origin: dict[str, Any] | None = None,
) -> Model:
    """A Model from a file: a gqtok model file, or a reference checkpoint / state dict."""
    if path.is_file() and has_card(path):
        return load_model_file(path, opts)
    quant, heads, default_name = checkpoint_settings(path, opts)
    return model_from_checkpoint(
        path,
        quant,
        heads=heads,
        name=name or default_name,
        trust_pickle=opts.trust_pickle,
        origin=origin,
    )


def load_with_options(
    name_or_path: str | os.PathLike[str] | None, opts: ModelOptions | None = None
) -> Model:
    """``load_model`` with its options as one value (None: the default model)."""
    opts = opts or ModelOptions()
    return open_model(resolve_model_path(name_or_path or DEFAULT_MODEL, opts.trust_pickle), opts)


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dim: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    beta: float | None = None,
    heads: int | None = None,
    trust_pickle: bool = False,
) -> Model:
    """Load a model by name ("default", a released model such as "sd3unet_gq_0.25") or path.

    Paths may be gqtok .safetensors files or reference checkpoints (.ckpt/.pt/.pth, plain
    state-dict .safetensors), whose network config is inferred from the weights (see
    gqtok.zoo.convert; ``heads`` is needed there for ViTs whose width is not 64 per head).
    ``dim``/``size``/``seed``/``beta`` override the quantizer settings (codebook dim G, size
    K, seed, prior weight). ``trust_pickle`` allows checkpoints that need full unpickling.
    """
    return load_with_options(
        name_or_path, ModelOptions(dim, size, seed, beta, heads, trust_pickle)
    )


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    opts: ModelOptions | None = None,
    *,
    name: str | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a gqtok model file for a checkpoint (or re-write a gqtok file); returns its card."""
    model = open_model(Path(src), opts or ModelOptions(), name=name, origin=origin)
    return save_converted(model, dst, name)


def ensure(name: str, trust_pickle: bool = False) -> Path:
    """A gqtok model file for a released model (download and convert on first use)."""
    if name not in ENTRIES:
        raise ModelError(f"unknown model {name!r} (released: {', '.join(released_names())})")
    entry = ENTRIES[name]
    if entry.repo is None:
        return resolve_model_path(entry.name)
    out = converted_path(entry)
    if out.exists():
        return out
    ckpt, origin = fetch_checkpoint(entry)
    opts = ModelOptions(entry.dim, entry.size, entry.seed, entry.beta, entry.heads, trust_pickle)
    convert_checkpoint(ckpt, out, opts, name=entry.name, origin=origin)
    return out


def path_for_model_id(model_id: str, trust_pickle: bool = False, weights: str = "") -> Path:
    """The local file whose card name (or file stem) is model_id, else the released model of
    that name (converted copy in the cache, downloaded on first use); ModelError if none.

    ``weights`` (hex, a prefix of the weights' sha256 such as a .gq header's fingerprint)
    picks among local files of that name the one with those weights, so a retired default and
    a later model that reused its name both stay reachable; the first of the name otherwise."""
    named = local_models_named(model_id)
    exact = local_models_named(model_id, weights, found=named) if weights else []
    if exact:
        return exact[0][0]
    if named:
        return named[0][0]
    if model_id in ENTRIES and ENTRIES[model_id].repo:
        return ensure(model_id, trust_pickle=trust_pickle)
    raise ModelError(
        f"model {model_id!r} named in the file is not available locally;"
        " pass --model PATH to the model file it was written with"
    )


def model_for_id(
    model_id: str,
    quant: QuantizerConfig,
    name_or_path: str | None,
    trust_pickle: bool,
    weights: str = "",
) -> Model:
    """The model that wrote tokens (``name_or_path``, else found by its recorded id and
    weights hash, see path_for_model_id), under the quantizer settings the tokens were
    written with."""
    path = name_or_path or str(path_for_model_id(model_id, trust_pickle, weights))
    model = load_with_options(path, ModelOptions(trust_pickle=trust_pickle))
    if np.float32(model.quant.beta) == np.float32(quant.beta):
        quant = QuantizerConfig(quant.dim, quant.size, quant.seed, model.quant.beta)
    return model.requantized(quant)


def coarse_member(model: Model, size: int) -> Model:
    """The model that codes ``model``'s tokens at codebook size ``size`` (gqtok.codec.rate):
    ``model`` itself, or below its card's ``coarse.below`` the model named there, which has
    the same encoder, quantizer and entropy models (so the same tokens and bytes) and a
    decoder trained on coarse codebooks. Found by id and weights hash in the weights folders
    (never downloaded), loaded once, checked to make the same tokens, and given ``model``'s
    device and decoder choice; ModelError when it is missing or differs."""
    spec = model.card.get("coarse")
    if spec is None or size >= spec["below"]:
        return model
    if model.coarse is None:
        found = local_models_named(spec["model"], spec["weights_sha256"])
        if not found:  # local files only: a card never sends gqtok to the network
            raise ModelError(
                f"its coarse-codebook model {spec['model']!r} (weights"
                f" {spec['weights_sha256'][:16]}) is not in the weights folders",
                model.source or model.name,
            )
        member = load_model_file(found[0][0])
        where = str(found[0][0])
        if member.weights_sha256 != spec["weights_sha256"]:
            raise ModelError(
                f"is not the coarse-codebook model {model.name!r} names (weights"
                f" {member.weights_sha256[:16]}, not {spec['weights_sha256'][:16]})",
                where,
            )
        if not model.codes_like(member):
            raise ModelError(
                f"does not make {model.name!r}'s tokens (encoder, quantizer or entropy"
                " models differ): it cannot be its coarse-codebook model",
                where,
            )
        model.coarse = member.to(model.device, model.precision)
    member = model.coarse
    chosen = (model.decoder_name, model.realism, model.grain)
    if chosen != (member.decoder_name, member.realism, member.grain):
        member = member.with_decoder(*chosen)
    return member


def model_for_header(
    header: Header, name_or_path: str | None = None, trust_pickle: bool = False
) -> Model:
    """The model a .gq file was written with, under the quantizer settings in its header.

    Files encoded with ``--group`` etc. thus decode without repeating them; the weights hash
    and codebook fingerprint are still checked by the codec.
    """
    quant = QuantizerConfig(header.dim, header.size, header.seed, float(header.beta))
    return model_for_id(
        header.model_id, quant, name_or_path, trust_pickle, header.weights_hash.hex()
    )


def model_for_record(
    record: dict[str, Any], name_or_path: str | None = None, trust_pickle: bool = False
) -> Model:
    """The model an export (manifest or shard metadata) was made with, under its codebook;
    its weights must hash to the recorded weights_sha256, and its token groups, downsampling
    and codebook must be the recorded ones (ModelError), so that every grid a checked shard
    holds (gqtok.format.shards.check_arrays) fits the model. A malformed record is an
    InputError (read_manifest and read_shard have checked theirs already)."""
    check_record(record)
    rec, cb = record["model"], record["codebook"]
    quant = QuantizerConfig(cb["dim"], cb["size"], cb["seed"], float(cb["beta"]))
    model = model_for_id(rec["id"], quant, name_or_path, trust_pickle, rec["weights_sha256"])
    where = model.source or rec["id"]
    if model.weights_sha256 != rec["weights_sha256"]:
        raise ModelError(
            f"tokens were made with model {rec['id']!r} (weights {rec['weights_sha256'][:16]}),"
            f" not with {model.name!r} (weights {model.weights_sha256[:16]})",
            where,
        )
    if (model.groups, model.downsample) != (rec["groups"], rec["downsample"]):
        raise ModelError(
            f"tokens were made with {rec['groups']} token groups at f={rec['downsample']},"
            f" the model has {model.groups} at f={model.downsample}",
            where,
        )
    fp = cb.get("fingerprint")
    if fp is not None and codebook_fingerprint(cb["dim"], cb["size"], cb["seed"]).hex() != fp:
        raise ModelError("rebuilt codebook does not match the recorded fingerprint", where)
    return model
