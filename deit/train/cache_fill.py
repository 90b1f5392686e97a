"""``deit cache-teacher``: fill a teacher-output cache ahead of training.

The cache (:mod:`deit.distill.cache`) is filled with exactly what ``deit train
--teacher-cache`` with the same settings would compute on a miss: the same data path
(:mod:`deit.data.replay`), Mixup/CutMix, teacher, precision and batch composition. Only
the student is missing, so an epoch costs the teacher's forward passes alone. Several
machines share the work by filling different epoch ranges into the same directory (shards
are written atomically and named by epoch, rank and position); epochs already complete are
skipped, and an interrupted fill resumes where it stopped.

A run meant for ``torchrun --nproc_per_node=N`` needs the shares of N processes: run this
command under the same torchrun (each process fills its own share), or in one process with
``world_size=N``, which fills the N shares one after the other.

The settings resolve as ``deit train``'s: a run that names no recipe gets the one its data
call for (:func:`deit.train.run.settle_recipe`), and a ``budget_images`` run fills the epochs
its plan takes (:func:`deit.train.budget.plan_schedule`). The last of them is filled whole even
where the budget ends it early: a shard is written once every row of it is known, so a
part-filled shard would be computed and thrown away.
``budget_minutes`` is refused: its images come from timing the student, which this command
does not have; the ``budget_images`` a run recorded in its config.yaml works.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch

from deit.core.errors import ConfigError
from deit.data.replay import ReplayMixup
from deit.train import distributed
from deit.train.budget import SchedulePlan, plan_schedule
from deit.train.engine import Amp, epoch_steps
from deit.train.run import (
    build_data,
    build_mixup,
    build_teacher,
    build_teacher_cache,
    load_train_set,
    reduce_cache_stats,
    resolve_device,
    settle_recipe,
    settle_views,
)
from deit.train.settings import TrainConfig

logger = logging.getLogger("deit")


def fill_teacher_cache(config: TrainConfig, epochs: Sequence[int] | None = None,
                       world_size: int | None = None) -> dict[str, Any]:
    """Compute and store the teacher's outputs for ``epochs`` of the run ``config`` describes
    (``config.teacher_cache`` is the directory; ``epochs`` None: every epoch of the run's
    plan). ``world_size``: the number of training processes the cache is for, when this is a
    single process (default 1); under torchrun it is torchrun's. Returns the counts:
    ``hits`` (already stored), ``misses`` (computed now), ``epochs_skipped``, the ``epochs``
    filled (first, last + 1) and the wall time."""
    config.validate()
    if config.budget_minutes is not None:
        raise ConfigError(f"budget_minutes={config.budget_minutes!r}: deit cache-teacher cannot time the student's "
                          "training step; pass the budget_images that deit train recorded in the run's config.yaml "
                          "(--budget-images N, or --config RUN/config.yaml), or --epoch-range")
    env = distributed.detect()
    train_set = load_train_set(config)
    config = settle_recipe(config, train_set, log=env.is_main)
    config = settle_views(config, train_set, env, log=env.is_main)
    if not config.teacher_cache or not config.teacher_model or config.distillation_type == "none":
        raise ConfigError("deit cache-teacher needs --teacher-cache DIR, --teacher-model (with its weights) and "
                          "--distillation-type hard or soft: the settings of the deit train run it prepares")
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1):
        raise ConfigError(f"world_size={world_size!r} is invalid; expected the number of training processes, an "
                          "integer >= 1 (--world-size)")
    if env.enabled and world_size not in (None, env.world_size):
        raise ConfigError(f"world_size={world_size} under torchrun with {env.world_size} processes; drop "
                          "--world-size: each process fills its own share")
    total = env.world_size if env.enabled else (world_size or 1)
    shares = [env.rank] if env.enabled else list(range(total))
    device = resolve_device(config.device, env)
    distributed.init(env, device)
    start = time.perf_counter()
    counts = {"hits": 0, "misses": 0, "epochs_skipped": 0}
    amp = Amp.for_device(config.amp, getattr(torch, config.amp_dtype), device)
    try:
        teacher = mixup = None
        for rank in shares:
            share = distributed.DistEnv(rank=rank, world_size=total, local_rank=env.local_rank)
            loader, _, classes, data_config = build_data(config, share, train_set=train_set)
            if teacher is None:  # one teacher and one Mixup for every share: neither depends on the rank
                teacher = build_teacher(config, len(classes), data_config).to(device)
                mixup = build_mixup(config, len(classes))
            cache = build_teacher_cache(config, share, device, loader, teacher, len(classes), amp)
            steps = epoch_steps(loader, config.accum_steps)
            if epochs is None:
                epochs = range(_plan(config, loader, total).epochs)
            counts["epochs"] = (min(epochs), max(epochs) + 1)
            for epoch in epochs:
                if cache.has_epoch(epoch):
                    counts["epochs_skipped"] += 1
                    continue
                _fill_epoch(cache, loader, mixup, epoch, steps, device, amp)
                logger.info("teacher cache %s: epoch %d of rank %d/%d done", config.teacher_cache, epoch, rank,
                            total)
            stats = reduce_cache_stats(cache, device) if env.enabled else cache.stats.as_dict()
            counts["hits"] += stats["hits"]
            counts["misses"] += stats["misses"]
    finally:
        distributed.shutdown()
    counts["wall_time_s"] = time.perf_counter() - start
    return counts


def _plan(config: TrainConfig, loader, world_size: int) -> SchedulePlan:
    """The plan of the run the cache is for (:func:`deit.train.budget.plan_schedule`): its epochs."""
    return plan_schedule(len(loader.sampler) * world_size, config.batch_size * config.accum_steps * world_size,
                         budget_images=config.budget_images, epochs=config.epochs,
                         warmup_epochs=config.warmup_epochs, warmup_fraction=config.warmup_fraction)


def _fill_epoch(cache, loader, mixup: ReplayMixup | None, epoch: int, steps: int, device: torch.device,
                amp: Amp) -> None:
    """One epoch of this share's batches through the cache (the teacher runs on misses)."""
    loader.sampler.set_epoch(epoch)
    for step, (images, targets, keys) in enumerate(loader):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True)
        if mixup is not None:
            images, _ = mixup(images, targets.to(device), keys)
        with amp.autocast(device):
            cache.targets(images, keys)


__all__ = ["fill_teacher_cache"]
