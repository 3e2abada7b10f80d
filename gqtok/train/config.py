"""What a training run depends on, and the command line that fills it in.

TrainConfig is stored in every checkpoint, so a resumed run and an exported model card can
tell how they were trained. The `train` flags are generated from its fields, so the dataclass
and the command line cannot drift apart; `--trust-pickle` is deliberately not a field: it is
a decision about the files on this machine, not part of the recipe.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gqtok.nets.config import UNetConfig

CHOICES: dict[str, list[str]] = {
    "perceptual": ["alex", "vgg", "none"],
    "device": ["auto", "cpu", "cuda"],
    "lr_schedule": ["constant", "cosine"],
}
NET_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "stem")
TRUST_HELP = "allow a checkpoint that needs full unpickling (runs code: only for trusted files)"


def fast_cpu_network() -> UNetConfig:
    """The CPU-friendly default: pixel-unshuffle stem, f = 8, no attention (~2.9 M params)."""
    return UNetConfig(ch=32, ch_mult=(2, 2, 4), num_res_blocks=1, attn_resolutions=(),
                      z_channels=16, stem=2)


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    data: Path = Path("data/prepared")  # folder with train/ and val/ image folders
    out: Path = Path("runs/gqtok")
    network: UNetConfig = field(default_factory=fast_cpu_network)
    dim: int = 16  # GQ token dimension (z_channels / dim tokens per position)
    codebook_size: int = 65536  # K; the TDC target is log2(K) bits per token
    codebook_seed: int = 42
    crop: int = 128
    batch: int = 8  # crops per process: under torchrun the global batch is batch x WORLD_SIZE
    lr: float = 1e-4  # Adam, PyTorch default betas, as in the reference
    lr_schedule: str = "constant"  # "constant" | "cosine" (lr -> lr_min over the steps)
    lr_min: float = 0.0
    kl_weight: float = 0.1  # reference HEAD configs (the released weights may have used 1.0)
    perceptual: str = "alex"  # "alex" | "vgg" (ST-LPIPS backbone) | "none"
    perceptual_weight: float = 1.0
    steps: int = 100_000
    minutes: float = 0.0  # wall-clock budget of this invocation (incl. loading); 0 = none
    log_every: int = 20
    ckpt_every: int = 500  # 0 = only at the end
    eval_every: int = 1000  # 0 = never during training
    eval_crop: int = 256  # centre crops of the val photos
    eval_images: int = 16
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    scale_min: float = 0.25  # multi-scale: photo resized by s in [scale_min, scale_max]
    scale_max: float = 1.0  # (log-uniform; never so small that the crop does not fit)
    scale_levels: int = 0  # >0: photos pre-resized to this many log-spaced scales, crops are
    #                        plain slices (fast enough to feed a GPU); 0 = any scale per crop
    warmup_steps: int = 0  # lr ramps linearly from 0 over these steps (fresh Adam, warm start)
    flip: bool = True
    max_side: int = 2048  # photos are downscaled to this longest side when loaded; 0 = keep
    resume: bool = False
    init: str = ""  # gqtok model file to start from (weights + TDC multipliers); "" = random
    # --decoder-only: a second decoder for --init's tokens. The encoder is frozen (no grad), the
    # decoder sees the exact GQ codewords it will decode, and the objective gains a patch
    # discriminator (hinge) whose term is weighted adaptively (GQ_SPEC 5.5), from disc_start on.
    decoder_only: bool = False
    disc_weight: float = 0.75  # the reference's disc_weight, times the adaptive ratio
    disc_start: int = 500  # steps of L1 + perceptual only before the adversarial terms begin
    disc_lr: float = 1e-4
    disc_channels: int = 32  # first width; 64 (VQGAN) costs 9x the CPU time, 0.54 vs 0.06 s a batch
    disc_layers: int = 3
    # --decoder-only: rate control decodes every codebook size K with one decoder, and a small
    # K hands it codewords far from anything it saw in training. With size_min > 0 each step
    # quantizes at a K drawn log-uniformly from [size_min, size_max] (0 = codebook_size).
    size_min: int = 0
    size_max: int = 0
    # Adam's betas, for the networks and the discriminator alike: PyTorch's defaults; the
    # VQGAN recipe's adversarial stage uses 0.5 / 0.9 (a GPU GAN stage, scripts/*_gpu.sh)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["data"], d["out"] = str(self.data), str(self.out)
        d["network"] = self.network.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        known["data"], known["out"] = Path(known["data"]), Path(known["out"])
        known["network"] = UNetConfig.from_dict(known["network"])
        return cls(**known)

    def check(self) -> None:
        """Refuse shapes the network cannot take before any photo is loaded."""
        net = self.network
        if net.z_channels % self.dim:
            raise ValueError(f"z_channels {net.z_channels} is not divisible by dim {self.dim}")
        if self.crop % net.downsample:
            raise ValueError(
                f"crop {self.crop} is not a multiple of the downsampling {net.downsample}")
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ValueError("--adam-beta1 and --adam-beta2 must lie in [0, 1)")
        if self.decoder_only and not self.init:
            raise ValueError("--decoder-only needs --init MODEL: the model whose tokens it decodes")
        if self.size_min or self.size_max:
            if not self.decoder_only:
                raise ValueError("--size-min/--size-max apply to --decoder-only runs")
            if not 2 <= self.size_min <= self.train_size_max:
                raise ValueError("--size-min must be at least 2 and at most --size-max")

    @property
    def train_size_max(self) -> int:
        """The largest codebook size the decoder-only step quantizes at."""
        return self.size_max or self.codebook_size


# ----------------------------------------------------------------------------------------------
# Command line (`gqtok train` and `gqtok export-model` hand their arguments to this parser)


HELP_NOTES = {"batch": " (per process: torchrun's global batch is batch x WORLD_SIZE)"}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _add_config_flags(tr: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (booleans get --no-X too), then the network's fields."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name == "network":
            continue
        value = getattr(defaults, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            tr.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
            continue
        kind = Path if isinstance(value, Path) else type(value)
        tr.add_argument(flag, type=kind, default=value, choices=CHOICES.get(f.name),
                        help=f"default {value}{HELP_NOTES.get(f.name, '')}")
    net = asdict(defaults.network)
    for key in NET_FIELDS:
        value = net[key]
        kind = _ints if isinstance(value, tuple) else type(value)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        tr.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value,
                        help=f"network: default {shown}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gqtok.train",
                                 description="Train a gqtok model or export a checkpoint.")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train or resume (see TrainConfig for the meaning)")
    _add_config_flags(tr)
    tr.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    ex = sub.add_parser("export", help="write a .safetensors model from a run")
    ex.add_argument("source", type=Path, help="run directory or checkpoint file")
    ex.add_argument("model", type=Path, help="output .safetensors path")
    ex.add_argument("--name", required=True)
    ex.add_argument("--token-stats-images", type=int, default=64)
    ex.add_argument("--token-stats-side", type=int, default=512)
    ex.add_argument("--data", type=Path, default=None, help="override the run's data dir")
    ex.add_argument("--half", action="store_true", help="store weights as float16")
    ex.add_argument("--blend", type=float, default=1.0,
                    help="decoder-only runs: store (1-B) * the base decoder + B * the trained one")
    ex.add_argument("--own-decoder", action="store_true",
                    help="decoder-only runs: write a whole model, the base with this decoder as"
                         " its own (same tokens and entropy models, a new name)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    ex.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    st = sub.add_parser("reached", help="print the step a run's checkpoint reached (0: none yet)"
                        " -- what the resumable recipes in scripts/ test")
    st.add_argument("source", type=Path, help="run directory or checkpoint file")
    return ap


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that parsed `train` flags describe."""
    values = vars(args)
    network = replace(fast_cpu_network(), **{k: values[k] for k in NET_FIELDS})
    return TrainConfig(network=network, **{
        f.name: values[f.name] for f in fields(TrainConfig) if f.name != "network"
    })
