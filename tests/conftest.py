"""Shared fixtures. Everything runs on CPU with random weights; nothing comes from the internet."""
from __future__ import annotations

import os

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
    weights are never fetched from the internet (tests/test_hub.py lifts DEIT_OFFLINE to
    download from its own 127.0.0.1 server) and the user's cache is never touched."""
    torch.manual_seed(0)
    monkeypatch.delenv("DEIT_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("DEIT_WEIGHTS_MIRROR", raising=False)
    monkeypatch.setenv("DEIT_CACHE", str(_weights_cache))
    monkeypatch.setenv("DEIT_OFFLINE", "1")


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter (so LayerNorm weights, biases and tokens are not at
    their trivial init values) — equivalence tests then exercise every weight."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module
