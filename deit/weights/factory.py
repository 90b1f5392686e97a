"""Models with their weights: by name (:func:`create_model`), from a file
(:func:`build_from_checkpoint`) and file to file (:func:`convert_checkpoint`).

The factory sits above the registry (names → random-weight models) and the checkpoint
layer (files and foreign layouts), as timm's ``timm/models/_factory.py`` /
``_builder.py`` sit above its ``_registry.py``: the models themselves never read files.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from deit.core.errors import CheckpointError
from deit.models.registry import build_model, resolve_timm_kwargs
from deit.weights.hf_folder import hf_config_value, hf_model_overrides
from deit.weights.hub import resolve_pretrained_file
from deit.weights.infer import infer_architecture, match_registered, registered_architectures
from deit.weights.layouts import (
    CHECKPOINT_SUFFIXES,
    LoadReport,
    extract_state_dict,
    load_checkpoint_object,
    load_pretrained,
    read_checkpoint,
    save_model,
    to_timm_layout,
)

logger = logging.getLogger("deit")


def create_model(name: str, pretrained: bool = False, checkpoint: str | os.PathLike | None = None,
                 num_classes: int | None = None, checkpoint_dir: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, download: bool | None = None, progress: bool = True,
                 **overrides: Any) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the variant's published weights, found by
            :func:`deit.weights.hub.resolve_pretrained_file`: ``checkpoint_dir`` /
            ``$DEIT_CHECKPOINT_DIR`` (``<name>.safetensors|.pth`` or the published file name),
            then the download cache, then the download (verified, into the cache).
        checkpoint: explicit weights file (any format :func:`deit.weights.layouts.load_pretrained`
            reads); implies ``pretrained``.
        num_classes: override the number of classes; a checkpoint head of another size is
            then dropped and re-initialised (logged).
        checkpoint_dir: where ``pretrained`` weights — and a named teacher's weights — are
            looked up; defaults to ``$DEIT_CHECKPOINT_DIR``.
        cache_dir, download, progress: the download cache (default ``$DEIT_CACHE`` or
            ``~/.cache/deit``), whether a download is allowed (default: unless
            ``$DEIT_OFFLINE`` is set) and its progress bar.
        overrides: any constructor argument (``image_size=384``, ``teacher_model_name=…``),
            or its timm name (``img_size``, ``in_chans``, ``drop_rate``, ``drop_path_rate``,
            ``global_pool``; see :func:`resolve_timm_kwargs`).
    """
    overrides = resolve_timm_kwargs(name, overrides)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if checkpoint_dir is not None and overrides.get("teacher_model_name") is not None:
        overrides.setdefault("checkpoint_dir", checkpoint_dir)
    if checkpoint is None and pretrained:  # found (or failed) before building a large model
        checkpoint = resolve_pretrained_file(name, checkpoint_dir=checkpoint_dir, cache_dir=cache_dir,
                                             download=download, progress=progress)
    model = build_model(name, **overrides)
    if checkpoint is not None:
        load_pretrained(model, checkpoint)
    return model


def infer_architecture_overrides(state_dict: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any] | None = None
                                 ) -> tuple[str, dict[str, Any], list[str]]:
    """Registered name and constructor overrides that build a foreign file's model with
    exactly its shapes (see :mod:`deit.weights.infer`): nothing is resampled while
    guessing, so a 384 px file builds at 384 px. An HF ``config.json`` adds the head count
    and ``norm_eps`` (``layer_norm_eps``) and must agree with the shapes.

    Returns ``(name, overrides, notes)``.
    Raises:
        CheckpointError: several registered variants fit (all are named), none can be
            derived, or config.json contradicts the weights.
    """
    sd = to_timm_layout(state_dict)
    heads, hf_args = hf_model_overrides(hf_config) if hf_config is not None else (None, {})
    arch = infer_architecture(sd, heads=heads)
    if hf_args:
        _check_hf_config_shapes(arch, hf_args)
    name, overrides, notes = match_registered(arch)
    if "norm_eps" in hf_args:
        overrides["norm_eps"] = hf_args["norm_eps"]
    if not notes:  # an exact match (match_registered explains a nearest-variant build itself)
        shown = "".join(f", {k}={v}" for k, v in overrides.items())
        notes.append(f"architecture inferred from the tensor shapes: {name}{shown} ({arch.describe()})")
    elif hf_args:
        notes.append(f"norm_eps={hf_args['norm_eps']} (config.json layer_norm_eps)")
    if arch.distilled and arch.num_classes and "head_dist.weight" not in sd:
        overrides["return_logits_type"] = "classification"
        notes.append(_CLASS_HEAD_ONLY)
    return name, overrides, notes


_CLASS_HEAD_ONLY = ("the file has a distillation token but no distillation head (as HF DeiTForImageClassification): "
                    "the model predicts with the class head alone (return_logits_type='classification')")


def _check_hf_config_shapes(arch: Any, hf_args: Mapping[str, Any]) -> None:
    """config.json and the weights must describe the same model (HF itself would refuse)."""
    pairs = (("width", "d_model", "hidden_size"), ("depth", "num_encoder_blocks", "num_hidden_layers"),
             ("mlp_width", "encoder_mlp_d", "intermediate_size"), ("patch_size", "patch_size", "patch_size"),
             ("image_size", "image_size", "image_size"), ("in_channels", "in_channels", "num_channels"))
    for field_name, arg, hf_key in pairs:
        have = getattr(arch, field_name)
        if have is not None and have != hf_args[arg]:
            raise CheckpointError(f"config.json says {hf_key}={hf_args[arg]} but the weights have "
                                  f"{field_name.replace('_', ' ')} {have}: the folder is inconsistent")
    if arch.width % hf_args["encoder_num_heads"]:
        raise CheckpointError(f"config.json num_attention_heads={hf_args['encoder_num_heads']} does not divide "
                              f"the width {arch.width}")


def _shape_overrides(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes`` / ``in_channels`` read off a timm-layout state dict, where present."""
    found: dict[str, Any] = {}
    for head_key in ("head.weight", "head.fc.weight", "fc.weight"):  # ViT / DeiT, ConvNeXt, ResNet
        if head_key in state_dict:
            found["num_classes"] = int(state_dict[head_key].shape[0])
    for stem_key in ("patch_embed.proj.weight", "stem.0.weight", "conv1.weight"):
        weight = state_dict.get(stem_key)
        if weight is not None and weight.ndim == 4:  # (D, C, p, p) conv kernels
            found["in_channels"] = int(weight.shape[1])
    return found


def _named_overrides(model_name: str, state_dict: Mapping[str, torch.Tensor], info: Mapping[str, Any]
                     ) -> tuple[dict[str, Any], list[str]]:
    """A foreign file loaded into a named architecture keeps its head, input channels,
    LayerNorm eps (HF config.json) and, without a distillation head, the class head."""
    sd = to_timm_layout(state_dict)
    config, notes = _shape_overrides(sd), []
    if "hf_config" in info:
        config["norm_eps"] = float(hf_config_value(info["hf_config"], "layer_norm_eps"))
    target = registered_architectures().get(model_name)
    if target is not None and target.distilled and "dist_token" in sd and "head_dist.weight" not in sd \
            and "head.weight" in sd:
        config["return_logits_type"] = "classification"
        notes.append(_CLASS_HEAD_ONLY)
    return config, notes


def build_from_checkpoint(path: str | os.PathLike, model_name: str | None = None,
                          **overrides: Any) -> tuple[nn.Module, LoadReport]:
    """Rebuild a model from a checkpoint file or HF folder.

    This library's files carry name and config. For foreign files the architecture is
    ``model_name`` (keeping the file's head and channels) or is inferred from the raw
    tensor shapes (:func:`infer_architecture_overrides`), with an HF folder's config.json
    applied. ``overrides`` (constructor arguments) win over both; an ``image_size`` other
    than the file's resamples the position embedding, as asked. A training checkpoint whose
    student was a module given in Python (``student_module``) is refused unless ``model_name``
    names the architecture: no file can rebuild a user's module.
    """
    obj, metadata = read_checkpoint(path)
    state_dict, info = extract_state_dict(obj, metadata, source=str(path))
    if model_name is None and info.get("student_module"):
        raise CheckpointError(
            f"{path}: the run's student was a Python module ({info['student_module']}), which a file cannot rebuild; "
            "build the module in Python and load_state_dict(torch.load(path, weights_only=True)['model']), or name a "
            "registered architecture with the same weights (--model)")
    config: dict[str, Any] = {}
    notes: list[str] = []
    if model_name is None and info.get("model_name"):
        model_name = info["model_name"]
        config = dict(info.get("model_config") or {})
    if model_name is None:
        try:
            model_name, config, notes = infer_architecture_overrides(state_dict, info.get("hf_config"))
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
    elif not config:
        config, notes = _named_overrides(model_name, state_dict, info)
    config.update(overrides)
    config.pop("teacher_model_name", None)  # a teacher is never part of a weights file
    model = build_model(model_name, **config)
    report = load_checkpoint_object(model, obj, metadata, path)  # the file is read once
    report.notes[:0] = notes + _fit_file_fields(model, report.info)
    for note in notes:
        logger.info("%s: %s", Path(path).name, note)
    return model, report


def _fit_file_fields(model: nn.Module, info: dict[str, Any]) -> list[str]:
    """Class names that no longer fit the head, and an input size that an ``image_size``
    override changed, are dropped / updated in ``info`` (returned notes say so)."""
    notes = []
    classes, num_classes = info.get("classes"), getattr(model, "num_classes", None)
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        notes.append(f"the file names {len(classes)} classes but the model has {num_classes} outputs: "
                     "its class names are not used")
        info.pop("classes")
        info.pop("class_ids", None)
    data_config, image_size = info.get("data_config"), getattr(model, "image_size", None)
    if data_config and image_size and data_config.get("image_size") not in (None, image_size):
        notes.append(f"input size {data_config['image_size']} of the file's data_config replaced by the model's "
                     f"{image_size}")
        info["data_config"] = {**data_config, "image_size": image_size}
    return notes


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None = None,
                       **overrides: Any) -> tuple[Path, str]:
    """Read any supported checkpoint (file or HF folder) and write it in this library's
    format (``.pth`` or ``.safetensors`` by ``dst``'s suffix), carrying the source's
    ``data_config``, ``classes`` and ``class_ids`` where it has them (an HF folder's
    preprocessor_config.json and id2label). Returns ``(dst, model_name)``."""
    dst = Path(dst)
    if dst.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"destination {dst} must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
    if Path(src).resolve() == dst.resolve():
        raise CheckpointError(f"source and destination are the same file: {dst}")
    model, report = build_from_checkpoint(src, model_name, **overrides)
    info = report.info
    save_model(model, dst, data_config=info.get("data_config"), classes=info.get("classes"),
               class_ids=info.get("class_ids"))
    return dst, model.model_name
