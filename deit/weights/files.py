"""This library's checkpoint files: finding, reading and writing them safely.

Every read goes through safetensors or ``torch.load(weights_only=True)``, so a file can
never execute code on load; every write is atomic (:func:`deit.core.fileio.atomic_write`).
Format version 2 adds ``data_config``, ``classes`` and ``class_ids`` beside the weights;
version-1 files load as before. Adapting foreign layouts is :mod:`deit.weights.layouts`'s.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from deit.core.errors import CheckpointError, MissingCheckpointError
from deit.core.fileio import atomic_write

FORMAT_NAME = "deit"
FORMAT_VERSION = 2  # 2: data_config / classes / class_ids travel with the weights
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


def find_checkpoint(stem: str, directory: Path | None, *, what: str, hint: str = "") -> Path:
    """First existing ``directory/stem{.safetensors,.pth,.pt}``, else a clear error."""
    if directory is None:
        raise MissingCheckpointError(
            f"no checkpoint for {what}: no path was given and no checkpoint directory is set. "
            "Pass an explicit checkpoint path, or a checkpoint directory (checkpoint_dir=, or the "
            f"DEIT_CHECKPOINT_DIR environment variable) holding {stem}.safetensors or {stem}.pth. This lookup "
            f"downloads nothing (published weights: pretrained=True).{hint}")
    tried = [directory / f"{stem}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    for path in tried:
        if path.is_file():
            return path
    raise MissingCheckpointError(
        f"no checkpoint for {what}; tried: {', '.join(str(p) for p in tried)}. "
        f"This lookup downloads nothing (published weights: pretrained=True).{hint}")


def read_checkpoint_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Load one checkpoint file safely. Returns ``(object, safetensors_metadata)``."""
    path = Path(path)
    if not path.exists():
        raise MissingCheckpointError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: the file is truncated or "
                                  f"not a safetensors file ({err})") from None
        return tensors, metadata
    try:
        # argparse.Namespace is allow-listed so official DeiT training checkpoints (which
        # store their args) load; it can only carry the weights-only types inside it.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled Python objects that could run code on load, "
            f"which weights-only loading does not allow ({str(err).splitlines()[0]}). Re-save the weights "
            "as a plain state dict or safetensors in a trusted environment.") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or not a PyTorch / "
                              f"safetensors checkpoint ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors "
                              "or a dict with a 'model' / 'state_dict' entry")
    return dict(obj), {}


def check_format_version(version: Any, source: str) -> None:
    """Files of every version up to :data:`FORMAT_VERSION` load (version 1 lacks the
    preprocessing and class fields, which are then simply absent)."""
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: format_version={version!r} is not a number") from None
    if number > FORMAT_VERSION:
        raise CheckpointError(f"{source} was written in format version {number} by a newer deit; this version "
                              f"reads versions up to {FORMAT_VERSION}: upgrade deit (pip install -U deit)")


# --- writing ---------------------------------------------------------------------------

def model_identity(model: nn.Module) -> dict[str, Any]:
    """The ``model_name`` and constructor ``model_config`` of a model of this library."""
    config = dict(getattr(model, "config", {}) or {})
    return {"model_name": getattr(model, "model_name", None), "model_config": config}


def save_model(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
               model_name: str | None = None, model_config: Mapping[str, Any] | None = None,
               data_config: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None,
               class_ids: Sequence[str] | None = None) -> Path:
    """Write weights in this library's format: ``.safetensors`` or a ``.pth`` dict, atomically.

    The file records ``model_name`` and ``model_config`` so that :func:`build_from_checkpoint`
    can rebuild the model without being told the architecture, and (format version 2)
    optionally how to feed and read it: ``data_config`` (``image_size``, ``in_channels``,
    ``mean``, ``std``, ``crop_pct``, ``interpolation``, as timm's ``pretrained_cfg``),
    ``classes`` (display names in output order) and ``class_ids`` (e.g. WordNet synsets).
    In safetensors files these are JSON strings of the header metadata.
    """
    path = Path(path)
    if isinstance(model, nn.Module):
        identity = model_identity(model)
        state_dict = model.state_dict()
    else:
        identity, state_dict = {"model_name": None, "model_config": {}}, dict(model)
    if model_name is not None:
        identity["model_name"] = model_name
    if model_config is not None:
        identity["model_config"] = dict(model_config)
    extra = {key: value for key, value in (("data_config", dict(data_config) if data_config else None),
                                           ("classes", [str(c) for c in classes] if classes else None),
                                           ("class_ids", [str(c) for c in class_ids] if class_ids else None))
             if value is not None}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                    "model_name": identity["model_name"] or "",
                    "model_config": json.dumps(identity["model_config"] or {}),
                    **{key: json.dumps(value) for key, value in extra.items()}}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    else:
        payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **identity, **extra, "model": tensors}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


# --- training checkpoints ----------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in weights-only-loadable types."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples (random.setstate wants the exact nested tuple)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_training_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Atomically write a training checkpoint (this library's format plus run state).

    ``payload`` holds ``model`` (a state dict) and any of optimizer / scheduler / scaler /
    ema / epoch / rng / config / classes / class_ids / data_config (the fields of
    :func:`save_model`: ``data_config`` with ``crop_pct`` and ``interpolation`` where
    known); everything must be loadable with ``weights_only=True`` (tensors, numbers,
    strings, lists, dicts, tuples).
    """
    path = Path(path)
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda tmp: torch.save(full, tmp))
    return path


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint` (weights-only)."""
    obj, _ = read_checkpoint_file(path)
    if obj.get("format") != FORMAT_NAME or "model" not in obj:
        raise CheckpointError(f"{path} is not a training checkpoint of this library (no 'format: deit' / 'model' "
                              "entries); to start from foreign weights use --finetune")
    return obj
