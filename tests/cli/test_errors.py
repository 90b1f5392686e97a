"""User-facing errors: one line from the CLI; a bug, or ``--debug``, keeps its traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from deit.cli import app as cli
from deit.core.errors import ConfigError


def test_a_library_check_raises_a_config_error_that_callers_can_catch_as_value_error():
    from deit.weights.factory import create_model

    with pytest.raises(ValueError, match="unknown model name 'deit_huge'") as caught:
        create_model("deit_huge")
    assert isinstance(caught.value, ConfigError)


def test_cli_prints_a_user_error_on_one_line(capsys):
    assert cli.main(["info", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deit info: error: unknown model name 'no_such_model'")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, monkeypatch):
    argv = ["info", "no_such_model"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("DEIT_DEBUG", "1")
    with pytest.raises(ConfigError, match="no_such_model"):
        cli.main(argv)


def test_a_bug_is_not_turned_into_a_one_line_message(monkeypatch):
    """A ValueError that is not a DeitError (a bug, or a library below us) keeps its traceback."""
    def broken(args):
        raise ValueError("internal invariant broken")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "info", broken))
    with pytest.raises(ValueError, match="internal invariant broken"):
        cli.main(["info", "deit_pico_patch4_32"])


def _with_func(parser, command, func):
    subparsers = next(a for a in parser._actions if a.dest == "command")
    subparsers.choices[command].set_defaults(func=func)
    return parser


@pytest.mark.slow
def test_debug_traceback_from_the_installed_entry_point():
    run = subprocess.run([sys.executable, "-m", "deit", "--debug", "info", "no_such_model"], capture_output=True,
                         text=True)
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "ConfigError: unknown model name" in run.stderr
