"""A run's length and learning-rate schedule, set by epochs or by a budget.

The paper counts its schedule in epochs (300, a 5-epoch warm-up; Table 9), which makes a
run's cost grow with the data set. A budget fixes the cost instead:

* ``budget_images``: the training images the run sees (updates x effective batch, summed
  over processes). The run makes ``round(budget_images / effective batch)`` updates
  (halves up, at least one), as many epochs as they need, the last one cut short where
  they end, and the cosine decay spans exactly those updates (:func:`plan_schedule`).
* ``budget_minutes``: minutes of training, turned into ``budget_images`` by a rate measured
  on the run's own training step before it starts (:func:`measure_training_rate`); the
  run's ``config.yaml`` records the images, so a resume or a rerun does not measure again.
* ``warmup_fraction``: the warm-up as a share of the run's updates, the same for any data
  size (the paper's 5 of 300 epochs is a fraction of 1/60).

The plan is pure arithmetic; the measurement runs the real training step
(:func:`deit.train.engine.train_one_epoch`) on a copy of the student.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.models.teacher_output import teacher_logits
from deit.train import distributed
from deit.train.engine import train_one_epoch
from deit.train.optim import build_optimizer
from deit.weights.layouts import capture_rng_state, restore_rng_state

__all__ = ["CALIBRATION_SECONDS", "CALIBRATION_UPDATES", "CALIBRATION_WARMUP", "Rate", "SchedulePlan",
           "budget_from_minutes", "clamp_warmup_epochs", "epoch_updates", "evaluation_due", "measure_training_rate", "plan_schedule"]

CALIBRATION_WARMUP = 2
"""Updates run and discarded before timing: first-call allocations, kernel selection."""
CALIBRATION_UPDATES = 16
"""Updates timed after the warm-up, unless :data:`CALIBRATION_SECONDS` pass first."""
CALIBRATION_SECONDS = 15.0


@dataclass(frozen=True)
class SchedulePlan:
    """How long a run trains and how its learning rate moves, counted in optimizer updates.

    ``total_updates`` is what the cosine schedule spans (warm-up included), ``epochs`` the
    passes over the data they take; every epoch but the last has ``updates_per_epoch``
    updates, the last :attr:`last_epoch_updates`. ``warmup_epochs`` is the warm-up in
    epochs as the run records it (``config.yaml``); ``budget_images`` the budget the plan
    was made for, or None for a run of ``epochs``.
    """

    updates_per_epoch: int
    epochs: int
    total_updates: int
    warmup_updates: int
    warmup_epochs: float
    budget_images: int | None = None

    @property
    def last_epoch_updates(self) -> int:
        return self.total_updates - (self.epochs - 1) * self.updates_per_epoch

    def updates_in_epoch(self, epoch: int) -> int:
        """The updates epoch ``epoch`` (0-based) trains for."""
        return self.last_epoch_updates if epoch == self.epochs - 1 else self.updates_per_epoch


def epoch_updates(num_train_images: int, effective_batch: int, drop_last: bool = True) -> int:
    """Optimizer updates per epoch over ``num_train_images`` samples (summed over processes).

    With ``drop_last`` (the training loader's, :func:`deit.data.build_loader`) a trailing
    partial batch is skipped; ``(n // batch) // accum == n // (batch x accum)``, so this is
    exactly ``len(loader) // accum_steps`` when ``num_train_images`` is the sampler's
    samples per process times the number of processes."""
    if drop_last:
        return num_train_images // effective_batch
    return math.ceil(num_train_images / effective_batch)


def clamp_warmup_epochs(warmup_epochs: float, epochs: int) -> float:
    """``warmup_epochs``, clamped to ``epochs - 1`` so the cosine decay keeps the last epoch
    (``--epochs 1`` with the paper's 5 warm-up epochs trains at the full rate from the start;
    a 1-epoch run keeps a warm-up of a fraction of an epoch)."""
    if epochs >= 2:
        return min(warmup_epochs, epochs - 1)
    return warmup_epochs if warmup_epochs < 1 else 0


def plan_schedule(num_train_images: int, effective_batch: int, drop_last: bool = True, *,
                  budget_images: int | None = None, epochs: int = 1, warmup_epochs: float = 0.0,
                  warmup_fraction: float | None = None) -> SchedulePlan:
    """The run's length and warm-up, in updates.

    Args:
        num_train_images: samples of one epoch, summed over processes (repeated
            augmentation's copies counted): the sampler's length x world size.
        effective_batch: batch size x accumulation steps x processes.
        drop_last: whether a partial batch at the end of an epoch is skipped (training: yes).
        budget_images: if set, the length: ``round(budget_images / effective_batch)``
            updates (halves up, at least 1), ``epochs`` = as many as they need.
        epochs: the length without a budget.
        warmup_epochs: warm-up in epochs, clamped by :func:`clamp_warmup_epochs` against the
            plan's epochs; ignored when ``warmup_fraction`` is given.
        warmup_fraction: warm-up as a share of the total updates, in [0, 1).

    The warm-up never takes every update: at most ``total_updates - 1`` (the cosine decay
    gets at least one).
    """
    per_epoch = epoch_updates(num_train_images, effective_batch, drop_last)
    if per_epoch < 1:
        raise ConfigError(f"an epoch of {num_train_images} training images gives no update of the effective batch "
                          f"{effective_batch}; lower --batch-size or --accum-steps")
    if budget_images is None:
        total, run_epochs = epochs * per_epoch, epochs
    else:
        total = max(1, (2 * budget_images + effective_batch) // (2 * effective_batch))  # nearest, halves up
        run_epochs = math.ceil(total / per_epoch)
    warmup_epochs = clamp_warmup_epochs(warmup_epochs, run_epochs)
    if warmup_fraction is not None:
        warmup = round(warmup_fraction * total)
    else:
        warmup = round(warmup_epochs * per_epoch)
    warmup = max(0, min(warmup, total - 1))
    return SchedulePlan(updates_per_epoch=per_epoch, epochs=run_epochs, total_updates=total, warmup_updates=warmup,
                        warmup_epochs=warmup_epochs, budget_images=budget_images)


def evaluation_due(epoch: int, epochs: int, eval_interval: int = 1, evaluations: int | None = None) -> bool:
    """Whether epoch ``epoch`` (0-based) of ``epochs`` ends with an evaluation.

    The last epoch always does. Otherwise every ``eval_interval``-th epoch, or, when
    ``evaluations`` is given, the epochs where ``(epoch + 1) x evaluations / epochs`` passes
    a whole number: ``evaluations`` of them evenly spaced (every epoch when there are fewer
    epochs than that). A budget fixes the images a run sees, not its epochs: 239,616 images
    are 4 epochs of 60,000 and 60 of 4,000, and evaluating a 10,000-image test set after each
    of the 60 would cost the run half its training time again.
    """
    if epoch >= epochs - 1:
        return True
    if evaluations is None:
        return (epoch + 1) % eval_interval == 0
    return (epoch + 1) * evaluations // epochs > epoch * evaluations // epochs


# --- budget_minutes: the measured rate of the run's own training step ------------------------

@dataclass(frozen=True)
class Rate:
    """Training images per second (all processes) over ``updates`` timed updates."""

    images_per_s: float
    updates: int
    seconds: float


def budget_from_minutes(minutes: float, rate: Rate) -> int:
    """``budget_images`` of ``minutes`` of training at ``rate``: ``round(rate x seconds)``."""
    return max(1, round(rate.images_per_s * minutes * 60))


class _Stopwatch:
    """Called after every update of the calibration (``train_one_epoch(after_update=...)``):
    starts the clock after ``warmup`` updates, says stop after ``updates`` more or
    ``seconds``. Under DDP the stop is agreed by every process (one would otherwise wait for
    the others' gradients forever)."""

    def __init__(self, warmup: int, updates: int, seconds: float, device: torch.device):
        self.warmup, self.updates, self.seconds, self.device = warmup, updates, seconds, device
        self.done = 0
        self.start: float | None = None
        self.end: float | None = None

    def begin(self) -> None:
        """The loop starts: without warm-up updates the clock starts now."""
        if self.warmup == 0:
            self.start = time.perf_counter()

    def __call__(self) -> bool:
        self.done += 1
        if self.device.type == "cuda":  # the update's kernels, not only their launch
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if self.done == self.warmup:
            self.start = now
            return False
        if self.done < self.warmup:
            return False
        self.end = now
        stop = self.done - self.warmup >= self.updates or now - self.start >= self.seconds
        flag = torch.tensor([float(stop)], device=self.device)
        return bool(distributed.all_reduce_sum(flag).item())

    def timed(self) -> tuple[int, float]:
        """Updates timed and their seconds."""
        if self.start is None or self.end is None:
            return 0, 0.0
        return self.done - self.warmup, self.end - self.start


class _LiveTeacher:
    """The teacher's outputs computed live, where the run would read a teacher cache: the
    calibration leaves the cache as it is (its rate is that of a run filling the cache; one
    that reads a full cache trains faster, so it ends before the minutes are up)."""

    def __init__(self, teacher: torch.nn.Module, num_classes: int):
        self.teacher, self.num_classes = teacher, num_classes

    def targets(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return teacher_logits(self.teacher, images, self.num_classes)  # (B, K)


def measure_training_rate(run: Any, wrap: Callable[[nn.Module], nn.Module], *, warmup: int = CALIBRATION_WARMUP,
                          updates: int = CALIBRATION_UPDATES, seconds: float = CALIBRATION_SECONDS) -> Rate:
    """Time the training step of ``run`` (a :class:`deit.train.run.Run`): its loader (epoch 0's
    first batches), a copy of its student wrapped by ``wrap`` as the run's is (DDP,
    ``torch.compile``: :func:`deit.train.run.wrap_student`), the teacher when distilling, its
    loss and Mixup, AdamW and the EMA — :func:`deit.train.engine.train_one_epoch` itself.

    ``warmup`` updates are discarded, then up to ``updates`` (or ``seconds``) are timed; an
    epoch too short for both times what it has (a one-update epoch: that update, warm-up
    included, which makes the rate low rather than high).

    Nothing of the run changes: the copy has its own optimizer (at learning rate 0: the same
    work, weights that stay put), the RNG states are put back (a loader's iterator draws its
    base seed from torch's generator; the views themselves are functions of (seed, epoch,
    position), :mod:`deit.data.replay`, so none is consumed) and the data order is a
    function of the epoch. Under DDP every process measures and the slowest one's time is
    the rate (:func:`deit.train.distributed.all_reduce_max`).
    """
    config = run.config
    per_epoch = len(run.train_loader) // config.accum_steps
    warmup = min(warmup, per_epoch - 1)
    watch = _Stopwatch(warmup, updates, seconds, run.device)
    rng = capture_rng_state()
    try:
        student = copy.deepcopy(run.model)  # a DeiT keeps sharing its teacher (DeiT.set_teacher)
        optimizer = build_optimizer(student, 0.0, config.weight_decay)
        ema = None
        if run.ema is not None:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(student, decay=config.model_ema_decay, use_warmup=True)
        scaler = torch.amp.GradScaler("cuda") if run.scaler is not None else None
        stored = run.teacher_cache is not None or run.teacher_memo is not None  # the student runs without it
        live = _LiveTeacher(run.teacher, len(run.classes)) if stored else None
        run.train_loader.sampler.set_epoch(0)
        watch.begin()
        train_one_epoch(wrap(student), run.criterion, run.train_loader,
                        optimizer, device=run.device, epoch=0, num_updates=0, mixup_fn=run.mixup_fn, ema=ema,
                        amp=run.amp, scaler=scaler, accum_steps=config.accum_steps, clip_grad=config.clip_grad,
                        progress=False, teacher_cache=live, max_updates=warmup + updates, after_update=watch)
    finally:
        restore_rng_state(rng)
    timed, elapsed = watch.timed()
    slowest = torch.tensor([elapsed], dtype=torch.float64, device=run.device)
    elapsed = float(distributed.all_reduce_max(slowest).item())
    return Rate(images_per_s=timed * run.effective_batch / max(elapsed, 1e-9), updates=timed, seconds=elapsed)
