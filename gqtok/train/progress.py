"""What a run reports while it trains: console lines and metrics.csv rows.

Training must not need rich, so the console falls back to print; the CSV is rewritten on
resume so it never holds rows from steps the resumed run will take again.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = "metrics.csv"
METRIC_COLUMNS = (
    "kind", "step", "images", "wall_s", "loss", "l1", "perceptual", "kl_loss", "bits_mean",
    "bits_min", "bits_max", "lam", "lam_min", "lam_max", "img_per_s", "lr", "val_psnr_q",
    "val_psnr", "val_bits_mean", "val_bits_min", "val_bits_max",
    # --decoder-only runs: adversarial terms and the held-out perceptual distance
    "gan_g", "gan_d", "gan_weight", "d_real", "d_fake", "val_stlpips_q",
)


class Log:
    """rich when available, plain print otherwise (training must not need rich)."""

    def __init__(self, console: Any | None, enabled: bool = True) -> None:
        self.enabled = enabled  # False on the ranks other than 0 of a distributed run
        if console is None:
            try:
                from rich.console import Console

                console = Console(highlight=False)
            except ImportError:
                console = None
        self.console = console

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.console is not None:
            self.console.print(msg, markup=False, highlight=False, soft_wrap=True)
        else:
            print(msg, flush=True)


class MetricsFile:
    """Appends rows to out/metrics.csv; a resumed run first drops rows past its checkpoint."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # only rank 0 of a distributed run writes the file
        if not enabled:
            return
        rows: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._write(rows, "w")

    def _write(self, rows: list[dict[str, Any]], mode: str) -> None:
        with self.path.open(mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if mode == "w":
                w.writeheader()
            w.writerows(rows)

    def add(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        fmt = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self._write([fmt], "a")


@dataclass
class Window:
    """Running sums of the steps since the last log line; averaged into one train row."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    loss: float = 0.0
    l1: float = 0.0  # per pixel
    perceptual: float = 0.0
    kl_loss: float = 0.0
    bits_mean: float = 0.0
    bits_min: float = math.inf
    bits_max: float = -math.inf
    extra: dict[str, float] | None = None  # sums of optional terms (the adversarial ones)
    extra_steps: dict[str, int] | None = None

    def add(self, images: int, seconds: float, losses: tuple[float, float, float, float],
            pixels: int, tdc: dict[str, float], extra: dict[str, float] | None = None) -> None:
        """One step: its batch size, time, (loss, L1, perceptual, TDC term), TDC stats and
        any optional terms (averaged over the steps that had them)."""
        loss, l1, perceptual, kl_loss = losses
        if extra:
            self.extra = self.extra or {}
            self.extra_steps = self.extra_steps or {}
            for k, v in extra.items():
                self.extra[k] = self.extra.get(k, 0.0) + v
                self.extra_steps[k] = self.extra_steps.get(k, 0) + 1
        self.steps += 1
        self.images += images
        self.seconds += seconds
        self.loss += loss
        self.l1 += l1 / pixels
        self.perceptual += perceptual
        self.kl_loss += kl_loss
        self.bits_mean += tdc["bits_mean"]
        self.bits_min = min(self.bits_min, tdc["bits_min"])
        self.bits_max = max(self.bits_max, tdc["bits_max"])

    def row(self, step: int, images_seen: int, wall_s: float, tdc: dict[str, float],
            lr: float) -> dict[str, Any]:
        """The metrics.csv train row; the TDC multipliers are those after the last step."""
        n = self.steps
        return {
            "kind": "train", "step": step, "images": images_seen, "wall_s": wall_s,
            "loss": self.loss / n, "l1": self.l1 / n, "perceptual": self.perceptual / n,
            "kl_loss": self.kl_loss / n, "bits_mean": self.bits_mean / n,
            "bits_min": self.bits_min, "bits_max": self.bits_max, "lam": tdc["lam"],
            "lam_min": tdc["lam_min"], "lam_max": tdc["lam_max"],
            "img_per_s": self.images / max(self.seconds, 1e-9), "lr": lr,
            **{k: v / (self.extra_steps or {})[k] for k, v in (self.extra or {}).items()},
        }


def train_line(row: dict[str, Any]) -> str:
    if math.isnan(row["bits_mean"]):  # decoder only: no KL, maybe adversarial terms
        gan = (f" | G {row['gan_g']:.3f} x {row['gan_weight']:.3g} | D {row['gan_d']:.3f} "
               f"(real {row['d_real']:.2f}, fake {row['d_fake']:.2f})" if "gan_d" in row else "")
        return (f"step {row['step']:>7} | loss {row['loss']:9.1f} | L1 {row['l1']:.4f} | "
                f"lpips {row['perceptual']:.4f}{gan} | {row['img_per_s']:.2f} img/s")
    return (f"step {row['step']:>7} | loss {row['loss']:9.1f} | L1 {row['l1']:.4f} | "
            f"lpips {row['perceptual']:.4f} | bits {row['bits_mean']:6.2f} "
            f"[{row['bits_min']:5.2f}, {row['bits_max']:5.2f}] | lam {row['lam']:.3g} "
            f"min {row['lam_min']:.3g} max {row['lam_max']:.3g} | "
            f"{row['img_per_s']:.2f} img/s")


def eval_line(step: int, ev: dict[str, float]) -> str:
    if "val_stlpips_q" in ev:
        return (f"eval {step:>7} | PSNR quantized {ev['val_psnr_q']:.2f} dB | "
                f"ST-LPIPS {ev['val_stlpips_q']:.4f}")
    return (f"eval {step:>7} | PSNR quantized {ev['val_psnr_q']:.2f} dB | "
            f"unquantized {ev['val_psnr']:.2f} dB | bits {ev['val_bits_mean']:.2f} "
            f"[{ev['val_bits_min']:.2f}, {ev['val_bits_max']:.2f}]")
