"""Training a GQ model with the target divergence constraint, and exporting it.

config (TrainConfig, flags) -> data (photos, crops) -> losses (objective) -> loop (run) with
checkpoints (save, resume) and validation (held-out PSNR); export_model writes the model file.
"""

from gqtok.train.checkpoints import load_checkpoint
from gqtok.train.command import main
from gqtok.train.config import TrainConfig
from gqtok.train.export_model import export
from gqtok.train.loop import run

__all__ = ["TrainConfig", "export", "load_checkpoint", "main", "run"]
