"""Shared fixtures. Everything runs on CPU with random weights; nothing comes from the internet."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def _weights_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("deit-cache")


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, _weights_cache):
    """Fixed seed per test; no checkpoint directory leaks in from the environment; published
    weights are never fetched from the internet (tests/weights/test_hub.py lifts DEIT_OFFLINE to
    download from its own 127.0.0.1 server) and the user's cache is never touched."""
    torch.manual_seed(0)
    monkeypatch.delenv("DEIT_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DEIT_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("DEIT_CACHE", str(_weights_cache))
    monkeypatch.setenv("DEIT_OFFLINE", "1")




# --- one trained run, shared by every module that needs a finished training run -------------

# Two epochs of 128 digits (upsampled to 16 px) for the smallest DeiT⚗, with EMA on so that the
# checkpoint holds every part a training checkpoint can hold (model, EMA, optimizer, scheduler,
# RNG states, config, classes, data config, metrics); lr 5e-3 so that four steps move the
# weights off their initialisation. A few seconds on one core.
TRAINED_RUN_FLAGS = ["--dataset", "digits", "--image-size", "16", "--model", "deit_pico_distilled_patch4_32",
                     "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "64", "--train-subset", "128",
                     "--lr", "5e-3", "--no-progress", "--model-ema", "--model-ema-decay", "0.9", "--mixup", "0",
                     "--cutmix", "0", "--reprob", "0", "--auto-augment", "none", "--repeated-aug", "1"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The directory of a finished ``deit train`` run (``TRAINED_RUN_FLAGS``): ``best.pth``,
    ``last.pth``, ``config.yaml``, ``metrics.csv``, ``summary.json``. Built once per session
    through the CLI; read it, never write to it: a test that runs ``deit train`` on it or
    changes its files works on ``tests.helpers.copy_run(trained_run, tmp_path)``."""
    from deit.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as env:  # the isolation of _seed_and_isolate, for a session fixture
        env.delenv("DEIT_CHECKPOINT_DIR", raising=False)
        env.setenv("DEIT_OFFLINE", "1")
        assert main(["train", *TRAINED_RUN_FLAGS, "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run) -> Path:
    """The last checkpoint of the session's trained DeiT⚗ run on digits (``trained_run``)."""
    return trained_run / "last.pth"


@pytest.fixture(scope="session")
def digit_images(tmp_path_factory) -> list[Path]:
    """Twelve validation digits saved as 8-bit grey PNG files, as a user would bring them."""
    from PIL import Image

    from deit.data import load_dataset

    folder = tmp_path_factory.mktemp("images")
    digits = load_dataset("digits", "val")
    paths = []
    for i in range(12):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(digits.images[i]).save(paths[-1])
    return paths
