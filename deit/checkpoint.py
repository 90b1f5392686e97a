"""Reading, adapting, saving and converting weights (issue #2, item 6).

Foreign checkpoints are adapted at load time by :func:`adapt_state_dict` — a filter
function in timm's manner — and never by the model. Accepted inputs:

* this library's files (:func:`save_model`), ``.pth``/``.pt`` or ``.safetensors``;
* the official DeiT ``.pth`` (``{'model': state_dict, ...}``, also full training
  checkpoints whose ``args`` is an ``argparse.Namespace``);
* plain timm state dicts (also with ``module.`` / ``_orig_mod.`` prefixes);
* HF transformers DeiT (``deit.embeddings.*``, separate query/key/value,
  ``cls_classifier`` / ``distillation_classifier``), ``.bin`` or ``.safetensors``;
* the original facebookresearch ConvNeXt layout (``downsample_layers.*``, ``pwconv1``).

Every read goes through safetensors or ``torch.load(weights_only=True)``: a checkpoint
can never execute code on load.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("deit")

FORMAT_NAME = "deit"
FORMAT_VERSION = 1
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint file where one was expected; the message names the path(s) tried."""


# --- finding and reading files ---------------------------------------------------------

def find_checkpoint(stem: str, directory: Path | None, *, what: str, hint: str = "") -> Path:
    """First existing ``directory/stem{.safetensors,.pth,.pt}``, else a clear error."""
    if directory is None:
        raise MissingCheckpointError(
            f"no checkpoint for {what}: no path was given and no checkpoint directory is set. "
            "Pass an explicit checkpoint path, or a checkpoint directory (checkpoint_dir= / "
            f"--checkpoint-dir, or the DEIT_CHECKPOINT_DIR environment variable) holding "
            f"{stem}.safetensors or {stem}.pth. Nothing is downloaded.{hint}")
    tried = [directory / f"{stem}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    for path in tried:
        if path.is_file():
            return path
    raise MissingCheckpointError(
        f"no checkpoint for {what}; tried: {', '.join(str(p) for p in tried)}. "
        f"Nothing is downloaded.{hint}")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a checkpoint file safely. Returns ``(object, safetensors_metadata)``."""
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


def extract_state_dict(obj: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                       source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the model weights inside a checkpoint object.

    Returns ``(state_dict, info)`` where ``info`` holds ``model_name`` / ``model_config``
    when the file was written by this library.
    """
    info: dict[str, Any] = {}
    metadata = dict(metadata or {})
    if metadata.get("format") == FORMAT_NAME:
        info["model_name"] = metadata.get("model_name") or None
        info["model_config"] = json.loads(metadata["model_config"]) if metadata.get("model_config") else None
    if obj.get("format") == FORMAT_NAME:
        info["model_name"] = obj.get("model_name")
        info["model_config"] = obj.get("model_config")
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                                  "a state dict (or a dict with a 'model' / 'state_dict' entry)")
        for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
            if key.startswith(prefix):
                key = key[len(prefix):]
        state_dict[key] = value
    if not state_dict:
        raise CheckpointError(f"{source} holds no tensors")
    return state_dict, info


# --- foreign layouts -> timm layout ---------------------------------------------------

def _is_hf_deit(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("deit.embeddings.", "embeddings.patch_embeddings.")) for k in sd)


def convert_hf_deit(sd: Mapping[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """HF transformers DeiT -> timm keys (fuse query/key/value into qkv)."""
    sd = {k[len("deit."):] if k.startswith("deit.") else k: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.distillation_token": "dist_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
        "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
        "classifier.weight": "head.weight", "classifier.bias": "head.bias",
        "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias",
    }
    # transformers < 5 (and the files on the Hub): encoder.layer.N.attention.attention.query …
    # transformers >= 5: layers.N.attention.q_proj …
    layer_map = {
        "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
        "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "layernorm_before": "norm1", "layernorm_after": "norm2",
    }
    qkv_names = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
                 "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}
    pattern = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in simple:
            out[simple[key]] = value
            continue
        match = pattern.match(key)
        if match:
            index, name, kind = int(match[1]), match[2], match[3]
            if name in qkv_names:
                qkv.setdefault((index, kind), {})[qkv_names[name]] = value
                continue
            if name in layer_map:
                out[f"blocks.{index}.{layer_map[name]}.{kind}"] = value
                continue
        if key.startswith(("embeddings.mask_token", "pooler.")):
            notes.append(f"ignored HF-only parameter {key}")
            continue
        out[key] = value  # left as is: reported as unexpected by load_pretrained
    for (index, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"HF DeiT checkpoint: layer {index} lacks one of query/key/value {kind}")
        out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_timm_layout(state_dict: Mapping[str, torch.Tensor], notes: list[str] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Rename foreign layouts (HF DeiT, facebookresearch ConvNeXt) to timm's keys."""
    notes = notes if notes is not None else []
    sd = dict(state_dict)
    if _is_hf_deit(sd):
        notes.append("converted HF transformers DeiT layout")
        sd = convert_hf_deit(sd, notes)
    if _is_fb_convnext(sd):
        notes.append("converted facebookresearch ConvNeXt layout")
        sd = convert_fb_convnext(sd)
    return sd


def _is_fb_convnext(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("downsample_layers.") for k in sd)


def convert_fb_convnext(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/ConvNeXt layout -> timm keys."""
    out = {}
    for key, value in sd.items():
        key = key.replace("downsample_layers.0.", "stem.")
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        key = re.sub(r"^downsample_layers\.(\d+)\.(\d+)", r"stages.\1.downsample.\2", key)
        key = key.replace("dwconv", "conv_dw").replace("pwconv", "mlp.fc")
        key = re.sub(r"^head\.", "head.fc.", key)
        key = re.sub(r"^norm\.", "head.norm.", key)
        out[key] = value
    return out


# --- adapting to the target model ------------------------------------------------------

def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int,
                       old_prefix_tokens: int | None = None, target_prefix: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Bicubic resize of the patch rows of a (1, P+N, D) position embedding.

    The prefix rows (class / distillation tokens) are kept. If the source has fewer
    prefix rows than the target (a non-distilled checkpoint into a DeiT), the missing
    rows are taken from ``target_prefix``. Matches timm's ``resample_abs_pos_embed``
    (float32, bicubic, antialias, align_corners=False).
    """
    old_prefix = num_prefix_tokens if old_prefix_tokens is None else old_prefix_tokens
    prefix, patches = pos_embed[:, :old_prefix], pos_embed[:, old_prefix:]  # (1, P, D), (1, N, D)
    if old_prefix < num_prefix_tokens:
        if target_prefix is None:
            raise CheckpointError("position embedding has fewer prefix rows than the model needs")
        prefix = torch.cat([prefix, target_prefix[:, old_prefix:num_prefix_tokens].to(prefix)], dim=1)
    old_n = patches.shape[1]
    side = int(round(old_n ** 0.5))
    if side * side != old_n:
        raise CheckpointError(f"position embedding has {old_n} patch rows, not a square grid")
    if (side, side) != tuple(new_grid):
        dtype = patches.dtype
        grid = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, h, w)
        grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
        patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(dtype)  # (1, N', D)
    return torch.cat([prefix, patches], dim=1)  # (1, P+N', D)


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(O, C, k, k) -> (O, in_channels, k, k), as timm's ``adapt_input_conv``: RGB -> grey
    sums the colour filters; otherwise the filters are tiled and rescaled by C/in_channels
    so that the response to a constant image keeps its magnitude."""
    source_channels = weight.shape[1]
    if source_channels == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)  # (O, 1, k, k)
    repeats = -(-in_channels // source_channels)
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_channels]  # (O, in_channels, k, k)
    return tiled * (source_channels / in_channels)


def adapt_patch_weight(value: torch.Tensor, target: torch.Tensor, kernel: int, notes: list[str]) -> torch.Tensor:
    """Fit a patch-embedding / stem weight to the model: Conv2d (D, C, p, p) <-> linear
    (D, C*p*p) and another number of input channels. Left unchanged (and so reported as
    a shape mismatch) when the width or the patch size differ."""
    width, area = target.shape[0], kernel * kernel
    if value.shape[0] != width or (value.ndim == 4 and value.shape[-2:] != (kernel, kernel)) \
            or (value.ndim == 2 and value.shape[1] % area):
        return value
    weight = value.reshape(width, -1, kernel, kernel)  # (D, C_src, p, p)
    in_channels = target.shape[1] if target.ndim == 4 else target.shape[1] // area
    if weight.shape[1] != in_channels:
        notes.append(f"input channels adapted {weight.shape[1]} -> {in_channels} (timm's adapt_input_conv rule)")
        weight = adapt_input_channels(weight, in_channels)
    return weight.reshape(target.shape)


def _is_head_key(key: str) -> bool:
    return key.startswith(("head.", "head_dist.")) and not key.startswith("head.norm.")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, for logs and tests."""

    path: str
    notes: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    checkpoint: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the file's whole content


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, *,
                     allow_head_reset: bool = True, notes: list[str] | None = None
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Filter a foreign state dict into ``model``'s layout (timm's checkpoint_filter_fn idea).

    Returns ``(adapted_state_dict, keys_left_to_the_model's_init)``.
    """
    notes = notes if notes is not None else []
    sd = to_timm_layout(state_dict, notes)
    target = model.state_dict()
    keep_model_init: list[str] = []

    for key in list(sd):
        if key not in target:
            continue
        value, want = sd[key], target[key].shape
        if value.shape == want:
            continue
        if key == "pos_embed":
            prefix = getattr(model, "num_prefix_tokens", 1)
            old_prefix = prefix if "dist_token" in sd or prefix == 1 else 1
            grid = model.patch_embed.grid_size
            sd[key] = resample_pos_embed(value, grid, prefix, old_prefix, target_prefix=target[key])
            notes.append(f"resampled pos_embed {tuple(value.shape)} -> {tuple(want)} (bicubic, prefix rows kept)")
        elif key == "patch_embed.proj.weight":
            sd[key] = adapt_patch_weight(value, target[key], model.patch_embed.patch_size, notes)
        elif key == "stem.0.weight":
            sd[key] = adapt_patch_weight(value, target[key], target[key].shape[-1], notes)
        elif value.numel() == target[key].numel() and re.search(r"mlp\.fc[12]\.weight$", key):
            sd[key] = value.reshape(want)  # 1x1 conv (O, I, 1, 1) <-> linear (O, I)
        elif _is_head_key(key) and allow_head_reset:
            del sd[key]
            keep_model_init.append(key)
        elif _is_head_key(key):
            raise CheckpointError(f"classifier {key} has shape {tuple(value.shape)} in the checkpoint but "
                                  f"{tuple(want)} in the model (num_classes differs)")
    if keep_model_init:
        notes.append(f"classifier re-initialised for {getattr(model, 'num_classes', '?')} classes "
                     f"(checkpoint head has another size): {', '.join(sorted(keep_model_init))}")
    if "dist_token" in target and "dist_token" not in sd and "cls_token" in sd:
        keep_model_init.append("dist_token")
        notes.append("checkpoint has no distillation token: dist_token keeps its initialisation")
    missing_dist_head = [k for k in target if k.startswith("head_dist.") and k not in sd and k not in keep_model_init]
    if missing_dist_head and any(k.startswith("head.") for k in sd):
        keep_model_init.extend(missing_dist_head)
        notes.append("checkpoint has no distillation head: head_dist keeps its initialisation")
    return sd, keep_model_init


def load_pretrained(model: nn.Module, path: str | os.PathLike, *, allow_head_reset: bool = True,
                    expected: str | None = None, hint: str = "") -> LoadReport:
    """Load weights from any supported checkpoint file into ``model`` (in place).

    Args:
        allow_head_reset: when the checkpoint's classifier has another number of classes,
            drop it and keep the model's fresh head (logged). ``False`` makes that an error
            (a teacher must come with its own trained head).
        expected: description of the expected architecture, used in error messages.
    Raises:
        CheckpointError: unreadable file, or weights that do not fit the model.
    """
    expected = expected or getattr(model, "model_name", type(model).__name__)
    try:
        obj, metadata = read_checkpoint(path)
    except CheckpointError as err:
        raise type(err)(f"{err} (needed for {expected}).{hint}") from None
    return load_checkpoint_object(model, obj, metadata, path, allow_head_reset=allow_head_reset,
                                  expected=expected, hint=hint)


def load_checkpoint_object(model: nn.Module, obj: Mapping[str, Any], metadata: Mapping[str, str],
                           path: str | os.PathLike, *, allow_head_reset: bool = True, expected: str | None = None,
                           hint: str = "") -> LoadReport:
    """:func:`load_pretrained` for a checkpoint already read by :func:`read_checkpoint`."""
    path = Path(path)
    expected = expected or getattr(model, "model_name", type(model).__name__)
    state_dict, info = extract_state_dict(obj, metadata, source=str(path))
    report = LoadReport(path=str(path), info=info, checkpoint=obj)
    try:
        sd, keep = adapt_state_dict(state_dict, model, allow_head_reset=allow_head_reset, notes=report.notes)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path} does not fit {expected}: {err}.{hint}") from None
    target = model.state_dict()
    missing = [k for k in target if k not in sd and k not in keep]
    unexpected = [k for k in sd if k not in target]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sd if k in target and sd[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                problems.append(f"{label}: {shown}")
        saved = f" (the file says it holds {info['model_name']})" if info.get("model_name") else ""
        raise CheckpointError(f"checkpoint {path}{saved} does not fit the expected architecture {expected}: "
                              + "; ".join(problems) + f".{hint}")
    merged = {k: sd.get(k, target[k]) for k in target}
    model.load_state_dict(merged, strict=True)
    report.reinitialised = keep
    for note in report.notes:
        logger.info("%s: %s", path.name, note)
    return report


# --- writing ---------------------------------------------------------------------------

def model_identity(model: nn.Module) -> dict[str, Any]:
    """The ``model_name`` and constructor ``model_config`` of a model of this library."""
    config = dict(getattr(model, "config", {}) or {})
    return {"model_name": getattr(model, "model_name", None), "model_config": config}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it over ``path``.

    A crash (kill -9, power loss) or an IO error (disk full) at any point leaves either the
    previous ``path`` or the new one, never half a file (issue 5); the temporary file is
    removed on an exception.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except Exception as err:  # disk full, file too large, IO error: torch and safetensors wrap the OSError
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else f"{type(err).__name__}: {err}"
        code = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
        raise OSError(code, f"could not write {path} ({reason}); {kept}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (config, summary, log table) through :func:`atomic_write`."""
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def save_model(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, *,
               model_name: str | None = None, model_config: Mapping[str, Any] | None = None) -> Path:
    """Write weights in this library's format: ``.safetensors`` or a ``.pth`` dict, atomically.

    The file records ``model_name`` and ``model_config`` so that :func:`build_from_checkpoint`
    can rebuild the model without being told the architecture.
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
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                    "model_name": identity["model_name"] or "",
                    "model_config": json.dumps(identity["model_config"] or {})}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    else:
        payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **identity, "model": tensors}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


# --- rebuilding and converting ---------------------------------------------------------

def infer_model_name(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Find the registered model whose layout matches a (timm-layout) state dict.

    Candidates are built on the meta device (no memory, no init cost). Returns
    ``(name, overrides)`` where overrides may set ``num_classes``.
    """
    from deit.models.registry import create_model, list_models

    overrides: dict[str, Any] = {}
    for head_key in ("head.weight", "head.fc.weight"):
        if head_key in state_dict:
            overrides["num_classes"] = int(state_dict[head_key].shape[0])
    if "head.weight" not in state_dict and "head.fc.weight" not in state_dict:
        overrides["num_classes"] = 0
    for name in list_models():
        kwargs = dict(overrides)
        with torch.device("meta"):
            try:
                model = create_model(name, **kwargs)
            except ValueError:
                continue
        try:
            sd, keep = adapt_state_dict(state_dict, model, allow_head_reset=False)
        except CheckpointError:
            continue
        target = model.state_dict()
        if set(sd) == set(target) and all(sd[k].shape == target[k].shape for k in sd) and not keep:
            return name, kwargs
    raise CheckpointError("the weights match no registered model exactly; name the architecture "
                          "(--model NAME, with --num-classes / --image-size if they differ)")


def _shape_overrides(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes`` / ``in_channels`` read off a timm-layout state dict, where present."""
    found: dict[str, Any] = {}
    for head_key in ("head.weight", "head.fc.weight"):
        if head_key in state_dict:
            found["num_classes"] = int(state_dict[head_key].shape[0])
    for stem_key in ("patch_embed.proj.weight", "stem.0.weight"):
        weight = state_dict.get(stem_key)
        if weight is not None and weight.ndim == 4:  # (D, C, p, p) conv kernels
            found["in_channels"] = int(weight.shape[1])
    return found


def build_from_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                          **overrides: Any) -> tuple[nn.Module, LoadReport]:
    """Rebuild a model from a checkpoint: our files carry name and config; for foreign
    files the architecture is ``model_name`` or inferred from the tensor shapes."""
    from deit.models.registry import create_model

    obj, metadata = read_checkpoint(path)
    state_dict, info = extract_state_dict(obj, metadata, source=str(path))
    config: dict[str, Any] = {}
    if model_name is None and info.get("model_name"):
        model_name = info["model_name"]
        config = dict(info.get("model_config") or {})
    if model_name is None:
        model_name, config = infer_model_name(to_timm_layout(state_dict))
    elif not config:  # a named architecture for a foreign file: keep its head and input channels
        config = _shape_overrides(to_timm_layout(state_dict))
    config.update(overrides)
    config.pop("teacher_model_name", None)  # a teacher is never part of a weights file
    model = create_model(model_name, **config)
    report = load_checkpoint_object(model, obj, metadata, path)  # the file is read once
    return model, report


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None = None,
                       **overrides: Any) -> tuple[Path, str]:
    """Read any supported checkpoint and write it in this library's format (``.pth`` or
    ``.safetensors`` by ``dst``'s suffix). Returns ``(dst, model_name)``."""
    dst = Path(dst)
    if dst.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"destination {dst} must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
    if Path(src).resolve() == dst.resolve():
        raise CheckpointError(f"source and destination are the same file: {dst}")
    model, report = build_from_checkpoint(src, model_name, **overrides)
    save_model(model, dst)
    return dst, model.model_name


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
    ema / epoch / rng / config / classes / data_config; everything must be loadable with
    ``weights_only=True`` (tensors, numbers, strings, lists, dicts, tuples).
    """
    path = Path(path)
    full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda tmp: torch.save(full, tmp))
    return path


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_checkpoint` (weights-only)."""
    obj, _ = read_checkpoint(path)
    if obj.get("format") != FORMAT_NAME or "model" not in obj:
        raise CheckpointError(f"{path} is not a training checkpoint of this library (no 'format: deit' / 'model' "
                              "entries); to start from foreign weights use --finetune")
    return obj
