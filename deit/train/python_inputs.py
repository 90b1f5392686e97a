"""What a Python caller gives a run in place of names: a teacher module, a student module and
torch Datasets (``deit.train.run.train(config, teacher=, student=, train_data=, val_data=)``).

Each is labelled in the config (``module:<label>``, ``python:<label>``: what ``config.yaml``
records), adopted with its inputs settled (a teacher's normalisation is declared or read, never
assumed: the input conversion of timm's ``DistillationTeacher``, ``timm/task/distillation.py``),
and recorded in each checkpoint (the teacher's weights digest, the data's size and fingerprint,
the student's class) so that a resume is given the same again.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deit.core.errors import ConfigError
from deit.data.datasets import dataset_fingerprint
from deit.data.torch_datasets import PYTHON_DATASET_PREFIX, TorchImageDataset
from deit.distill.cache import module_fingerprint
from deit.models.outputs import classifier_heads
from deit.models.teacher_output import TeacherInputNorm, format_statistics, same_statistics
from deit.train.settings import TrainConfig, apply_recipe
from deit.weights.layouts import model_identity

logger = logging.getLogger("deit")

MODULE_TEACHER_PREFIX = "module:"  # teacher_model of a run whose teacher was given as a module (train(teacher=))
MODULE_STUDENT_PREFIX = "module:"  # model of a run whose student was given as a module (train(student=))


def label_teacher_module(config: TrainConfig, teacher: nn.Module | None, teacher_inputs: str | None) -> TrainConfig:
    """``config`` whose ``teacher_model`` labels a teacher given as a module (``module:<class>``
    when unset; a registered name beside it is a second teacher, refused), with its recipe's
    distillation settings now that the run has a teacher."""
    if teacher is None:
        if teacher_inputs is not None:
            raise ConfigError("teacher_inputs= describes a teacher given as a module (teacher=)")
        return config
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"teacher={type(teacher).__name__} is invalid; expected an nn.Module returning logits")
    if config.teacher_model is None:
        given = config.settings_given
        config = dataclasses.replace(config, teacher_model=f"{MODULE_TEACHER_PREFIX}{type(teacher).__name__}")
        config.settings_given = None if given is None else given | {"teacher_model"}
        if config.recipe is not None and given is not None:  # the recipe's distillation keys, now it has a teacher
            recipe, unsettled = config.recipe, dataclasses.replace(config, recipe=None)
            unsettled.settings_given = config.settings_given
            config = apply_recipe(unsettled, recipe)
    elif not config.teacher_model.startswith(MODULE_TEACHER_PREFIX):
        raise ConfigError(f"two teachers: teacher_model={config.teacher_model!r} (--teacher-model) and the module "
                          "given as teacher=; give one")
    if config.teacher_checkpoint is not None or config.teacher_pretrained:
        raise ConfigError("a teacher given as a module carries its own weights: drop teacher_checkpoint / "
                          "teacher_pretrained (--teacher-checkpoint / --teacher-pretrained)")
    return config


def adopt_student_module(module: nn.Module, num_classes: int, data_config: dict[str, Any],
                         log: bool = True) -> nn.Module:
    """A student given as a module, trained in place, once it has answered a batch of the run's
    inputs, zeros (2, C, S, S), with ``(2, num_classes)`` logits from each of its heads
    (:func:`deit.models.outputs.classifier_heads`: two for a module with ``forward_heads``, the
    output of any other). A module carrying a teacher of its own (a DeiT built with one) is
    refused: the run's teacher is the one given to the run, whose digest it records."""
    name = type(module).__name__
    if hasattr(module, "set_teacher") and getattr(module, "teacher", None) is not None:
        raise ConfigError(f"the student {name} carries a teacher of its own: remove it (set_teacher(None)) and give "
                          "the teacher to the run (teacher=, or teacher_model)")
    parameter = next(module.parameters(), None)
    if parameter is None:
        raise ConfigError(f"the student {name} has no parameters to train")
    channels, side = data_config["in_channels"], data_config["image_size"]
    probe = torch.zeros(2, channels, side, side, device=parameter.device, dtype=parameter.dtype)  # (2, C, S, S)
    was_training = module.training
    try:
        with torch.no_grad():
            heads = classifier_heads(module.eval(), probe)
    except Exception as err:  # any error of the user's forward: the inputs it was given are the likely cause
        raise ConfigError(f"the student {name} fails on a batch of the run's inputs of shape {tuple(probe.shape)} "
                          f"({type(err).__name__}: {err}); set image_size / in_channels to what it takes") from None
    finally:
        module.train(was_training)
    shapes = [tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__ for h in heads if h is not None]
    if any(shape != (2, num_classes) for shape in shapes):
        raise ConfigError(f"the student {name} answers a batch of 2 images with {shapes[0]}; expected (2, "
                          f"{num_classes}) logits, one per class of the data")
    if log:
        logger.info("student %s given as a module: %s", name, "two heads, the distillation token's learns from the "
                    "teacher" if heads.distilled else "one head, which also learns from the teacher when there is one")
    return module


def label_python_inputs(config: TrainConfig, *, student: nn.Module | None, train_data: Dataset | None,
                        val_data: Dataset | None) -> TrainConfig:
    """``config`` with ``model`` labelling a student given as a module and ``dataset`` data sets
    given in Python (:func:`python_label`), and a module student's ``image_size`` /
    ``in_channels`` where the config leaves them unset."""
    if (train_data is None) != (val_data is None):
        raise ConfigError("train_data= and val_data= go together: give both torch Datasets, the training and the "
                          "validation split")
    if train_data is not None:
        config = python_label(config, "dataset", PYTHON_DATASET_PREFIX, train_data, "data set", "train_data")
    if student is None:
        return config
    if not isinstance(student, nn.Module):
        raise ConfigError(f"student={type(student).__name__} is invalid; expected an nn.Module returning logits")
    if config.finetune is not None:
        raise ConfigError("a student given as a module carries its own weights: drop finetune (--finetune), or load "
                          "them into the module first")
    config = python_label(config, "model", MODULE_STUDENT_PREFIX, student, "student", "student")
    inputs = {key: getattr(student, key) for key in ("image_size", "in_channels")
              if getattr(config, key) is None and isinstance(getattr(student, key, None), int)}
    return with_settings(config, **inputs) if inputs else config


def python_label(config: TrainConfig, key: str, prefix: str, given: Any, what: str, argument: str) -> TrainConfig:
    """``config`` whose ``key`` labels what was given in Python as ``argument``: kept when it is
    a label already (``<prefix><label>``), else ``<prefix><class name>`` in place of the
    default; any other value names a second source, which is refused."""
    value = getattr(config, key)
    if value.startswith(prefix):
        return config
    default = next(item.default for item in dataclasses.fields(TrainConfig) if item.name == key)
    if value != default or key in (config.settings_given or ()):
        raise ConfigError(f"two {what}s: {key}={value!r} (--{key}) and the one given as {argument}=; give one "
                          f"({key}='{prefix}<label>' labels the one given, in config.yaml)")
    return with_settings(config, **{key: f"{prefix}{type(given).__name__}"})


def with_settings(config: TrainConfig, **values: Any) -> TrainConfig:
    """``config`` with ``values``, counted among the settings given (a recipe leaves them)."""
    given = config.settings_given
    config = dataclasses.replace(config, **values)
    config.settings_given = None if given is None else given | set(values)
    return config


def wrap_python_data(train_data: Dataset, val_data: Dataset) -> tuple[TorchImageDataset, TorchImageDataset]:
    """The data sets given in Python as the run's training and validation splits; the
    validation labels must index the training set's classes."""
    train_set = TorchImageDataset(train_data, "train")
    return train_set, TorchImageDataset(val_data, "val", classes=train_set.classes)


@dataclass(frozen=True)
class PythonInputs:
    """What :func:`train` was given in Python besides its config: a teacher module and how it
    takes the student's batches, a student module, and the data sets, wrapped."""

    teacher: nn.Module | None = None
    teacher_inputs: str | None = None
    student: nn.Module | None = None
    train_set: TorchImageDataset | None = None
    val_set: TorchImageDataset | None = None


def adopt_teacher_module(module: nn.Module, config: TrainConfig, data_config: dict[str, Any], *,
                         inputs: str | None = None, log: bool = True) -> nn.Module:
    """A teacher given as a module, frozen, taking the student's batches. What it was trained
    on comes from, in order: the module itself when it is a
    :class:`~deit.models.teacher_output.TeacherInputNorm`; ``teacher_mean`` / ``teacher_std``
    (the student's batches are converted to them); ``inputs="student"`` (taken as they are);
    the module's ``pretrained_cfg`` mean/std (a timm model's, as timm's
    ``DistillationTeacher`` in ``timm/task/distillation.py`` reads them). Otherwise one line
    says what to give: a module fed another normalisation than it learned loses its accuracy
    without a word."""
    if inputs not in (None, "student"):
        raise ConfigError(f"teacher_inputs={inputs!r} is invalid; expected 'student' (the teacher takes the student's "
                          "batches as they are) or None")
    module.eval().requires_grad_(False)
    channels = data_config["in_channels"]
    student = dict(student_mean=data_config["mean"], student_std=data_config["std"])
    name = type(module).__name__
    if isinstance(module, TeacherInputNorm):
        return module
    if config.teacher_mean is not None:
        mean, std, source = config.teacher_mean, config.teacher_std, "teacher_mean/teacher_std"
    elif inputs == "student":
        if log:
            logger.info("teacher %s takes the student's batches as they are (teacher_inputs='student')", name)
        return module
    else:
        cfg = getattr(module, "pretrained_cfg", None) or {}
        mean, std, source = cfg.get("mean"), cfg.get("std"), f"{name}.pretrained_cfg"
        if not (mean and std and len(mean) == len(std) == channels):
            raise ConfigError(
                f"which inputs does the teacher {name} take? Give its normalisation (teacher_mean=, teacher_std=; "
                f"--teacher-mean/--teacher-std), or teacher_inputs='student' if it was trained on batches normalised "
                f"as the student's (mean {format_statistics(data_config['mean'])} std "
                f"{format_statistics(data_config['std'])}), or pass it wrapped in deit.TeacherInputNorm")
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) == len(data_config["mean"]) and same_statistics(data_config["mean"], data_config["std"], mean, std):
        return module
    if log:
        logger.info("teacher %s normalisation mean %s std %s (%s) differs from the student's mean %s std %s: inputs "
                    "re-normalised for the teacher", name, format_statistics(mean), format_statistics(std), source,
                    format_statistics(data_config["mean"]), format_statistics(data_config["std"]))
    return TeacherInputNorm(module, teacher_mean=mean, teacher_std=std, **student).eval().requires_grad_(False)


def inputs_record(config: TrainConfig, train_loader, teacher: nn.Module | None) -> dict[str, Any]:
    """What a run trains on, beyond its settings: the teacher's weights digest (a teacher given
    as a module is recorded by it alone) and the training images' count and fingerprint (as the
    teacher cache records them, :mod:`deit.distill.cache`). Kept in each checkpoint; a resume
    must be given the same (:func:`check_same_inputs`)."""
    data = train_loader.dataset.dataset  # under deit.data.replay.ReplayDataset
    try:
        fingerprint = dataset_fingerprint(data)
    except ConfigError:  # a data set of a kind without a fingerprint: its length is checked
        fingerprint = None
    return {"teacher_model": config.teacher_model if teacher is not None else None,
            "teacher_weights_sha256": module_fingerprint(teacher) if teacher is not None else None,
            "dataset_size": len(data), "dataset_fingerprint": fingerprint}


def check_same_inputs(saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """A resumed run trains on the teacher and data it started with; checkpoints written before
    runs recorded them are resumed unchecked. The data are compared first: their statistics
    enter the digest of a teacher whose inputs are re-normalised, so other data would also
    show as another teacher."""
    if not saved:
        return
    for key, what in (("dataset_size", "images"), ("dataset_fingerprint", "fingerprint")):
        if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]:
            raise ConfigError(f"cannot resume: the training data are not those this run trained on ({what}: "
                              f"{current[key]} now, {saved[key]} recorded); give the same --dataset / data set "
                              "(in Python, the same train_data=)")
    if saved.get("teacher_weights_sha256") != current.get("teacher_weights_sha256"):
        was, now = saved.get("teacher_weights_sha256"), current.get("teacher_weights_sha256")
        raise ConfigError(
            f"cannot resume: the teacher is not the one this run trained with (weights digest "
            f"{(now or 'no teacher')[:12]}, recorded {(was or 'no teacher')[:12]} for {saved.get('teacher_model')}); "
            "give the same teacher: the same --teacher-model and --teacher-checkpoint, or in Python the same module "
            "as train(config, teacher=...)")


def check_python_inputs_given(saved_config: dict[str, Any], given: PythonInputs) -> None:
    """A run whose data or student were given in Python resumes only when given them again."""
    dataset, model = str(saved_config.get("dataset", "")), str(saved_config.get("model", ""))
    if dataset.startswith(PYTHON_DATASET_PREFIX) and given.train_set is None:
        raise ConfigError(f"cannot resume: this run trained on torch Datasets given in Python ({dataset}); give them "
                          "again, train(config, train_data=..., val_data=...)")
    if model.startswith(MODULE_STUDENT_PREFIX) and given.student is None:
        raise ConfigError(f"cannot resume: this run's student was a module given in Python ({model}); give it again, "
                          "train(config, student=module)")


def module_class(module: nn.Module) -> str:
    """The qualified class name of ``module``, as a checkpoint records a student given as a module."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def student_identity(model: nn.Module, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint says of its student: a registered model's name and constructor config,
    from which :func:`deit.weights.factory.build_from_checkpoint` rebuilds it; for a module given in
    Python its class alone (``student_module``), from which nothing can."""
    if not config.model.startswith(MODULE_STUDENT_PREFIX):
        return model_identity(model)
    return {"model_name": None, "model_config": {}, "student_module": module_class(model)}


def check_same_student(saved: dict[str, Any], model: nn.Module) -> None:
    """A run whose student was a module resumes with a module of the same class and the same
    state-dict entries (names and shapes) as its checkpoint holds."""
    was, now = saved.get("student_module"), module_class(model)
    mine, theirs = model.state_dict(), saved["model"]
    differ = sorted(set(mine) ^ set(theirs)) or [key for key in mine if mine[key].shape != theirs[key].shape]
    if was != now:
        detail = f"a {now}, the run trained a {was}"
    elif differ:
        detail = f"its state dict differs from the checkpoint's in {len(differ)} entries, e.g. {differ[0]!r}"
    else:
        return
    raise ConfigError(f"cannot resume: the student is not the module this run trained ({detail}); give the same "
                      "module again, train(config, student=...)")
