"""User-facing errors.

Every error this library raises for something the user can fix — a flag, a file, a
configuration — carries the :class:`DeitError` mixin besides its usual built-in base, so
``except ValueError`` / ``except FileNotFoundError`` keep working while the CLI can tell a
message meant for the user (printed on one line) from a bug (shown with its traceback).
"""
from __future__ import annotations


class DeitError(Exception):
    """Mixin for errors whose message tells the user what to change."""


class ConfigError(DeitError, ValueError):
    """A value given by the user is not one the library accepts; the message names the
    value received, what was expected and the argument or flag to change."""


class CheckpointError(DeitError, ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint file where one was expected; the message names the path(s) tried."""
