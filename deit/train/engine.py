"""Training and evaluation loops (one epoch each).

The teacher runs in eval mode under ``torch.inference_mode`` on exactly the augmented,
mixed batch the student sees (inside :meth:`deit.models.deit.DeiT.forward`, or inside
:class:`deit.distill.losses.DistillationLoss` for a single-head student); its logits, there and in
the teacher agreement of :func:`evaluate`, come from
:func:`deit.models.teacher_output.teacher_logits`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sized

import torch
from torch import nn

from deit.core.errors import DeitError
from deit.core.validation import engine_loop
from deit.data.replay import ReplayMixup
from deit.distill.losses import DistillationLoss
from deit.models.outputs import Heads, StudentTeacher, classifier_heads
from deit.models.teacher_output import teacher_logits
from deit.train import distributed
from deit.train.runtime import resolve_amp


class NonFiniteLossError(DeitError, RuntimeError):
    """The training loss became NaN or infinite; nothing was written after it (the update
    it belongs to never reached the weights)."""


@dataclass
class Amp:
    """Autocast settings: bf16 on CPU; bf16 or fp16 (with a GradScaler) on CUDA."""

    enabled: bool = False
    dtype: torch.dtype = torch.bfloat16

    @classmethod
    def for_device(cls, enabled: bool, dtype: torch.dtype, device: torch.device) -> "Amp":
        """``--amp`` as it runs on ``device``: bf16 on a CPU without bf16 units runs fp32
        (:func:`deit.train.runtime.resolve_amp`)."""
        return cls(enabled=resolve_amp(enabled, dtype, device), dtype=dtype)

    def autocast(self, device: torch.device):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def _split_outputs(outputs: Any) -> tuple[Any, torch.Tensor | None]:
    """``(student, teacher)``: a model that runs its own teacher answers a
    :class:`~deit.models.outputs.StudentTeacher`; any other, the student's outputs alone."""
    if isinstance(outputs, StudentTeacher):
        return outputs
    return outputs, None


def epoch_steps(loader: Sized, accum_steps: int) -> int:
    """The micro-batches an epoch trains on: whole optimizer updates of ``accum_steps`` each."""
    return (len(loader) // accum_steps) * accum_steps


def train_one_epoch(
    model: nn.Module,
    criterion: DistillationLoss,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    epoch: int,
    num_updates: int,
    scheduler=None,
    mixup_fn: Callable | None = None,
    ema=None,
    amp: Amp = Amp(),
    scaler: torch.amp.GradScaler | None = None,
    accum_steps: int = 1,
    clip_grad: float | None = None,
    progress: bool = False,
    teacher_cache=None,
    max_updates: int | None = None,
    after_update: Callable[[], bool] | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``. Returns ``(metrics, num_updates)``; ``train_images`` counts
    the samples that went through the model in this epoch, summed over processes
    (repeated-augmentation copies included).

    Gradient accumulation: ``accum_steps`` micro-batches make one optimizer update (the
    effective batch is ``batch_size * accum_steps * world_size`` whatever fits in memory);
    trailing micro-batches that cannot fill a whole update are skipped.

    ``max_updates`` ends the epoch after that many updates (the last epoch of a budgeted
    run, :mod:`deit.train.budget`): the first ``max_updates * accum_steps`` micro-batches of the
    epoch's order, the batches after them never loaded. ``after_update`` is called after
    every update; True ends the epoch there (the timed calibration of :mod:`deit.train.budget`).

    Replayable batches (``(images, targets, keys)`` from a ``replay=True`` loader,
    :mod:`deit.data.replay`) draw their Mixup/CutMix from the batch's keys; with a
    ``teacher_cache`` (:class:`deit.distill.cache.TeacherCache`) the distillation targets
    come from it — stored outputs, or the live teacher on a miss — and the student runs
    without its teacher.

    One host synchronisation per update: the micro-batches' loss terms stay on the device
    until the update, where a single copy to the host checks that each loss is finite —
    before the optimizer step, so a NaN/Inf loss never reaches the weights or the optimizer
    state — and feeds the running means and the progress bar.
    """
    from tqdm import tqdm

    model.train()
    steps = epoch_steps(loader, accum_steps)
    if max_updates is not None:
        steps = min(steps, max_updates * accum_steps)
    totals = [0.0, 0.0, 0.0]  # loss, base loss, distillation loss, each summed over images
    pending: list[torch.Tensor] = []  # this update's loss terms, (3,) per micro-batch, on the device
    batch_sizes: list[int] = []
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, mininterval=1.0,
               leave=False)
    optimizer.zero_grad(set_to_none=True)
    for step, batch in zip(range(steps), loader):  # range first: no batch is loaded past the last step
        images, targets, keys = batch if len(batch) == 3 else (*batch, None)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets, keys) if isinstance(mixup_fn, ReplayMixup) else \
                mixup_fn(images, targets)
        last_micro_step = (step + 1) % accum_steps == 0
        sync = contextlib.nullcontext() if last_micro_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with amp.autocast(device), engine_loop():
                student_out, teacher_out = _split_outputs(model(images))
                if teacher_cache is not None:
                    teacher_out = teacher_cache.targets(images, keys)  # (B, K)
                terms = criterion.compute(images, student_out, targets, teacher_outputs=teacher_out)
            pending.append(torch.stack([t.detach().float() for t in terms]))  # (3,): total, base, distillation
            batch_sizes.append(images.shape[0])
            loss = terms.total / accum_steps
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        if not last_micro_step:
            continue
        values = torch.stack(pending).tolist()  # (accum_steps, 3): the update's one host sync
        _check_finite(values, epoch=epoch, first_step=step + 1 - len(values))
        if clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        num_updates += 1
        if scheduler is not None:
            scheduler.step_update(num_updates)
        if ema is not None:
            ema.update(unwrap(model), step=num_updates)
        for row, batch in zip(values, batch_sizes):
            seen += batch
            for i, value in enumerate(row):
                totals[i] += value * batch
        pending.clear()
        batch_sizes.clear()
        elapsed = time.perf_counter() - start
        bar.update(len(values))
        bar.set_postfix(loss=f"{values[-1][0]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                        img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
        if after_update is not None and after_update():
            break
    bar.close()
    elapsed = time.perf_counter() - start
    stats = torch.tensor([*totals, float(seen)], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(stats)  # on the device: NCCL reduces device tensors only
    loss, base_loss, distillation_loss, images_all = stats.tolist()  # every process's images
    count = max(images_all, 1.0)
    metrics = {"train_loss": loss / count, "train_base_loss": base_loss / count,
               "train_distillation_loss": distillation_loss / count, "lr": optimizer.param_groups[0]["lr"],
               "train_images": int(images_all), "train_images_per_s": images_all / max(elapsed, 1e-9),
               "train_time_s": elapsed}
    return metrics, num_updates


def _check_finite(values: list[list[float]], *, epoch: int, first_step: int) -> None:
    """Raise :class:`NonFiniteLossError` for the first micro-batch whose loss is NaN/Inf.

    ``values`` holds one ``(total, base, distillation)`` row per micro-batch of an update,
    the first being step ``first_step`` of the epoch.
    """
    for offset, (total, base, distillation) in enumerate(values):
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"the training loss is {total} at epoch {epoch}, step {first_step + offset} (base {base}, "
                f"distillation {distillation}); stopping before any update or checkpoint. "
                "Lower the learning rate, enable --clip-grad, or check the data for NaN/Inf pixels.")


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Images whose label is the top-1 and among the top-``k`` predictions, (2,) on the device."""
    k5 = min(k, logits.shape[1])
    top = logits.topk(k5, dim=1).indices  # (B, k)
    hit = top.eq(targets[:, None])  # (B, k)
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum()])  # (2,)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: Amp = Amp(),
             teacher: nn.Module | None = None, collect_predictions: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 (percent) and loss on ``loader``, summed exactly over processes.

    A DeiT reports its class head (``cls_*``), distillation head (``dist_*``) and its own
    eval output (``acc1`` / ``acc5``): the fusion, the mean of the two heads' logits, unless
    its ``return_logits_type`` selects one head. With ``teacher``, the share of
    images where each head's prediction equals the teacher's (``*agree``) is reported too.
    ``collect_predictions`` adds ``predictions`` / ``targets`` tensors (single process).
    Counts accumulate on the device and reach the host once, after the last batch.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    # every head the model has (the class head; with a distillation head, it and the fusion too)
    two_heads = hasattr(net, "forward_heads")
    heads = ("cls", "dist", "") if two_heads else ("",)
    keys = [f"{h}{name}" for h in heads for name in ("top1", "top5", "agree")] + ["loss", "count"]
    slot = {key: i for i, key in enumerate(keys)}
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)  # exact for counts below 2**53
    predictions, all_targets = [], []
    own_output = getattr(net, "return_logits_type", "fusion")  # a plain HF DeiT has one trained head
    for batch in loader:
        if batch is None:  # every file of the batch unreadable and skipped (collate_readable)
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with amp.autocast(device), engine_loop():
            logits = Heads(*(t.float() for t in classifier_heads(net, images) if t is not None))  # (B, K) each
            outputs = {"": logits.select(own_output)}  # the model's own eval output
            if logits.distilled:
                outputs.update(cls=logits.cls, dist=logits.dist)
            teacher_pred = None if teacher is None else \
                teacher_logits(teacher, images, outputs[""].shape[1]).argmax(dim=1)  # (B,)
        for head, head_logits in outputs.items():
            i = slot[f"{head}top1"]
            sums[i:i + 2] += _topk_correct(head_logits, targets, 5)  # top1, top5
            if teacher_pred is not None:
                sums[slot[f"{head}agree"]] += (head_logits.argmax(1) == teacher_pred).sum()
        sums[slot["loss"]] += nn.functional.cross_entropy(outputs[""], targets, reduction="sum").double()
        sums[slot["count"]] += targets.shape[0]
        if collect_predictions:
            predictions.append(outputs[""].argmax(1))  # (B,)
            all_targets.append(targets)
    distributed.all_reduce_sum(sums)  # on the device: NCCL reduces device tensors only
    reduced = dict(zip(keys, sums.tolist()))
    count = max(reduced["count"], 1.0)
    metrics: dict[str, Any] = {"loss": reduced["loss"] / count, "count": int(reduced["count"])}
    for head in heads:
        prefix = f"{head}_" if head else ""
        metrics[f"{prefix}acc1"] = 100.0 * reduced[f"{head}top1"] / count
        metrics[f"{prefix}acc5"] = 100.0 * reduced[f"{head}top5"] / count
        if teacher is not None:
            metrics[f"{prefix}teacher_agreement"] = 100.0 * reduced[f"{head}agree"] / count
    if collect_predictions:
        metrics["predictions"] = torch.cat(predictions).cpu() if predictions else torch.empty(0, dtype=torch.long)
        metrics["targets"] = torch.cat(all_targets).cpu() if all_targets else torch.empty(0, dtype=torch.long)
    net.train(was_training)
    return metrics
