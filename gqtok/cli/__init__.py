"""The command line: a thin layer over the Python API (``gqtok.cli:main`` is the entry point)."""

from gqtok.cli.app import app, main

__all__ = ["app", "main"]
