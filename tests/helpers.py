"""Helpers shared by test modules (imported as ``tests.helpers``; fixtures stay in conftest.py)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter (so LayerNorm weights, biases and tokens are not at
    their trivial init values) — equivalence tests then exercise every weight."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


def copy_run(run: Path, into: Path) -> Path:
    """A private copy of a run directory (``into / run.name``) for a test that may change it."""
    return Path(shutil.copytree(run, into / run.name))


HF_V4_NAMES = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
               "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def to_hf_v4(sd: dict) -> dict:
    """Our HF-v5-layout DeiT keys renamed as transformers 4 wrote them (the .bin files on the Hub)."""
    out = {}
    for key, value in sd.items():
        match = re.match(r"deit\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match:
            name = HF_V4_NAMES.get(match[2], match[2])
            key = f"deit.encoder.layer.{match[1]}.{name}.{match[3]}"
        out[key] = value
    return out


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
