"""The docs cannot rot: every shell command in README.md and docs/*.md
is run here, in the order a reader meets them, in one scratch directory.

A reader brings their own files; the test brings stand-ins: an image folder
``my_images/`` (digits as PNGs, classes ``cat`` and ``dog``), two photos ``shirt.png`` /
``boot.jpg``, and the official DeiT-Ti⚗ release file (timm's architecture with random
weights saved as ``{"model": state_dict}``: nothing can be downloaded here). Commands run
exactly as written, with settings that only shorten them appended (argparse keeps the last
value): one epoch on a few images for ``deit train`` and ``deit cache-teacher`` (and
``torchrun``), one repeat of tiny
models for ``deit benchmark``, a one-batch schedule for ``deit demo``; a multi-machine
``torchrun`` runs its two "machines" as one local rendezvous.

Not run here, with the reason: the commands of docs/models.md that download published
weights (tested against a local server in tests/test_hub.py), the two set-up lines (the
second is what CI runs; the first is ``deit demo``, which runs below), ``bash
scripts/setup.sh`` alone, and ``scripts/fashion_results.py`` but for its ``--dry-run`` (hours of
runs; its commands are tested in tests/test_results.py, one chain of them end to end on a few
images).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC_ORDER = ["docs/quickstart.md", "docs/training.md", "docs/models.md", "docs/export.md",
             "docs/troubleshooting.md", "README.md", "docs/RESULTS.md"]
NOT_RUN = {"bash scripts/setup.sh && .venv/bin/deit demo", "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
           "bash scripts/setup.sh", "python scripts/fashion_results.py",
           ".venv/bin/python scripts/fashion_results.py",
           ".venv/bin/python scripts/fashion_results.py --seeds 0 1 2 student_hard_vit_teacher"}
# docs/models.md's online commands fetch the published weights from the internet; the same code
# paths run in tests/test_hub.py against a server on 127.0.0.1, and the offline command runs here
NOT_RUN |= {
    "deit predict --model deit_small_distilled_patch16_224 --pretrained photo.jpg",
    "deit train --model deit_small_patch16_224 --finetune deit_small_patch16_224 --dataset my_images",
    "deit train --model deit_tiny_patch16_224 --dataset my_images --teacher-model deit_base_distilled_patch16_224 "
    "--teacher-pretrained --distillation-type hard",
    "curl -L -o deit_small_distilled_patch16_224-649709d9.pth "
    "https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth",
    "sha256sum deit_small_distilled_patch16_224-649709d9.pth",
}
# two steps of 16 images and 32 validation images: every stage of a run, in seconds
SHORT_TRAIN = ["--epochs", "1", "--warmup-epochs", "0", "--train-subset", "32", "--val-subset", "32", "--batch-size", "16",
               "--no-progress",
               "--mixup", "0", "--cutmix", "0", "--auto-augment", "none", "--repeated-aug", "1", "--no-model-ema"]
SHORT_BENCHMARK = ["--model", "deit_pico_distilled_patch4_32", "--train-model", "deit_pico_distilled_patch4_32",
                   "--teacher", "convnext_atto_32", "--repeats", "1", "--warmup", "0", "--batch-size", "2",
                   "--train-batch-size", "2", "--modes", "fp32", "--peers", "timm", "--deit-runtime-only",
                   "--distill-teacher", "regnety_002", "--no-compile"]


def shell_commands(path: Path) -> list[str]:
    """Commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", path.read_text(), re.S | re.M):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def all_commands() -> list[tuple[str, str]]:
    found = [(doc, cmd) for doc in DOC_ORDER for cmd in shell_commands(REPO / doc)]
    documented = {p.relative_to(REPO).as_posix() for p in [*(REPO / "docs").glob("*.md"), REPO / "README.md"]}
    with_commands = {p for p in documented if shell_commands(REPO / p)}
    assert with_commands <= set(DOC_ORDER), f"add {sorted(with_commands - set(DOC_ORDER))} to DOC_ORDER"
    return found


# --- the reader's files ------------------------------------------------------------------

def make_reader_files(root: Path) -> None:
    from deit.data import load_dataset

    digits = load_dataset("digits", "train")
    for split, count in (("train", 24), ("val", 6)):
        for name, label in (("cat", 3), ("dog", 8)):
            folder = root / "my_images" / split / name
            folder.mkdir(parents=True)
            for i, array in enumerate(digits.images[digits.targets_array == label][:count]):
                Image.fromarray(array).resize((40, 40)).convert("RGB").save(folder / f"{i + 1:03d}.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / "shirt.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "boot.jpg")
    import timm

    shutil.copytree(REPO / "configs", root / "configs")  # the checkout the RESULTS.md commands run in
    (root / "docs").mkdir()
    shutil.copy(REPO / "docs" / "RESULTS.md", root / "docs" / "RESULTS.md")
    official = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    torch.save({"model": official.state_dict()}, root / "deit_tiny_distilled_patch16_224-b40b3cf7.pth")


# --- running one command ------------------------------------------------------------------

def _deit_argv(words: list[str]) -> list[str]:
    argv = words[1:]
    if argv[0] in ("train", "cache-teacher"):
        argv += SHORT_TRAIN
    elif argv[0] == "benchmark":
        argv += SHORT_BENCHMARK
    return argv


def _torchrun(words: list[str], cwd: Path) -> None:
    args = words[1:]
    text = " ".join(args)
    # two machines -> one local rendezvous with two processes
    text = re.sub(r"--nnodes=\d+", "--nnodes=1", text)
    text = re.sub(r"--nproc_per_node=\d+", "--nproc_per_node=2", text)
    text = text.replace("HOST0:29400", "localhost:29417")
    args = shlex.split(text)
    if "--rdzv-endpoint=localhost:29417" not in args:
        args = ["--master_port=29533", *args]
    cmd = [sys.executable, "-m", "torch.distributed.run", *args, *SHORT_TRAIN]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]


def run_command(command: str, cwd: Path, monkeypatch) -> None:
    words = shlex.split(command)
    if words[0] in ("deit", ".venv/bin/deit"):
        if words[1:2] == ["demo"] and "--smoke" not in words:
            from deit.cli import demo

            tiny = demo.Schedule("tiny (docs test)", 256, 256, 256, dict(recipe=demo.RECIPE, val_subset=256))
            monkeypatch.setattr(demo, "QUICK", tiny)
            words += ["--output", "runs/demo", "--no-progress"]
        code = main(_deit_argv(words))
        assert code == 0, f"`{command}` exited with {code}"
    elif words[0] == "torchrun":
        _torchrun(words, cwd)
    elif words[0] in ("python", ".venv/bin/python"):
        target = words[1:] if words[1] == "-m" else [str(REPO / words[1]), *words[2:]]
        result = subprocess.run([sys.executable, *target], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        pytest.fail(f"the docs test does not know how to run `{command}`: teach run_command")


@pytest.mark.slow
def test_every_documented_command_runs(tmp_path, monkeypatch, capsys):
    make_reader_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = []
    for doc, command in all_commands():
        if command in NOT_RUN:
            continue
        start = time.perf_counter()
        try:
            run_command(command, tmp_path, monkeypatch)
        except BaseException as err:
            err_text = capsys.readouterr().err[-2000:]
            raise AssertionError(f"{doc}: `{command}` failed: {err}\n{err_text}") from None
        ran.append(command)
        print(f"[docs test] {time.perf_counter() - start:6.1f} s  {command}", file=sys.__stderr__)
    out = capsys.readouterr().out
    assert len(ran) >= 25, ran
    # a few outputs a reader is told to expect
    assert (tmp_path / "runs/my-deit/best.pth").is_file() and (tmp_path / "my-deit.onnx").is_file()
    assert (tmp_path / "viz").is_dir() and any((tmp_path / "viz").glob("*rollout-dist.png"))
    assert "verified on random images" in out
    assert (tmp_path / "deit_tiny.safetensors").is_file()
    import json

    assert json.loads((tmp_path / "runs/deit-cached/summary.json").read_text())["teacher_cache"]["misses"] == 0


def test_every_documented_command_is_known():
    """Fast check: each command is one the harness can run, or an explained exception."""
    for doc, command in all_commands():
        first = shlex.split(command)[0]
        assert command in NOT_RUN or first in ("deit", ".venv/bin/deit", "torchrun", "python", ".venv/bin/python"), \
            f"{doc}: `{command}`"
        if first in ("deit", ".venv/bin/deit"):
            from deit.cli import build_parser

            build_parser().parse_args(shlex.split(command)[1:])  # every flag exists


def test_fashion_configs():
    from deit.train.settings import load_config

    for path in sorted((REPO / "configs" / "fashion").glob("*.yaml")):
        assert load_config(path).dataset == "fashion-mnist", path


def test_troubleshooting_quotes_real_messages():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    source = "\n".join(p.read_text() for p in (REPO / "deit").rglob("*.py"))
    fragments = re.findall(r"^\| `([^`]+)` \|", doc, re.M)
    assert len(fragments) >= 40
    missing = [f for f in fragments if f not in source]
    assert not missing, f"docs/troubleshooting.md quotes messages the library no longer has: {missing}"


def test_model_zoo_table_is_current(capsys):
    doc = (REPO / "docs" / "models.md").read_text()
    table = doc.split("<!-- zoo:start -->\n")[1].split("<!-- zoo:end -->")[0]
    assert main(["list-models", "--markdown"]) == 0
    assert capsys.readouterr().out == table, "regenerate with: deit list-models --markdown"
