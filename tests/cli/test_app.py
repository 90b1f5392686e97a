"""The ``deit`` command line."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deit import create_model, save_model
from deit.cli import build_parser, main
from tests.helpers import perturb_

# (deit benchmark itself is exercised in tests/bench/test_harness.py, deit recipes in tests/train/test_run.py)
SUBCOMMANDS = ["demo", "train", "cache-teacher", "recipes", "eval", "predict", "export", "visualize", "benchmark", "list-models", "info",
               "convert"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: deit {command}" in capsys.readouterr().out


def test_every_subcommand_is_tested():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)


def test_smoke_demo_runs_and_reports(tmp_path, capsys):
    assert main(["demo", "--smoke", "--output", str(tmp_path), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "teacher  convnext_atto_32" in out and "teacher not among its parameters or state_dict: True" in out
    for kind in ("classification", "distillation", "fusion"):
        assert f"eval {kind}" in out
    assert "deit_base_distilled_patch16_384" in out
    assert (tmp_path / "convnext_atto_32.safetensors").is_file()


def test_list_models_and_info(capsys):
    assert main(["list-models", "distilled_patch16", "--params"]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny_distilled_patch16_224" in out and "5.91M" in out
    assert main(["info", "deit_small_patch16_224"]) == 0
    assert "parameters: 22,050,664" in capsys.readouterr().out
    assert main(["list-models", "no-such-thing"]) == 1


def test_convert_and_info_on_checkpoint(tmp_path, capsys):
    model = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=10))
    torch.save({"model": model.state_dict()}, tmp_path / "official_style.pth")
    assert main(["convert", str(tmp_path / "official_style.pth"), str(tmp_path / "out.safetensors")]) == 0
    assert "deit_pico_distilled_patch4_32" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "out.safetensors")]) == 0
    assert "num_classes = 10" in capsys.readouterr().out


def test_errors_are_one_line_messages_not_tracebacks(tmp_path, capsys):
    code = main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.pth" in err and "Traceback" not in err
    save_model(create_model("deit_pico_patch4_32"), tmp_path / "m.pth")
    assert main(["convert", str(tmp_path / "m.pth"), str(tmp_path / "out.txt")]) == 2
    assert "must end in" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_and_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "deit", "list-models", "convnext"], capture_output=True,
                            text=True, check=True)
    assert "convnext_atto_32" in result.stdout.split()
