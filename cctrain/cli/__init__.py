"""The ``cctrain`` command line (data owners, recipients, operators)."""

from cctrain.cli.main import main

__all__ = ["main"]
