"""`python -m gqtok.train`; `gqtok train` and `gqtok export-model` hand their arguments here."""

from __future__ import annotations

from gqtok.errors import GqtokError
from gqtok.train.checkpoints import checkpoint_path, load_checkpoint
from gqtok.train.config import config_from_args, parser
from gqtok.train.export_model import export
from gqtok.train.loop import run


def main(argv: list[str] | None = None) -> None:
    """Run the `train`, `export` or `reached` sub-command; user errors end in one `error:`
    line."""
    ap = parser()
    args = ap.parse_args(argv)
    try:
        if args.command == "reached":
            path = checkpoint_path(args.source)
            print(load_checkpoint(path)["step"] if path.is_file() else 0)
            return
        if args.command == "export":
            export(args.source, args.model, args.name, args.token_stats_images,
                   args.token_stats_side, args.data, args.half, trust_pickle=args.trust_pickle,
                   overwrite=args.overwrite, blend=args.blend,
                   own_decoder=args.own_decoder)
            return
        run(config_from_args(args), trust_pickle=args.trust_pickle)
    except GqtokError as exc:  # an unsafe or unreadable checkpoint, an unwritable out dir
        ap.exit(exc.exit_code, f"error: {exc}\n")
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        ap.exit(2, f"error: {exc}\n")
