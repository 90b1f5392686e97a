"""Shared fixtures. Everything runs on CPU with random weights; nothing is downloaded."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch):
    """Fixed seed per test; no checkpoint directory leaks in from the environment."""
    torch.manual_seed(0)
    monkeypatch.delenv("DEIT_CHECKPOINT_DIR", raising=False)


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter (so LayerNorm weights, biases and tokens are not at
    their trivial init values) — equivalence tests then exercise every weight."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module
