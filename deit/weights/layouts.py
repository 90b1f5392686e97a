"""Reading weights of any supported layout and loading them into a model.

Foreign checkpoints are adapted at load time by :func:`adapt_state_dict` — a filter
function in timm's manner — and never by the model. Accepted inputs:

* this library's files (:func:`save_model`), ``.pth``/``.pt`` or ``.safetensors``;
* the official DeiT ``.pth`` (``{'model': state_dict, ...}``, also full training
  checkpoints whose ``args`` is an ``argparse.Namespace``);
* plain timm state dicts (also with ``module.`` / ``_orig_mod.`` prefixes);
* HF transformers DeiT (``deit.embeddings.*``, separate query/key/value,
  ``cls_classifier`` / ``distillation_classifier``), ``.bin`` or ``.safetensors``, and
  whole ``save_pretrained`` folders whose config.json and preprocessor_config.json are
  applied (:mod:`deit.weights.hf_folder`);
* the original facebookresearch ConvNeXt layout (``downsample_layers.*``, ``pwconv1``).

A foreign file's architecture is read off its raw tensor shapes before any adaptation
(:mod:`deit.weights.infer`), so guessing never resamples. Every read goes through
safetensors or ``torch.load(weights_only=True)``: a checkpoint can never execute code on
load (:mod:`deit.weights.files`, which also writes this library's files; building a model
from a file is :mod:`deit.weights.factory`'s).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from torch import nn

from deit.core.errors import CheckpointError, MissingCheckpointError  # noqa: F401 (re-exported)
from deit.weights.files import (  # noqa: F401 (re-exported: the public face of checkpoint files)
    CHECKPOINT_SUFFIXES,
    FORMAT_NAME,
    FORMAT_VERSION,
    capture_rng_state,
    check_format_version,
    find_checkpoint,
    load_training_checkpoint,
    model_identity,
    read_checkpoint_file,
    restore_rng_state,
    save_model,
    save_training_checkpoint,
)
from deit.weights.hf_folder import HF_FORMAT, hf_folder_of, hf_info, read_hf_folder

logger = logging.getLogger("deit")



# --- finding and reading files ---------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Load a checkpoint safely. Returns ``(object, metadata)``.

    ``path`` is a file, or an HF transformers ``save_pretrained`` folder (config.json +
    model.safetensors / pytorch_model.bin, see :mod:`deit.weights.hf_folder`); the metadata is
    the safetensors header's, or for HF folders their JSON files as strings.
    """
    path = Path(path)
    folder = hf_folder_of(path) if path.exists() else None
    if folder is not None:
        return read_hf_folder(folder, weights=None if path.is_dir() else path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory without config.json; expected a file "
                              f"({', '.join(CHECKPOINT_SUFFIXES)}, .bin) or an HF transformers save_pretrained folder "
                              "(config.json + model.safetensors or pytorch_model.bin)")
    return read_checkpoint_file(path)


# entries of this library's files besides the weights (format version 2; training checkpoints of any version)
_FILE_FIELDS = ("data_config", "classes", "class_ids")


def extract_state_dict(obj: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                       source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Find the model weights inside a checkpoint object.

    Returns ``(state_dict, info)``. ``info`` holds what the file says besides its weights:
    ``model_name`` / ``model_config`` (this library's files); ``data_config`` (image size,
    channels, mean, std, crop_pct, interpolation), ``classes`` (display names) and
    ``class_ids`` where the file has them; for HF folders also ``hf_config`` and
    ``load_notes``; ``student_module`` for a training checkpoint whose student was a module
    given in Python (its class: the file holds no name to rebuild it from).
    """
    info: dict[str, Any] = {}
    metadata = dict(metadata or {})
    if metadata.get("format") == FORMAT_NAME:
        check_format_version(metadata.get("format_version", 1), source)
        info["model_name"] = metadata.get("model_name") or None
        info["model_config"] = json.loads(metadata["model_config"]) if metadata.get("model_config") else None
        info.update({k: json.loads(metadata[k]) for k in _FILE_FIELDS if metadata.get(k)})
    elif metadata.get("format") == HF_FORMAT:
        info.update(hf_info(metadata))
    if obj.get("format") == FORMAT_NAME:
        check_format_version(obj.get("format_version", 1), source)
        info["model_name"] = obj.get("model_name")
        info["model_config"] = obj.get("model_config")
        if obj.get("student_module"):
            info["student_module"] = obj["student_module"]
        info.update({k: obj[k] for k in _FILE_FIELDS if obj.get(k) is not None})
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected "
                                  "a state dict (or a dict with a 'model' / 'state_dict' entry)")
        key = strip_wrapper_prefixes(key)
        state_dict[key] = value
    if not state_dict:
        raise CheckpointError(f"{source} holds no tensors")
    return state_dict, info


WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""What DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) put before a wrapped model's keys."""


def strip_wrapper_prefixes(key: str) -> str:
    """``key`` without the wrappers' prefixes, in whatever order and number they nest:
    ``torch.compile(DDP(m))`` saves ``_orig_mod.module.…``, ``DDP(torch.compile(m))``
    ``module._orig_mod.…``."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key[len(next(p for p in WRAPPER_PREFIXES if key.startswith(p))):]
    return key


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
    """A (1, P+N, D) position embedding for a ``new_grid`` of patches: the patch rows resized
    by timm's ``resample_abs_pos_embed`` (float32, bicubic, antialias), the prefix rows (class
    / distillation tokens) kept. If the source has fewer prefix rows than the target (a
    non-distilled checkpoint into a DeiT), the missing rows are taken from ``target_prefix``.
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
        patches = resample_abs_pos_embed(patches, list(new_grid), [side, side], num_prefix_tokens=0)  # (1, N', D)
    return torch.cat([prefix, patches], dim=1)  # (1, P+N', D)


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """(O, C, k, k) -> (O, in_channels, k, k) by timm's ``adapt_input_conv``: to grey the
    colour filters are summed; otherwise they are tiled and rescaled by C/in_channels so
    that the response to a constant image keeps its magnitude."""
    if weight.shape[1] == in_channels:
        return weight
    return adapt_input_conv(in_channels, weight, base_chans=weight.shape[1])


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
    """A classifier key: ViT / DeiT ``head`` / ``head_dist``, ConvNeXt ``head.fc``, ResNet ``fc``."""
    return key.startswith(("head.", "head_dist.", "fc.")) and not key.startswith("head.norm.")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, for logs and tests.

    ``info`` is :func:`extract_state_dict`'s (``model_name``, ``model_config``,
    ``data_config``, ``classes``, ``class_ids``, ``hf_config`` where the file has them);
    :func:`build_from_checkpoint` adds ``inferred`` (the architecture read off the shapes).
    """

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
            old_prefix = 1 + ("dist_token" in sd)  # the file's own class (+ distillation) token rows
            if old_prefix > prefix:
                raise CheckpointError("the checkpoint has a distillation token (2 prefix rows in pos_embed) but the "
                                      "model has none; load it into a distilled variant (*_distilled_*)")
            grid = model.patch_embed.grid_size
            sd[key] = resample_pos_embed(value, grid, prefix, old_prefix, target_prefix=target[key])
            notes.append(f"resampled pos_embed {tuple(value.shape)} -> {tuple(want)} (bicubic, prefix rows kept)")
        elif key == "patch_embed.proj.weight" and getattr(model.patch_embed, "technique", "") == "conv_stem":
            raise CheckpointError(f"patch_embed.proj.weight {tuple(value.shape)} is a patch embedding, but the model "
                                  f"makes its tokens with a convolutional stem (proj {tuple(want)}): load the file "
                                  "into a model with patchify_technique 'convolutional' or 'linear'")
        elif key == "patch_embed.proj.weight":
            sd[key] = adapt_patch_weight(value, target[key], model.patch_embed.patch_size, notes)
        elif key in ("stem.0.weight", "conv1.weight", "patch_embed.stem.0.conv.weight"):  # the first convolution
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
    report = LoadReport(path=str(path), notes=info.pop("load_notes", []), info=info, checkpoint=obj)
    hf_eps = (info.get("hf_config") or {}).get("layer_norm_eps", 1e-12 if "hf_config" in info else None)
    model_eps = getattr(model, "config", {}).get("norm_eps")
    if hf_eps is not None and model_eps is not None and float(hf_eps) != float(model_eps):
        report.notes.append(f"config.json has layer_norm_eps={hf_eps} but the model was built with "
                            f"norm_eps={model_eps}; build_from_checkpoint applies the file's value")
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
