"""The command line: ``deit <command>`` (``app``) and ``deit demo`` (``demo``)."""
from deit.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
