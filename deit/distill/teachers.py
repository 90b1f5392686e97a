"""Teacher resolution and loading for distillation (Touvron et al. 2021, §4).

A teacher is named by:

* ``"ConvNeXt"`` (any case) — the library's default convnet teacher: ``convnext_atto``
  for images of 64 px and more, ``convnext_atto_32`` (stride-2 stem) below that, so that
  the default works on both ImageNet-sized and 28–32 px data. The paper's teacher is a
  RegNetY-16GF; a small ConvNeXt is the CPU-friendly convnet stand-in;
* any registered model of this library (``deit.list_models()``), including the
  small-image ResNets (``resnet20_32`` …: BatchNorm convnets, as the paper's RegNetY
  teachers) and DeiTs for the paper's transformer-teacher comparison (Table 2);
* ``"timm:<name>"`` for any timm architecture, with weights from a timm-format file
  (``torch.save(model.state_dict(), …)``).

Weights always come from a checkpoint file.

The teacher's input. Given the statistics of the student's data (``input_mean`` /
``input_std``), :func:`load_teacher` returns a teacher that takes the student's normalised
batches: when the teacher was trained with other statistics (or channels) it is wrapped in
:class:`~deit.models.teacher_output.TeacherInputNorm`, which converts each batch on the
fly as timm's distillation task does (``timm/task/distillation.py``
``DistillationTeacher.normalize_input``). The teacher's statistics come from, in order:

1. ``teacher_mean`` / ``teacher_std`` (``--teacher-mean`` / ``--teacher-std``);
2. the ``data_config`` recorded in the teacher's checkpoint (files written by ``deit train``);
3. the pretrained configuration of a registered variant with published weights
   (:mod:`deit.models.pretrained`), or timm's ``pretrained_cfg`` for ``timm:<name>`` (the
   values timm's ``DistillationTeacher`` uses) — when it describes as many channels as the
   teacher has;
4. otherwise the student's own: the teacher is assumed to share the student's pipeline.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import per_channel
from deit.distill.sources import foreign_source, load_foreign_teacher
from deit.models.pretrained import stats_for_channels
from deit.models.registry import build_model, check_model_name, get_pretrained_cfg, model_family
from deit.models.teacher_output import TeacherInputNorm, format_statistics, same_statistics
from deit.weights.hub import default_checkpoint_dir
from deit.weights.layouts import (
    CheckpointError,
    MissingCheckpointError,
    extract_state_dict,
    find_checkpoint,
    load_checkpoint_object,
    read_checkpoint,
)

logger = logging.getLogger("deit")

DEFAULT_CONVNEXT = "convnext_atto"
DEFAULT_CONVNEXT_SMALL_IMAGES = "convnext_atto_32"
SMALL_IMAGE_THRESHOLD = 64
TIMM_PREFIX = "timm:"
STATS_FLAGS = "--teacher-mean/--teacher-std"


def resolve_teacher_name(name: str, image_size: int) -> str:
    """Map a user-facing teacher name to a registered name or ``timm:<name>``; a foreign
    teacher (:func:`deit.distill.sources.foreign_source`) is kept as it is."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"teacher_model_name={name!r} is invalid; expected a model name")
    if foreign_source(name) is not None:
        return name
    if name.lower() == "convnext":
        return DEFAULT_CONVNEXT_SMALL_IMAGES if image_size < SMALL_IMAGE_THRESHOLD else DEFAULT_CONVNEXT
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        if not timm_name:
            raise ConfigError("teacher_model_name='timm:' needs a timm model name after the colon")
        import difflib

        import timm

        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
            raise ConfigError(f"teacher_model_name={name!r}: timm has no architecture {timm_name!r}"
                              + (f" (close: {', '.join(close)})" if close else "")
                              + "; see timm.list_models() (--teacher-model timm:<name>)")
        return name
    try:
        check_model_name(name)
    except ValueError as err:
        raise ConfigError(f"teacher_model_name={name!r} is not a known teacher; expected 'ConvNeXt', "
                          f"'timm:<timm model name>', a registered model, 'torchvision:<name>', an HF "
                          f"save_pretrained folder, 'path/to/file.py:factory' or a .onnx file ({err})") from None
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
            raise ConfigError(f"teacher_model_name={resolved_name!r}: timm does not know {timm_name!r} "
                              f"({err})") from None
    kwargs = dict(num_classes=num_classes, in_channels=in_channels)
    if model_family(resolved_name) == "vit":
        kwargs["image_size"] = image_size
    return build_model(resolved_name, **kwargs)


def make_teacher_hint(resolved: str) -> str:
    """How to obtain a teacher's weights, as commands that work."""
    stem = checkpoint_stem(resolved)
    if resolved.startswith(TIMM_PREFIX):
        timm_name = resolved[len(TIMM_PREFIX):]
        return (f" A timm teacher needs its trained weights in timm's format: train {timm_name} with timm on "
                f"your data, save them with torch.save(model.state_dict(), '{stem}.pth') and pass "
                f"--teacher-checkpoint {stem}.pth (Python: teacher_checkpoint='{stem}.pth').")
    cfg = _registered_cfg(resolved)
    published = (f" {resolved} has published ImageNet weights: --teacher-pretrained loads them."
                 if cfg is not None and cfg.has_weights else "")
    return (f" To make one, train the teacher on your data: deit train --model {resolved} --dataset DATA "
            f"--output runs/teacher, then pass --teacher-checkpoint runs/teacher/best.pth (Python: "
            f"teacher_checkpoint=...), or save a trained model with "
            f"deit.weights.layouts.save_model(model, '{stem}.safetensors').{published}")


def _teacher_checkpoint_path(resolved: str, expected: str, hint: str, checkpoint: str | os.PathLike | None,
                             checkpoint_dir: str | os.PathLike | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    directory = default_checkpoint_dir(checkpoint_dir)
    stem = checkpoint_stem(resolved)
    if directory is None:
        raise MissingCheckpointError(
            f"no checkpoint for {expected}: pass its weights file with --teacher-checkpoint FILE (Python: "
            f"teacher_checkpoint=), or set DEIT_CHECKPOINT_DIR (Python: checkpoint_dir=) to a folder holding "
            f"{stem}.safetensors or {stem}.pth.{hint}")
    return find_checkpoint(stem, directory, what=expected, hint=hint)


@dataclass(frozen=True)
class TeacherInput:
    """The input a teacher expects: its channels and, when known, its normalisation."""

    in_channels: int
    mean: tuple[float, ...] | None = None  # None: unknown, the student's are assumed
    std: tuple[float, ...] | None = None
    source: str = "the student's data"


def _first_conv_channels(state_dict: Mapping[str, torch.Tensor], first_conv: str | None) -> int | None:
    """Input channels of a state dict: its first convolution's (O, C, kH, kW) weight."""
    weight = state_dict.get(f"{first_conv}.weight") if first_conv else None
    if weight is None:
        weight = next((v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 4), None)
    return int(weight.shape[1]) if weight is not None else None


def _published_statistics(resolved: str) -> tuple[tuple[float, ...], tuple[float, ...], str, int] | None:
    """``(mean, std, source, channels)`` of a variant's published weights, when it has any."""
    if resolved.startswith(TIMM_PREFIX):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(resolved[len(TIMM_PREFIX):])
        if cfg is None or not cfg.mean or not cfg.std:
            return None
        return tuple(cfg.mean), tuple(cfg.std), f"timm's pretrained_cfg of {resolved}", len(cfg.mean)
    cfg = _registered_cfg(resolved)
    if cfg is None or not cfg.has_weights:  # the small-image variants: no published statistics
        return None
    return tuple(cfg.mean), tuple(cfg.std), f"the pretrained configuration of {resolved}", cfg.input_size[0]


def _registered_cfg(name: str):
    """The registered variant's pretrained configuration, or ``None`` for a name registered
    without one (``register_model`` without ``pretrained_cfg=``)."""
    try:
        return get_pretrained_cfg(name)
    except ValueError:
        return None


def _per_channel(values: Sequence[float], channels: int, what: str) -> tuple[float, ...]:
    return per_channel(values, channels, name=what, message=(
        f"{what}={list(values)} has {len(values)} values but the teacher has {channels} input channel(s); give "
        f"one value per channel or a single value for all ({STATS_FLAGS})"))


def resolve_teacher_input(resolved: str, *, student_channels: int, data_config: Mapping[str, Any] | None,
                          state_dict: Mapping[str, torch.Tensor], mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None) -> TeacherInput:
    """The teacher's channels and statistics (see the module docstring for the order).

    ``data_config`` is what the teacher's file records of its preprocessing (or None),
    ``state_dict`` its weights (the first convolution gives the channels).
    """
    if (mean is None) != (std is None):
        raise ConfigError(f"teacher_mean={mean!r} and teacher_std={std!r}: give both or neither ({STATS_FLAGS})")
    data_config = data_config or {}
    first_conv = None
    if resolved.startswith(TIMM_PREFIX):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(resolved[len(TIMM_PREFIX):])
        first_conv = getattr(cfg, "first_conv", None) if cfg is not None else None
    channels = int(data_config.get("in_channels") or _first_conv_channels(state_dict, first_conv)
                   or student_channels)
    if mean is not None:
        return TeacherInput(channels, _per_channel(mean, channels, "teacher_mean"),
                            _per_channel(std, channels, "teacher_std"), STATS_FLAGS)
    if data_config.get("mean") and data_config.get("std"):
        return TeacherInput(channels, _per_channel(data_config["mean"], channels, "the checkpoint's mean"),
                            _per_channel(data_config["std"], channels, "the checkpoint's std"),
                            "the teacher checkpoint's data_config")
    published = _published_statistics(resolved)
    if published is not None and published[3] == channels:
        return TeacherInput(channels, published[0], published[1], published[2])
    return TeacherInput(channels)


def load_teacher(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 checkpoint: str | os.PathLike | None = None,
                 checkpoint_dir: str | os.PathLike | None = None,
                 input_mean: Sequence[float] | None = None, input_std: Sequence[float] | None = None,
                 teacher_mean: Sequence[float] | None = None,
                 teacher_std: Sequence[float] | None = None) -> nn.Module:
    """Build the named teacher and load its trained weights; frozen, in eval mode.

    Args:
        in_channels: channels of the student's inputs.
        input_mean, input_std: normalisation of the student's inputs. When given, the
            returned module takes the student's normalised batches and feeds the teacher its
            own normalisation and channels (see the module docstring); when omitted, the
            teacher receives the inputs as they are and is built with ``in_channels``.
        teacher_mean, teacher_std: the teacher's own normalisation, overriding what its
            checkpoint or pretrained configuration says.

    Raises:
        MissingCheckpointError: no checkpoint file; the message lists the paths tried.
        CheckpointError: the file is unreadable or holds another architecture / class count.
    """
    resolved = resolve_teacher_name(name, image_size)
    if foreign_source(resolved) is not None:
        return load_foreign(resolved, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                            checkpoint=checkpoint, input_mean=input_mean, input_std=input_std,
                            teacher_mean=teacher_mean, teacher_std=teacher_std)
    hint = make_teacher_hint(resolved)
    teacher_size = image_size  # the side it was trained at: its checkpoint's data_config says, when it has one

    def expected(channels: int) -> str:
        size = (f", image_size={teacher_size}" if not resolved.startswith(TIMM_PREFIX)
                and model_family(resolved) == "vit" else "")
        return f"teacher {resolved} with num_classes={num_classes}, in_channels={channels}{size}"

    path = _teacher_checkpoint_path(resolved, expected(in_channels), hint, checkpoint, checkpoint_dir)
    try:
        obj, metadata = read_checkpoint(path)
    except CheckpointError as err:
        raise type(err)(f"{err} (needed for {expected(in_channels)}).{hint}") from None
    renormalise = input_mean is not None and input_std is not None
    if not renormalise and (teacher_mean is not None or teacher_std is not None):
        raise ConfigError("teacher_mean/teacher_std convert the student's inputs for the teacher: they need the "
                          "student's statistics too (input_mean=, input_std=)")
    state_dict, info = extract_state_dict(obj, metadata, source=str(path))
    data_config = info.get("data_config") or (obj.get("data_config") if isinstance(obj, Mapping) else None)
    data_config = data_config if isinstance(data_config, Mapping) else None  # deit train checkpoints hold one
    teacher_size = int(data_config.get("image_size") or image_size) if data_config else image_size
    spec = TeacherInput(in_channels)
    if renormalise:
        spec = resolve_teacher_input(resolved, student_channels=in_channels, data_config=data_config,
                                     state_dict=state_dict, mean=teacher_mean, std=teacher_std)
    channels = spec.in_channels
    teacher = build_teacher(resolved, num_classes=num_classes, in_channels=channels, image_size=teacher_size)
    load_checkpoint_object(teacher, obj, metadata, path, allow_head_reset=False, expected=expected(channels),
                           hint=hint)
    teacher.teacher_name = resolved
    teacher.eval()
    teacher.requires_grad_(False)
    resize = teacher_size if teacher_size != image_size else None
    if resize is not None:
        logger.info("the teacher %s was trained on %d px images (%s records it); the student's %d px batches are "
                    "resized to %d px for it", resolved, teacher_size, path, image_size, teacher_size)
    if not renormalise:
        return teacher if resize is None else \
            TeacherInputNorm.as_is(teacher, in_channels, input_size=resize).eval().requires_grad_(False)
    student_mean = _per_channel(input_mean, in_channels, "the student's mean")
    student_std = _per_channel(input_std, in_channels, "the student's std")
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    else:  # unknown: the student's pipeline, carried over to the teacher's channels
        mean, std = stats_for_channels(student_mean, channels), stats_for_channels(student_std, channels)
    if channels == in_channels and same_statistics(student_mean, student_std, mean, std):
        if resize is None:
            return teacher
    else:
        fmt = format_statistics
        logger.info("teacher normalisation mean %s std %s (%s, %d channel(s)) differs from the student's mean %s "
                    "std %s (%d channel(s)): inputs re-normalised for the teacher", fmt(mean), fmt(std), spec.source,
                    channels, fmt(student_mean), fmt(student_std), in_channels)
    wrapped = TeacherInputNorm(teacher, student_mean=student_mean, student_std=student_std, teacher_mean=mean,
                               teacher_std=std, input_size=resize)
    return wrapped.eval().requires_grad_(False)


def load_foreign(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 checkpoint: str | os.PathLike | None = None, input_mean: Sequence[float] | None = None,
                 input_std: Sequence[float] | None = None, teacher_mean: Sequence[float] | None = None,
                 teacher_std: Sequence[float] | None = None) -> nn.Module:
    """A teacher from a foreign source (:mod:`deit.distill.sources`: torchvision, an HF folder,
    ``file.py:factory``, ONNX), taking the student's batches: converted to the teacher's
    statistics (``teacher_mean`` / ``teacher_std``, else what the source records) and resized
    to the side it records, as :func:`load_teacher` does for this library's files. A source
    that records no statistics, with none given, stops with one line asking for them."""
    foreign = load_foreign_teacher(name, checkpoint=checkpoint, num_classes=num_classes)
    if foreign.num_classes is not None and foreign.num_classes != num_classes:
        raise ConfigError(f"the teacher {foreign.description} predicts {foreign.num_classes} classes but the data have "
                          f"{num_classes}: distil from a teacher trained on the same classes (--teacher-model)")
    teacher = foreign.module
    teacher.teacher_name = name
    resize = foreign.input_size if foreign.input_size not in (None, image_size) else None
    if resize is not None:
        logger.info("the teacher %s expects %d px images; the student's %d px batches are resized for it",
                    foreign.description, resize, image_size)
    if input_mean is None or input_std is None:  # the seed API's loader: the student's batches as they are
        if teacher_mean is not None or teacher_std is not None:
            raise ConfigError("teacher_mean/teacher_std convert the student's inputs for the teacher: they need the "
                              "student's statistics too (input_mean=, input_std=)")
        return teacher if resize is None else \
            TeacherInputNorm.as_is(teacher, in_channels, input_size=resize).eval().requires_grad_(False)
    student_mean = _per_channel(input_mean, in_channels, "the student's mean")
    student_std = _per_channel(input_std, in_channels, "the student's std")
    channels = foreign.in_channels
    if teacher_mean is not None:
        mean, std, source = _per_channel(teacher_mean, channels, "teacher_mean"), \
            _per_channel(teacher_std, channels, "teacher_std"), STATS_FLAGS
    elif foreign.mean is not None and foreign.std is not None:
        mean, std, source = foreign.mean, foreign.std, foreign.description
    else:
        fmt = format_statistics
        raise ConfigError(f"the teacher {foreign.description} does not record the normalisation it was trained with: "
                          f"give it with {STATS_FLAGS} (the student's data use mean {fmt(student_mean)} std "
                          f"{fmt(student_std)}; give those if the teacher was trained on them)")
    if channels == in_channels and same_statistics(student_mean, student_std, mean, std) and resize is None:
        return teacher
    fmt = format_statistics
    logger.info("teacher normalisation mean %s std %s (%s, %d channel(s)), student's mean %s std %s (%d channel(s)): "
                "inputs converted for the teacher", fmt(mean), fmt(std), source, channels, fmt(student_mean),
                fmt(student_std), in_channels)
    wrapped = TeacherInputNorm(teacher, student_mean=student_mean, student_std=student_std, teacher_mean=mean,
                               teacher_std=std, input_size=resize)
    return wrapped.eval().requires_grad_(False)
