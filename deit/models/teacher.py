"""Teacher resolution and loading for distillation (issue #2, item 4).

A teacher is named by:

* ``"ConvNeXt"`` (any case) — the library's default convnet teacher: ``convnext_atto``
  for images of 64 px and more, ``convnext_atto_32`` (stride-2 stem) below that, so that
  the default works on both ImageNet-sized and 28–32 px data. The paper's teacher is a
  RegNetY-16GF; a small ConvNeXt is the CPU-friendly convnet stand-in;
* any registered model of this library (``deit.list_models()``), including DeiTs for
  the paper's transformer-teacher comparison (Table 2);
* ``"timm:<name>"`` for any timm architecture (built with random weights, no download).

Weights always come from a checkpoint file, never from the network.
"""
from __future__ import annotations

import os

from torch import nn

from deit.checkpoint import find_checkpoint, load_pretrained
from deit.models.registry import (
    check_model_name,
    create_model,
    default_checkpoint_dir,
    list_models,
    model_family,
)

DEFAULT_CONVNEXT = "convnext_atto"
DEFAULT_CONVNEXT_SMALL_IMAGES = "convnext_atto_32"
SMALL_IMAGE_THRESHOLD = 64
TIMM_PREFIX = "timm:"


def resolve_teacher_name(name: str, image_size: int) -> str:
    """Map a user-facing teacher name to a registered name or ``timm:<name>``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"teacher_model_name={name!r} is invalid; expected a model name")
    if name.lower() == "convnext":
        return DEFAULT_CONVNEXT_SMALL_IMAGES if image_size < SMALL_IMAGE_THRESHOLD else DEFAULT_CONVNEXT
    if name.startswith(TIMM_PREFIX):
        if len(name) == len(TIMM_PREFIX):
            raise ValueError("teacher_model_name='timm:' needs a timm model name after the colon")
        return name
    try:
        check_model_name(name)
    except ValueError as err:
        raise ValueError(f"teacher_model_name={name!r} is not a known teacher; expected 'ConvNeXt', "
                         f"'timm:<timm model name>' or a registered model ({err})") from None
    return name


def checkpoint_stem(resolved_name: str) -> str:
    """File name (without suffix) under which a checkpoint directory holds a teacher."""
    return resolved_name.replace(":", "-")


def build_teacher(resolved_name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """The teacher's architecture with random weights."""
    if resolved_name.startswith(TIMM_PREFIX):
        import timm

        timm_name = resolved_name[len(TIMM_PREFIX):]
        try:
            return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        except RuntimeError as err:
            raise ValueError(f"teacher_model_name={resolved_name!r}: timm does not know {timm_name!r} "
                             f"({err})") from None
    kwargs = dict(num_classes=num_classes, in_channels=in_channels)
    if model_family(resolved_name) == "vit":
        kwargs["image_size"] = image_size
    return create_model(resolved_name, **kwargs)


def load_teacher(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 checkpoint: str | os.PathLike | None = None,
                 checkpoint_dir: str | os.PathLike | None = None) -> nn.Module:
    """Build the named teacher and load its trained weights; frozen, in eval mode.

    Raises:
        MissingCheckpointError: no checkpoint file; the message lists the paths tried.
        CheckpointError: the file is unreadable or holds another architecture / class count.
    """
    resolved = resolve_teacher_name(name, image_size)
    expected = (f"teacher {resolved} with num_classes={num_classes}, in_channels={in_channels}"
                + (f", image_size={image_size}" if not resolved.startswith(TIMM_PREFIX)
                   and model_family(resolved) == "vit" else ""))
    hint = (f" To make one, train the teacher on your data (deit train --model {resolved} ...) or save a "
            f"trained model with deit.checkpoint.save_model(model, '{checkpoint_stem(resolved)}.safetensors').")
    teacher = build_teacher(resolved, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if checkpoint is None:
        path = find_checkpoint(checkpoint_stem(resolved), default_checkpoint_dir(checkpoint_dir),
                               what=expected, hint=hint)
    else:
        path = checkpoint
    load_pretrained(teacher, path, allow_head_reset=False, expected=expected, hint=hint)
    teacher.teacher_name = resolved
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def available_teachers() -> list[str]:
    """Names accepted by ``teacher_model_name`` (besides ``timm:<name>``)."""
    return ["ConvNeXt", *list_models()]
