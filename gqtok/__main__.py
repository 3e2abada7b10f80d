"""``python -m gqtok`` runs the CLI."""

from gqtok.cli import main

main()
