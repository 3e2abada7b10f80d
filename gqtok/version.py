"""The package version (a leaf module, so that writers of files can record it)."""

__version__ = "0.1.0"
