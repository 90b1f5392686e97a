"""A whole training run: data, model, teacher, recipe, epochs, checkpoints, logs.

``train(config)`` is what ``deit train`` runs, in one process or under torchrun. The run
directory (``config.output``) receives ``config.yaml`` (resolved settings), ``last.pth``
and ``best.pth`` (atomic, weights-only loadable), ``metrics.csv``, TensorBoard events,
``curves.png`` and ``summary.json``.

The steps, in order: :func:`load_train_set` and :func:`settle_recipe` (a run that names
no recipe gets the one its data call for), :func:`setup` (data, model, teacher, recipe,
then :func:`plan_run`: the length, by epochs or a budget, and the schedule),
:func:`resume` (from ``last.pth``), :func:`open_records`, then per epoch :func:`run_epoch`
(train, evaluate) and :func:`save_epoch` (log row, checkpoints), and :func:`finish`
(curves, summary); a :class:`Run` carries the state between them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from deit.core.errors import ConfigError
from deit.core.fileio import write_text_atomic
from deit.data import build_loader, build_transform, dataset_mean_std, load_dataset, stats_for_channels
from deit.data.datasets import (
    FolderDataset,
    dataset_fingerprint,
    dataset_record,
    stratified_indices,
    typical_image_side,
)
from deit.data.loader import collate_readable
from deit.data.replay import ReplayMixup
from deit.distill.cache import TeacherCache, device_kind, module_fingerprint
from deit.distill.losses import PAPER_TAU, DistillationLoss, build_base_criterion
from deit.distill.memo import TeacherMemo, views_repeat
from deit.distill.teachers import TIMM_PREFIX, load_teacher, resolve_teacher_name
from deit.models.registry import get_pretrained_cfg, model_family
from deit.train import distributed
from deit.train.budget import (
    Rate,
    SchedulePlan,
    budget_from_minutes,
    clamp_warmup_epochs,
    evaluation_due,
    measure_training_rate,
    plan_schedule,
)
from deit.train.engine import Amp, epoch_steps, evaluate, train_one_epoch
from deit.train.optim import build_optimizer, build_scheduler
from deit.train.python_inputs import (
    MODULE_STUDENT_PREFIX,
    MODULE_TEACHER_PREFIX,
    PythonInputs,
    adopt_student_module,
    adopt_teacher_module,
    check_python_inputs_given,
    check_same_inputs,
    check_same_student,
    inputs_record,
    label_python_inputs,
    label_teacher_module,
    student_identity,
    wrap_python_data,
)
from deit.train.run_log import RunLog
from deit.train.settings import PAPER_RECIPE, TrainConfig, apply_recipe, recipe_for_data, recipe_names
from deit.weights.factory import create_model
from deit.weights.hub import resolve_pretrained_file, resolve_weights_argument
from deit.weights.layouts import (
    capture_rng_state,
    load_pretrained,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)

logger = logging.getLogger("deit")

LOOP_SEED_OFFSET = 1_000_003

# Settings that define the model: a resumed run must not change them.
MODEL_DEFINING = ("model", "num_classes", "image_size", "in_channels", "dataset", "teacher_model",
                  "distillation_type", "drop_path")


@dataclass
class TrainResult:
    output: Path
    final: dict[str, Any] = field(default_factory=dict)
    best_acc1: float = float("nan")
    epochs_run: int = 0
    wall_time_s: float = 0.0
    train_images_per_s: float = float("nan")


def resolve_device(name: str, env: distributed.DistEnv) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{env.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was asked for but CUDA is not available on this machine; "
                          "use --device cpu or --device auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_output_dir(output: Path, resume: bool) -> None:
    """The run directory must be writable, and a new run must not overwrite an old one."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output directory {output} is not writable ({err.strerror or err}); choose another "
                          "--output") from None
    if not resume and (output / "last.pth").exists():
        raise ConfigError(f"{output} already holds a run (last.pth); pass --resume to continue it or choose "
                          "another --output (nothing was overwritten)")
    if resume and not (output / "last.pth").exists():
        raise ConfigError(f"--resume: no checkpoint to resume in {output} (expected {output / 'last.pth'})")
    for stale in output.glob(".*.tmp"):  # a write interrupted by a crash; the file it was replacing is intact
        logger.info("removing %s, left by an interrupted write", stale)
        stale.unlink(missing_ok=True)


def first_missing_folder(output: Path) -> Path | None:
    """The top-most folder of ``output`` (itself or a parent) that does not exist yet: what
    creating the run directory will create. ``None`` if ``output`` exists."""
    return next((folder for folder in reversed((output, *output.parents)) if not folder.exists()), None)


RUN_FILES = ("config.yaml", "metrics.csv", "curves.png", "summary.json")
"""Files a run writes before or beside its checkpoints (TensorBoard events go to ``tensorboard/``)."""


def remove_unfinished_run(output: Path, created: Path) -> None:
    """After a run that failed before its first checkpoint: remove the files it wrote and
    the folders it created (``output`` up to ``created``), so no empty run directory is left.

    Only this run's own files are deleted, and a folder only when it is then empty
    (``rmdir``): anything else found there (a user's file, a checkpoint) keeps it.
    """
    if not output.is_dir() or (output / "last.pth").exists():
        return
    try:
        for name in RUN_FILES:
            (output / name).unlink(missing_ok=True)
        for path in (output / "tensorboard").glob("events.out.tfevents.*"):
            path.unlink(missing_ok=True)
    except OSError as err:  # the run's own error is the one to report
        logger.info("could not clean up %s (%s)", output, err)
        return
    folders = [output / "tensorboard", output, *output.parents]
    for folder in folders[: folders.index(created) + 1]:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: something else lives there
            logger.info("kept %s: it holds files this run did not write", folder)
            return


def resolve_warmup_epochs(config: TrainConfig, log: bool = True, epochs: int | None = None) -> float:
    """``warmup_epochs``, clamped to ``epochs - 1`` so the cosine decay keeps the last epoch
    (:func:`deit.train.budget.clamp_warmup_epochs`); a clamp is logged. ``epochs``: the run's, when
    a budget sets them (default ``config.epochs``)."""
    run_epochs = config.epochs if epochs is None else epochs
    warmup = clamp_warmup_epochs(config.warmup_epochs, run_epochs)
    if warmup != config.warmup_epochs and log:
        length = f"--epochs {run_epochs}" if epochs is None else f"the run's {run_epochs} epoch(s)"
        logger.warning("--warmup-epochs %g (warmup_epochs) is not shorter than %s: warming up for %g "
                       "epoch(s) instead, so the cosine decay keeps the last one", config.warmup_epochs, length,
                       warmup)
    return warmup


def check_resume_compatible(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    # None means "derive from the data", which the saved (resolved) config already did
    changed = [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in MODEL_DEFINING
               if k in saved and current.get(k) is not None and saved.get(k) != current.get(k)]
    if changed:
        raise ConfigError("cannot resume with a changed model configuration (" + "; ".join(changed) +
                          "); start a new run with another --output instead")


def load_train_set(config: TrainConfig):
    """The training split, decoded once: :func:`settle_recipe` looks at it, :func:`build_data`
    gives it its transform."""
    return load_dataset(config.dataset, "train", config.data_dir, bad_images=config.bad_images)


def settle_recipe(config: TrainConfig, train_set, saved_config: dict[str, Any] | None = None,
                  log: bool = True) -> TrainConfig:
    """``config`` with its recipe chosen, if it names none (no --recipe, no ``recipe:`` in its
    --config file): the recipe recorded by the run being resumed (``None`` there: a run from
    before runs recorded it, which had the paper's), else the one the training set calls for
    (:func:`deit.train.settings.recipe_for_data`), applied under the settings given
    (:func:`deit.train.settings.apply_recipe`). Done once, before the config is resolved and saved;
    one line says which recipe and why. A config built directly in Python, with no record
    of the settings given, keeps its values: the defaults, the paper's recipe."""
    if config.recipe is not None:
        return config
    if config.settings_given is None:
        name, reason = PAPER_RECIPE, "a TrainConfig built directly keeps its defaults (load_config chooses by the data)"
    elif saved_config is not None:
        name = saved_config.get("recipe") or PAPER_RECIPE
        reason = "recorded by the run being resumed" if saved_config.get("recipe") else \
            "the run being resumed recorded none (recipe: null), so the paper's, as it trained with"
    else:
        images = len(train_set) if config.train_subset is None else min(config.train_subset, len(train_set))
        name, reason = recipe_for_data(config.dataset, images, typical_image_side(train_set),
                                       finetune=config.finetune is not None)
    if log:
        others = " or ".join(f"--recipe {n}" + (" (or none: the paper's ImageNet recipe, Table 9)"
                                                if n == PAPER_RECIPE else "")
                             for n in recipe_names() if n != name)
        logger.info("no --recipe given: recipe %s, chosen because %s; choose another with %s (config.yaml records "
                    "the choice)", name, reason, others)
    return apply_recipe(config, name)


def settle_views(config: TrainConfig, train_set, env: distributed.DistEnv,
                 saved_config: dict[str, Any] | None = None, log: bool = True) -> TrainConfig:
    """``config`` with the crop range its schedule calls for: ``crops_scale`` replaces ``scale``
    when the run's planned epochs reach ``crops_from_epochs`` (a small folder under a budget of
    images gets many epochs, where whole images overfit and crops pay; ``benchmarks/student_search.md``
    stages ``distill`` and ``views``), unless ``scale`` was given. Decided once, before the run;
    a resumed run keeps the range it trained with. A ``--budget-minutes`` run knows its epochs
    only after measuring its rate, so it keeps ``scale``."""
    if config.crops_from_epochs is None or "scale" in (config.settings_given or ()):
        return config
    if saved_config is not None:
        settled = dataclasses.replace(config, scale=tuple(saved_config.get("scale", config.scale)))
    elif config.budget_minutes is not None:
        if log:
            logger.info("crops_from_epochs %d: a --budget-minutes run's epochs are known only once its rate is "
                        "measured, so it trains on --scale %s", config.crops_from_epochs, list(config.scale))
        return config
    else:
        images = len(train_set) if config.train_subset is None else min(config.train_subset, len(train_set))
        plan = plan_schedule(images * config.repeated_aug, config.batch_size * config.accum_steps * env.world_size,
                             budget_images=config.budget_images, epochs=config.epochs)
        if plan.epochs < config.crops_from_epochs:
            return config
        if log:
            logger.info("%d epochs of %d images (>= crops_from_epochs %d): training on random-resized crops of "
                        "--crops-scale %s instead of --scale %s", plan.epochs, images, config.crops_from_epochs,
                        list(config.crops_scale), list(config.scale))
        settled = dataclasses.replace(config, scale=tuple(config.crops_scale))
    settled.settings_given = config.settings_given
    return settled


KEEP_DECODED_BYTES = 1 << 30
"""Decoded pixels an image folder's split keeps in memory (``keep_decoded``): 1 GiB, all of a
60,000-image 64 px RGB folder, ~7,000 photos at 224 px."""


def build_data(config: TrainConfig, env: distributed.DistEnv, train_set=None, val_set=None):
    """Datasets, loaders and the data settings that a checkpoint records for prediction.
    ``train_set``: the training split already loaded (:func:`load_train_set`); ``val_set``: the
    validation split, when given in Python (else loaded here)."""
    if train_set is None:
        train_set = load_train_set(config)  # decoded once; transform set below
    channels = config.in_channels or train_set.channels
    image_size = config.image_size or train_set.native_size
    if image_size is None and config.model.startswith(MODULE_STUDENT_PREFIX):
        raise ConfigError(f"the images of {config.dataset} vary in size and the student {config.model} records no "
                          "image_size: set image_size (--image-size), the side it takes")
    if image_size is None:  # ImageFolder: the size the variant is made for (timm's pretrained_cfg input_size)
        image_size = variant_input_size(config.model)
    mean, std = dataset_mean_std(config.dataset, train_set)
    mean, std = stats_for_channels(mean, channels), stats_for_channels(std, channels)
    hflip = config.hflip if config.hflip is not None else (0.5 if getattr(train_set, "hflip_ok", True) else 0.0)
    common = dict(image_size=image_size, in_channels=channels, mean=mean, std=std)
    train_tf = build_transform(is_train=True, auto_augment=config.auto_augment, color_jitter=config.color_jitter,
                               reprob=config.reprob, hflip=hflip, scale=tuple(config.scale), **common)
    eval_tf = build_transform(is_train=False, **common)
    train_set.transform = train_tf
    if val_set is None:
        # a skipped file gives no sample (fill_skipped=False, collate_readable): each readable file counts once
        val_set = load_dataset(config.dataset, "val", config.data_dir, bad_images=config.bad_images,
                               fill_skipped=False)
    val_set.transform = eval_tf
    if config.keep_decoded:
        for split in (train_set, val_set):
            if isinstance(split, FolderDataset):
                split.keep_decoded(KEEP_DECODED_BYTES)  # a small folder is decoded once, not every epoch
    classes = list(train_set.classes)
    if config.train_subset is not None and config.train_subset < len(train_set):
        # class proportions kept, a seeded choice inside each class: image folders list files class by class
        train_set = torch.utils.data.Subset(train_set, stratified_indices(train_set.targets, config.train_subset,
                                                                          seed=config.seed))
    if config.val_subset is not None and config.val_subset < len(val_set):
        step = len(val_set) // config.val_subset  # spread over the set: validation files are often sorted by class
        val_set = torch.utils.data.Subset(val_set, range(0, step * config.val_subset, step))
    # pinned host memory lets the engine's non_blocking copies overlap with GPU compute
    pin = config.device != "cpu" and torch.cuda.is_available()
    loader_args = dict(num_workers=config.num_workers, world_size=env.world_size, rank=env.rank, seed=config.seed,
                       pin_memory=pin)
    train_loader = build_loader(train_set, batch_size=config.batch_size, is_train=True,
                                repeated_aug=config.repeated_aug, replay=True, **loader_args)
    val_loader = build_loader(val_set, batch_size=max(config.batch_size, 128), is_train=False,
                              collate_fn=collate_readable, **loader_args)
    if len(train_loader) < config.accum_steps:
        raise ConfigError(f"the training set gives {len(train_loader)} batch(es) of {config.batch_size} per process, "
                          f"fewer than accum_steps={config.accum_steps}: lower --batch-size or --accum-steps")
    data_config = {**dataset_record(config.dataset), "image_size": image_size, "in_channels": channels,
                   "mean": list(mean), "std": list(std), "num_classes": len(classes),
                   "crop_pct": 1.0, "interpolation": "bicubic", "crop_mode": "center"}  # eval_tf's (build_transform)
    return train_loader, val_loader, classes, data_config


def variant_input_size(name: str) -> int:
    """The input side a registered variant is made for: its pretrained configuration's, else
    (a variant registered without one) its ``image_size``, else 224."""
    try:
        return get_pretrained_cfg(name).input_size[-1]
    except ConfigError:
        with torch.device("meta"):
            return getattr(create_model(name), "image_size", 224)


def build_model(config: TrainConfig, num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    if config.model.startswith(MODULE_STUDENT_PREFIX):
        raise ConfigError(f"model={config.model!r} was a module given in Python: give it again, "
                          "train(config, student=module)")
    overrides: dict[str, Any] = dict(num_classes=num_classes, in_channels=in_channels)
    if model_family(config.model) == "vit":
        overrides.update(image_size=image_size, stochastic_depth=config.drop_path > 0,
                         stochastic_depth_mp=config.drop_path)
    else:
        overrides["drop_path_rate"] = config.drop_path
    model = create_model(config.model, **overrides)
    if config.finetune:
        report = load_pretrained(model, resolve_weights_argument(config.finetune, flag="--finetune",
                                                                 progress=config.progress))
        for note in report.notes:
            logger.info("finetune: %s", note)
    return model


def train(config: TrainConfig, *, teacher: nn.Module | None = None, teacher_inputs: str | None = None,
          student: nn.Module | None = None, train_data: Dataset | None = None, val_data: Dataset | None = None
          ) -> TrainResult:
    """Run (or resume) a training run; returns its final metrics. A ``config`` from
    :func:`deit.train.settings.load_config` that names no recipe gets the one its data call for
    (:func:`settle_recipe`).

    ``teacher``: a teacher given as a module (any ``nn.Module`` returning ``(B, K)`` logits)
    instead of ``config.teacher_model``, which then only labels it (``module:<class>`` when
    unset). Its inputs as :func:`adopt_teacher_module` settles them (``teacher_inputs="student"``:
    it takes the student's batches as they are). Everything else of a run applies: recipes,
    EMA, the teacher cache and memo, DDP under torchrun, and resume, which needs the same teacher
    again (its weights digest is recorded in the checkpoint and checked).

    ``student``: a student given as a module instead of ``config.model``, which then only labels
    it (``module:<class>`` when left at its default); it is trained in place. A module with
    ``forward_heads`` and two heads (a distilled DeiT) gets token distillation: its distillation
    head learns from the teacher, its class head from the labels; any other classifier returning
    ``(B, K)`` logits is distilled on its one head (the paper's usual distillation). Its
    ``image_size`` / ``in_channels`` attributes, when it has them and the config leaves them
    unset, are the inputs it gets (:func:`adopt_student_module` checks it answers them);
    ``drop_path`` is the module's business and ``finetune`` does not apply. Checkpoints hold its
    state dict and class; resume needs a module of the same class and state-dict entries again,
    and nothing rebuilds it from a checkpoint alone (``deit eval`` of such a run says so).

    ``train_data`` / ``val_data``, given together: torch Datasets instead of ``config.dataset``,
    which then only labels them (``python:<class>`` when left at its default). Their items are
    ``(image, label)``: a raw image as torchvision's data sets return it with ``transform=None``
    (a PIL image, a uint8 numpy array (H, W) or (H, W, C), or a uint8 tensor (C, H, W)) and an
    int class index; class names come from the data set's ``classes`` attribute, else they are
    ``0..K-1`` (from its labels). The run applies its own transforms and statistics, as for an
    image folder: :class:`deit.data.torch_datasets.TorchImageDataset` says how the data are
    read, and when in full (statistics exact, every image in the fingerprint). Resume needs the
    same data again: their size and fingerprint are recorded and checked.
    """
    config = label_python_inputs(config, student=student, train_data=train_data, val_data=val_data)
    config = label_teacher_module(config, teacher, teacher_inputs)
    config.validate()
    train_set, val_set = (None, None) if train_data is None else wrap_python_data(train_data, val_data)
    env = distributed.detect()
    device = resolve_device(config.device, env)
    output = Path(config.output)
    created = first_missing_folder(output) if env.is_main else None
    # a student module that carries the run's teacher (DeiT.set_teacher) is given back without it;
    # one that brought a teacher of its own is refused (adopt_student_module) and left as it came
    release_teacher = hasattr(student, "set_teacher") and getattr(student, "teacher", None) is None
    try:
        if env.is_main:
            check_output_dir(output, config.resume)
        distributed.init(env, device)
        with deterministic_algorithms(config.deterministic):
            return _train(config, env, device, output, PythonInputs(teacher, teacher_inputs, student, train_set,
                                                                    val_set))
    except BaseException:  # also Ctrl-C: a run without a checkpoint leaves no empty folder behind
        if created is not None:
            remove_unfinished_run(output, created)
        raise
    finally:
        if release_teacher:
            student.set_teacher(None)
        distributed.shutdown()


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``--deterministic``: deterministic kernels only (an error names any op without one).

    On CPU runs are bit-reproducible without it (tested). On CUDA the sources of run-to-run
    differences are atomics in backward kernels (index_add / scatter / embedding, some
    attention and convolution backward passes), cuBLAS workspace reuse (fixed by
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set here) and cuDNN autotuning (off here); NCCL
    all-reduce order under DDP is fixed for a given world size.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


@dataclass
class Run:
    """A training run between epochs: what :func:`setup` builds, :func:`resume` restores and
    each :func:`run_epoch` advances. :func:`_train` reads as nanoGPT's ``train.py``: set up,
    resume, then per epoch train, evaluate, log and save."""

    config: TrainConfig
    env: distributed.DistEnv
    device: torch.device
    output: Path
    train_loader: Any
    val_loader: Any
    classes: list[str]
    data_config: dict[str, Any]  # what prediction needs to preprocess like training (saved in checkpoints)
    model: nn.Module  # the bare model: evaluated and saved
    net: nn.Module  # what trains: the model, or its DDP / torch.compile wrapper
    teacher: nn.Module | None
    ema: Any  # timm ModelEmaV3 or None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    criterion: DistillationLoss
    mixup_fn: Callable | None
    amp: Amp
    resolved: dict[str, Any]  # the settings with what the data decided: config.yaml
    lr: float
    effective_batch: int
    updates_per_epoch: int
    plan: SchedulePlan | None = None  # the length and schedule in updates (plan_run)
    start_time: float = field(default_factory=time.perf_counter)
    start_epoch: int = 0
    num_updates: int = 0
    images_seen: int = 0  # training samples through the model so far, all processes, all invocations
    elapsed_before_s: float = 0.0  # wall time of the invocations before this resume
    best_acc1: float = float("-inf")
    run_log: RunLog | None = None
    final: dict[str, Any] = field(default_factory=dict)  # the last epoch's metrics
    throughput: list[float] = field(default_factory=list)  # train images/s, per epoch
    teacher_cache: TeacherCache | None = None  # the distillation targets' store (--teacher-cache)
    inputs_record: dict[str, Any] = field(default_factory=dict)  # the teacher and data it trains on (resume checks)
    teacher_memo: TeacherMemo | None = None  # the teacher's logits per distinct view, when views repeat


def _train(config: TrainConfig, env: distributed.DistEnv, device: torch.device, output: Path,
           given: PythonInputs = PythonInputs()) -> TrainResult:
    start_time = time.perf_counter()
    seed_everything(config.seed + env.rank)
    saved = load_training_checkpoint(output / "last.pth") if config.resume else None
    saved_config = saved.get("config", {}) if saved is not None else None
    if saved_config is not None:
        check_python_inputs_given(saved_config, given)
    train_set = given.train_set if given.train_set is not None else load_train_set(config)
    config = settle_recipe(config, train_set, saved_config, log=env.is_main)
    config = settle_views(config, train_set, env, saved_config, log=env.is_main)
    if saved is not None:
        check_resume_compatible(saved_config, config)
    run = setup(config, env, device, output, train_set=train_set, saved_config=saved_config, given=given)
    run.start_time = start_time  # the wall time includes loading the data and building the model
    if saved is not None:
        check_same_inputs(saved.get("inputs_record"), run.inputs_record)
        if given.student is not None:
            check_same_student(saved, run.model)
        resume(run, saved)
    else:
        # The loop's random streams (augmentation, Mixup, drop-path) start from a state that
        # depends on the seed alone, not on what construction or first-time imports consumed.
        seed_everything(config.seed + env.rank + LOOP_SEED_OFFSET)
    open_records(run, resumed=saved is not None)
    epochs = run.plan.epochs
    end_epoch = epochs if config.stop_after_epochs is None else min(epochs, run.start_epoch + config.stop_after_epochs)
    for epoch in range(run.start_epoch, end_epoch):
        metrics, improved = run_epoch(run, epoch)
        save_epoch(run, epoch, metrics, improved)
        distributed.barrier()
    return finish(run, epochs_run=end_epoch - run.start_epoch)


def setup(config: TrainConfig, env: distributed.DistEnv, device: torch.device, output: Path, train_set=None,
          saved_config: dict[str, Any] | None = None, given: PythonInputs = PythonInputs()) -> Run:
    """Data, model and teacher, then the recipe: AdamW at the paper's scaled learning rate
    (Table 9), Mixup/CutMix, the distillation loss, AMP; then :func:`plan_run`: the length
    and the cosine schedule. ``saved_config``: the config of the run being resumed."""
    train_loader, val_loader, classes, data_config = build_data(config, env, train_set=train_set,
                                                                val_set=given.val_set)
    num_classes = config.num_classes or len(classes)
    if num_classes != len(classes):
        raise ConfigError(f"num_classes={num_classes} but the data set {config.dataset!r} has {len(classes)} classes; "
                          "drop --num-classes or set it to the data set's")
    model = build_model(config, num_classes, data_config["image_size"], data_config["in_channels"]) \
        if given.student is None else adopt_student_module(given.student, num_classes, data_config, log=env.is_main)
    if given.teacher is not None and config.distillation_type == "none":
        raise ConfigError("a teacher was given (teacher=) but distillation_type is 'none': set distillation_type "
                          "'hard' or 'soft' (--distillation-type), or a recipe with a teacher's settings")
    teacher = build_teacher(config, num_classes, data_config) if given.teacher is None else \
        adopt_teacher_module(given.teacher, config, data_config, inputs=given.teacher_inputs, log=env.is_main)
    distilling = teacher is not None and config.distillation_type != "none"
    amp = Amp.for_device(config.amp, getattr(torch, config.amp_dtype), device)
    teacher_cache = build_teacher_cache(config, env, device, train_loader, teacher, num_classes, amp) \
        if distilling else None
    teacher_memo = None
    if distilling and teacher_cache is None and config.teacher_memo and views_repeat(config.to_dict()):
        teacher_memo = TeacherMemo(teacher, num_classes)  # deit.distill.memo: once per distinct view
        if env.is_main:
            logger.info("the training views repeat (whole images, at most a flip): the teacher runs once per "
                        "distinct view and its logits are kept in memory (--no-teacher-memo runs it every step)")
    # a convnet trains in channels_last, the memory format oneDNN's convolutions are fastest in
    # (as the teacher in DeiT.set_teacher); a ViT's patch embedding is one conv, not worth it.
    # Before set_teacher: DeiT._apply passes a move on to its teacher, memory format included.
    # A student given as a module keeps the contiguous format.
    contiguous = given.student is not None or model_family(config.model) == "vit"
    model.to(device, memory_format=torch.contiguous_format if contiguous else torch.channels_last)
    # a two-head student carries its teacher (DeiT.set_teacher) and answers (student, teacher), the
    # seed API; any other student is distilled on its one head by the loss, which runs the teacher
    carries_teacher = hasattr(model, "set_teacher")
    if distilling and carries_teacher and teacher_cache is None and teacher_memo is None:
        model.set_teacher(teacher, inputs="student")  # load_teacher converts the inputs when they differ
    if teacher is not None:
        teacher.to(device)

    ema = None
    if config.model_ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=config.model_ema_decay, use_warmup=True)
    net = wrap_student(model, config, env, device)

    effective_batch = config.batch_size * config.accum_steps * env.world_size
    lr = config.lr * effective_batch / 512  # the paper's rule, Table 9: 0.0005 x batchsize / 512
    optimizer = build_optimizer(model, lr, config.weight_decay)
    updates_per_epoch = len(train_loader) // config.accum_steps
    mixup_fn = build_mixup(config, num_classes)
    criterion = DistillationLoss(
        build_base_criterion(mixup_active=mixup_fn is not None, smoothing=config.smoothing),
        teacher=None if carries_teacher else teacher,
        distillation_type=config.distillation_type if distilling else "none",
        alpha=config.distillation_alpha, tau=config.distillation_tau, kl_reduction=config.kl_reduction)
    scaler = torch.amp.GradScaler("cuda") if config.amp and config.amp_dtype == "float16" and device.type == "cuda" \
        else None

    run = Run(config=config, env=env, device=device, output=output, train_loader=train_loader,
              val_loader=val_loader, classes=classes, data_config=data_config, model=model, net=net,
              teacher=teacher, ema=ema, optimizer=optimizer, scheduler=None, scaler=scaler, criterion=criterion,
              mixup_fn=mixup_fn, amp=amp, resolved={}, lr=lr, effective_batch=effective_batch,
              updates_per_epoch=updates_per_epoch, teacher_cache=teacher_cache, teacher_memo=teacher_memo)
    run.inputs_record = inputs_record(config, train_loader, teacher)
    plan_run(run, saved_config)
    return run


def wrap_student(model: nn.Module, config: TrainConfig, env: distributed.DistEnv, device: torch.device) -> nn.Module:
    """What trains: ``model`` in DDP under torchrun, compiled with ``--compile``."""
    net: nn.Module = model
    if env.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)  # the teacher runs eagerly inside (inference mode, not a submodule)
    return net


def plan_run(run: Run, saved_config: dict[str, Any] | None = None) -> None:
    """The run's length and schedule: ``budget_minutes`` turned into ``budget_images``
    (:func:`resolve_budget`), the plan in updates (:func:`deit.train.budget.plan_schedule`), the
    cosine schedule over exactly its updates, and the resolved settings for config.yaml:
    the epochs the plan takes, the budget in images, the warm-up it resolved to."""
    config, env = run.config, run.env
    epochs_given = config.epochs if "epochs" in (config.settings_given or ()) else None
    if saved_config is not None:
        config = keep_recorded_length(config, saved_config)
    config, rate = resolve_budget(run, saved_config)
    samples = len(run.train_loader.sampler) * env.world_size  # one epoch, all processes
    plan = plan_schedule(samples, run.effective_batch, budget_images=config.budget_images, epochs=config.epochs,
                         warmup_epochs=config.warmup_epochs, warmup_fraction=config.warmup_fraction)
    if config.warmup_fraction is None:
        resolve_warmup_epochs(config, log=env.is_main, epochs=plan.epochs if plan.budget_images is not None else None)
    if env.is_main and plan.budget_images is not None:
        log_budget(run, config, plan, rate, epochs_given)
    run.config = dataclasses.replace(config, epochs=plan.epochs)
    run.plan = plan
    run.scheduler = build_scheduler(run.optimizer, total_steps=plan.total_updates, warmup_steps=plan.warmup_updates,
                                    min_lr=config.min_lr, warmup_lr=config.warmup_lr)
    run.resolved = run.config.to_dict()
    warmup_epochs = plan.warmup_epochs if config.warmup_fraction is None else \
        round(plan.warmup_updates / plan.updates_per_epoch, 4)  # the warm-up that ran, in epochs
    run.resolved.update(num_classes=len(run.classes), image_size=run.data_config["image_size"],
                        in_channels=run.data_config["in_channels"], warmup_epochs=warmup_epochs)


def keep_recorded_length(config: TrainConfig, saved_config: dict[str, Any]) -> TrainConfig:
    """A resumed run's length and warm-up as it recorded them, unless the flags state them
    again: the schedule restored from ``last.pth`` spans the recorded updates, so another
    length (a recipe whose budget changed, a different ``--budget-images``) would stop the
    run mid-cosine or past its end. A length or warm-up given again must equal the record."""
    given = set(config.settings_given or ())
    if "epochs" not in saved_config:
        return config
    # a config.yaml from before budgets has no budget_images / warmup_fraction: it ran without them
    recorded = {key: saved_config.get(key) for key in ("epochs", "budget_images", "warmup_fraction",
                                                          "warmup_epochs")}
    changes = {key: value for key, value in recorded.items() if key not in given}
    if config.budget_minutes is not None and "budget_minutes" in given:
        changes.pop("budget_images", None)  # resolve_budget takes the recorded images or refuses new minutes
    stated = {key: getattr(config, key) for key in recorded if key in given and key != "warmup_epochs"}
    differing = {key: (value, recorded[key]) for key, value in stated.items()
                 if value != recorded[key] and not (key == "epochs" and recorded.get("budget_images"))}
    if differing:
        shown = "; ".join(f"--{k.replace('_', '-')} {v!r}, recorded {r!r}" for k, (v, r) in differing.items())
        raise ConfigError(f"--resume continues the schedule the run recorded (config.yaml); {shown}. Resume with the "
                          "recorded length, or start a new run in another --output")
    return dataclasses.replace(config, **changes)


BUDGET_NOTES = ("budget_minutes", "measured_images_per_s", "measured_updates")
"""What a ``--budget-minutes`` run records in ``extra``: the minutes asked for and the rate measured."""


def resolve_budget(run: Run, saved_config: dict[str, Any] | None) -> tuple[TrainConfig, Rate | None]:
    """``run.config`` with ``budget_minutes`` turned into ``budget_images``, and the rate
    measured (None if none was). The images recorded by the run being resumed are taken as
    they are; otherwise the run's own training step is timed
    (:func:`deit.train.budget.measure_training_rate`). ``budget_minutes`` is then cleared and the
    minutes and the rate go to ``extra``, so config.yaml reruns the same number of updates."""
    config = run.config
    if config.budget_minutes is None:
        return config, None
    recorded = (saved_config or {}).get("budget_images")
    if recorded is not None:
        notes = {k: v for k, v in (saved_config.get("extra") or {}).items() if k in BUDGET_NOTES}
        if run.env.is_main:
            logger.info("--budget-minutes %g: resuming with budget_images %d, recorded by the run being resumed "
                        "(measured %s training images/s then); not measured again", config.budget_minutes,
                        recorded, notes.get("measured_images_per_s", "?"))
        return dataclasses.replace(config, budget_images=int(recorded), budget_minutes=None,
                                   extra={**config.extra, **notes}), None
    rate = measure_training_rate(run, wrap=lambda student: wrap_student(student, config, run.env, run.device))
    notes = {"budget_minutes": config.budget_minutes, "measured_images_per_s": round(rate.images_per_s, 1),
             "measured_updates": rate.updates}
    return dataclasses.replace(config, budget_images=budget_from_minutes(config.budget_minutes, rate),
                               budget_minutes=None, extra={**config.extra, **notes}), rate


def log_budget(run: Run, config: TrainConfig, plan: SchedulePlan, rate: Rate | None, epochs_given: int | None) -> None:
    """One line on what the budget came to (and one if it overrides a --epochs given)."""
    per_epoch = plan.updates_per_epoch * run.effective_batch
    shape = f"{plan.epochs} epoch(s) of {per_epoch}, {plan.total_updates} updates" + (
        f", the last epoch {plan.last_epoch_updates} of {plan.updates_per_epoch}"
        if plan.last_epoch_updates != plan.updates_per_epoch else "")
    if rate is not None:
        logger.info("--budget-minutes %g: measured %.0f training images/s over %d steps -> budget_images %d (%s); "
                    "recorded in config.yaml; training time only: evaluation comes on top", config.extra[
                        "budget_minutes"], rate.images_per_s, rate.updates, plan.budget_images, shape)
    else:
        logger.info("budget_images %d: %s", plan.budget_images, shape)
    if epochs_given is not None and epochs_given != plan.epochs:
        logger.info("--epochs %d (epochs) is ignored: the budget sets the run's length", epochs_given)


def build_teacher(config: TrainConfig, num_classes: int, data_config: dict[str, Any]) -> nn.Module | None:
    """The frozen teacher of ``--teacher-model`` (paper §4), or ``None``."""
    if not config.teacher_model:
        return None
    if config.teacher_model.startswith(MODULE_TEACHER_PREFIX):
        raise ConfigError(f"teacher_model={config.teacher_model!r} was a module given in Python: give it again, "
                          "train(config, teacher=module)")
    teacher_checkpoint = config.teacher_checkpoint
    if config.teacher_pretrained and teacher_checkpoint is None:  # the teacher's published weights

        teacher_name = resolve_teacher_name(config.teacher_model, data_config["image_size"])
        if teacher_name.startswith(TIMM_PREFIX):
            raise ConfigError(f"--teacher-pretrained covers registered names; for --teacher-model {teacher_name} "
                              "pass timm's weights file with --teacher-checkpoint FILE")
        teacher_checkpoint = resolve_pretrained_file(teacher_name, progress=config.progress)
    # the teacher takes the student's normalised batches: re-normalised when it was trained otherwise
    return load_teacher(config.teacher_model, num_classes=num_classes, in_channels=data_config["in_channels"],
                        image_size=data_config["image_size"], checkpoint=teacher_checkpoint,
                        input_mean=data_config["mean"], input_std=data_config["std"],
                        teacher_mean=config.teacher_mean, teacher_std=config.teacher_std)


def build_mixup(config: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix on whole batches with label smoothing folded into the soft
    targets (the official ``main.py``), drawn from each batch's replay keys
    (:class:`deit.data.replay.ReplayMixup`), or ``None`` when both are off."""
    if not ((config.mixup > 0 or config.cutmix > 0) and config.mixup_prob > 0):
        return None
    from timm.data import Mixup

    return ReplayMixup(Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                             switch_prob=config.mixup_switch_prob, mode="batch", label_smoothing=config.smoothing,
                             num_classes=num_classes), seed=config.seed)


def teacher_cache_identity(config: TrainConfig, env: distributed.DistEnv, train_loader, teacher: nn.Module,
                           amp: Amp, samples_per_epoch: int) -> dict[str, Any]:
    """What a teacher-output cache's rows depend on (:mod:`deit.distill.cache`): the teacher's
    weights, the images (data set fingerprint), every setting of the views (transform,
    Mixup/CutMix, repeated augmentation, seed, batch size, world size), the targets' kind, τ
    and k, the teacher's precision and the versions of the augmentation libraries."""
    import PIL
    import timm
    import torchvision

    replay = train_loader.dataset  # deit.data.replay.ReplayDataset
    mixing = config.mixup_prob > 0 and (config.mixup > 0 or config.cutmix > 0)
    soft = config.distillation_type == "soft"
    return {
        "teacher_model": config.teacher_model, "teacher_weights_sha256": module_fingerprint(teacher),
        "dataset_fingerprint": dataset_fingerprint(replay.dataset), "dataset_size": len(replay),
        "transform": repr(_train_transform(replay.dataset)),
        "auto_augment": config.auto_augment,
        "mixup": {"mixup": config.mixup, "cutmix": config.cutmix, "prob": config.mixup_prob,
                  "switch_prob": config.mixup_switch_prob} if mixing else None,
        "repeated_aug": config.repeated_aug, "seed": config.seed, "batch_size": config.batch_size,
        "world_size": env.world_size, "samples_per_epoch": samples_per_epoch,
        "targets": {"kind": config.distillation_type, "tau": resolved_tau(config) if soft else None,
                    "topk": config.teacher_cache_topk if soft else None},
        "teacher_precision": str(amp.dtype).replace("torch.", "") if amp.enabled else "float32",
        "versions": {"timm": timm.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
    }


def _train_transform(dataset):
    while not hasattr(dataset, "transform") and hasattr(dataset, "dataset"):  # through a Subset
        dataset = dataset.dataset
    return dataset.transform


def resolved_tau(config: TrainConfig) -> float:
    """τ of soft distillation: the configured one, else the paper's."""
    return float(config.distillation_tau if config.distillation_tau is not None else PAPER_TAU)


def build_teacher_cache(config: TrainConfig, env: distributed.DistEnv, device: torch.device, train_loader,
                        teacher: nn.Module, num_classes: int, amp: Amp) -> TeacherCache | None:
    """The ``--teacher-cache`` of the process ``env`` describes (``deit cache-teacher`` passes
    each share it fills), or ``None`` without one."""
    if not config.teacher_cache:
        return None
    samples = epoch_steps(train_loader, config.accum_steps) * config.batch_size
    identity = teacher_cache_identity(config, env, train_loader, teacher, amp, samples)
    kwargs = dict(directory=Path(config.teacher_cache), identity=identity, teacher=teacher,
                  num_classes=num_classes, kind=config.distillation_type, batch_size=config.batch_size,
                  samples_per_epoch=samples, world_size=env.world_size, rank=env.rank, tau=resolved_tau(config),
                  topk=config.teacher_cache_topk, machine=device_kind(device))
    cache, refused = None, None
    if env.is_main:  # writes cache.json when the directory is new; the others then read it
        try:
            cache = TeacherCache(**kwargs)
        except Exception as err:  # every process must learn of it, not wait at the barrier
            refused = err
    failed = torch.tensor([float(refused is not None)], device=device)
    distributed.all_reduce_sum(failed)  # the barrier: rank 0 has opened (or refused) the cache
    if refused is not None:
        raise refused
    if failed.item():
        raise ConfigError(f"teacher cache {config.teacher_cache} was refused by process 0 (its error says why)")
    return cache if cache is not None else TeacherCache(**kwargs)


def resume(run: Run, saved: dict[str, Any]) -> None:
    """Continue from ``last.pth``: weights, optimizer, schedule, loss scale, EMA, counters and
    this rank's RNG state, so that the resumed run equals an uninterrupted one."""
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if run.scaler is not None and saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    if run.ema is not None and saved.get("ema") is not None:
        run.ema.module.load_state_dict(saved["ema"])
    run.start_epoch = int(saved["epoch"]) + 1
    run.num_updates = int(saved["num_updates"])
    run.best_acc1 = float(saved.get("best_acc1", run.best_acc1))
    done = saved.get("metrics") or {}
    run.final = dict(done)  # the last epoch's metrics, until this invocation runs another one
    if ("images_seen" not in done or "elapsed_s" not in done) and run.env.is_main:
        logger.info("last.pth has no images_seen / elapsed_s: counting images from its %d updates x the effective "
                    "batch %d, and wall time from this resume", run.num_updates, run.effective_batch)
    run.images_seen = int(done.get("images_seen", run.num_updates * run.effective_batch))
    run.elapsed_before_s = float(done.get("elapsed_s", 0.0))
    rng, rank = saved["rng"], run.env.rank
    restore_rng_state(rng[rank] if isinstance(rng, list) and rank < len(rng) else rng)


def open_records(run: Run, resumed: bool) -> None:
    """``config.yaml`` and the epoch log (which drops the rows of an interrupted attempt on
    resume); states the plan and the scaled learning rate."""
    config, env = run.config, run.env
    if env.is_main:
        write_text_atomic(run.output / "config.yaml", yaml.safe_dump(run.resolved, sort_keys=False))
    run.run_log = RunLog(run.output, enabled=env.is_main, resume_after_epoch=run.start_epoch - 1 if resumed else None)
    if env.is_main:
        logger.info("training %s on %s: %d epochs x %d updates of %d images (%d updates in all, %d of warm-up), "
                    "output %s", config.model, config.dataset, config.epochs, run.updates_per_epoch,
                    run.effective_batch, run.plan.total_updates, run.plan.warmup_updates, run.output)
        logger.info("learning rate %.4g = --lr %.4g x effective batch %d (--batch-size %d x --accum-steps %d x %d "
                    "process(es)) / 512, the paper's scaling rule", run.lr, config.lr, run.effective_batch,
                    config.batch_size, config.accum_steps, env.world_size)


def run_epoch(run: Run, epoch: int) -> tuple[dict[str, Any], bool]:
    """Train one epoch (the last one of a budget as far as its updates go), then evaluate
    when due (:func:`deit.train.budget.evaluation_due`: every ``eval_interval`` epochs, or
    ``evaluations`` times over the run, and the last one). Returns the epoch's metrics
    and whether validation top-1 improved on the best.

    Two columns run over the whole run, across resumes: ``images_seen`` (training samples
    so far) and ``elapsed_s`` (wall time at the end of this epoch's evaluation), the x axes
    on which runs of different speeds compare."""
    config = run.config
    if hasattr(run.train_loader.sampler, "set_epoch"):
        run.train_loader.sampler.set_epoch(epoch)
    train_metrics, run.num_updates = train_one_epoch(
        run.net, run.criterion, run.train_loader, run.optimizer, device=run.device, epoch=epoch,
        num_updates=run.num_updates, scheduler=run.scheduler, mixup_fn=run.mixup_fn, ema=run.ema, amp=run.amp,
        scaler=run.scaler, accum_steps=config.accum_steps, clip_grad=config.clip_grad,
        progress=config.progress and run.env.is_main, teacher_cache=run.teacher_cache or run.teacher_memo,
        max_updates=run.plan.updates_in_epoch(epoch))
    run.throughput.append(train_metrics["train_images_per_s"])
    run.images_seen += train_metrics["train_images"]
    metrics = dict(train_metrics)
    improved = False
    if evaluation_due(epoch, config.epochs, config.eval_interval, config.evaluations):
        val = evaluate(run.model, run.val_loader, device=run.device, amp=run.amp, teacher=run.teacher)
        metrics.update({f"val_{k}": v for k, v in val.items() if k != "count"})
        if run.ema is not None:
            ema_val = evaluate(run.ema.module, run.val_loader, device=run.device, amp=run.amp)
            metrics.update({f"ema_{k}": v for k, v in ema_val.items() if k != "count"})
        improved = metrics["val_acc1"] > run.best_acc1
        run.best_acc1 = max(run.best_acc1, metrics["val_acc1"])
    metrics["best_acc1"] = run.best_acc1
    metrics["images_seen"] = run.images_seen
    metrics["elapsed_s"] = run.elapsed_before_s + time.perf_counter() - run.start_time
    run.final = metrics
    return metrics, improved


def save_epoch(run: Run, epoch: int, metrics: dict[str, Any], improved: bool) -> None:
    """The epoch's row in ``metrics.csv`` / TensorBoard, then ``last.pth`` (and ``best.pth``
    when top-1 improved), written by the main process. Every process calls it: each one's
    RNG state goes into the checkpoint."""
    rng_states = _gather_rng_states(run.env)
    if not run.env.is_main:
        return
    run.run_log.log_epoch(epoch, metrics)
    payload = {
        **student_identity(run.model, run.config), "model": run.model.state_dict(), "classes": run.classes,
        "data_config": run.data_config, "config": run.resolved, "epoch": epoch, "num_updates": run.num_updates,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": run.ema.module.state_dict() if run.ema is not None else None, "rng": rng_states,
        "best_acc1": run.best_acc1, "metrics": metrics, "inputs_record": run.inputs_record,
    }
    save_training_checkpoint(run.output / "last.pth", payload)
    if improved:
        save_training_checkpoint(run.output / "best.pth", payload)
    val_text = f"val top-1 {metrics['val_acc1']:.2f}% (best {run.best_acc1:.2f}%)" if "val_acc1" in metrics \
        else "not evaluated"
    logger.info("epoch %d: train loss %.4f, %s; %.0f train images/s, %.0f s elapsed", epoch, metrics["train_loss"],
                val_text, metrics["train_images_per_s"], metrics["elapsed_s"])
    skipped = sum(_skipped_images(loader) for loader in (run.train_loader, run.val_loader))
    if skipped:
        logger.warning("%d unreadable image file(s) skipped so far (bad_images=skip); their paths are in the "
                       "warnings above", skipped)


def finish(run: Run, epochs_run: int) -> TrainResult:
    """The curves and ``summary.json`` (main process); the run's result."""
    config = run.config
    wall = time.perf_counter() - run.start_time
    cache_stats = reduce_cache_stats(run.teacher_cache, run.device) if run.teacher_cache is not None else None
    result = TrainResult(output=run.output, final=run.final, best_acc1=run.best_acc1, epochs_run=epochs_run,
                         wall_time_s=wall,
                         train_images_per_s=float(np.median(run.throughput)) if run.throughput else float("nan"))
    if run.env.is_main:
        run.run_log.plot(run.output / "curves.png", title=f"{config.model} on {config.dataset}")
        run.run_log.close()
        summary = {"model": config.model, "dataset": config.dataset, "best_acc1": run.best_acc1,
                   "final": {k: v for k, v in run.final.items() if isinstance(v, (int, float))},
                   "wall_time_s": wall, "elapsed_s": run.final.get("elapsed_s", wall),
                   "train_images_per_s": result.train_images_per_s}
        if cache_stats is not None:
            summary["teacher_cache"] = cache_stats
        if run.teacher_memo is not None:
            summary["teacher_memo"] = run.teacher_memo.stats()  # this process's (each keeps its own)
        write_text_atomic(run.output / "summary.json", json.dumps(summary, indent=2))
    return result


def reduce_cache_stats(cache: TeacherCache, device: torch.device) -> dict[str, Any]:
    """This invocation's teacher-cache counts summed over processes."""
    stats = cache.stats
    counts = torch.tensor([stats.hits, stats.misses, stats.rewritten_shards, stats.checked, stats.agreed],
                          dtype=torch.float64, device=device)
    distributed.all_reduce_sum(counts)  # on the device: NCCL reduces device tensors only
    stats.hits, stats.misses, stats.rewritten_shards, stats.checked, stats.agreed = (int(v) for v in counts.tolist())
    return stats.as_dict()


def _skipped_images(loader) -> int:
    """Unreadable files an image folder skipped (``bad_images="skip"``); 0 otherwise."""
    dataset = loader.dataset
    while hasattr(dataset, "dataset"):  # through the replay wrapper and a Subset
        dataset = dataset.dataset
    return int(getattr(dataset, "skipped", 0))


def _gather_rng_states(env: distributed.DistEnv):
    """Every rank's RNG state (a list in multi-process runs) so resume is exact per rank."""
    state = capture_rng_state()
    if not env.enabled:
        return state
    import torch.distributed as dist

    states: list[Any] = [None] * env.world_size
    dist.all_gather_object(states, state)
    return states


__all__ = ["train", "TrainResult", "TrainConfig"]
