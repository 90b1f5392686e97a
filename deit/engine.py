"""Training and evaluation loops (one epoch each).

The teacher runs in eval mode under ``torch.inference_mode`` on exactly the augmented,
mixed batch the student sees (inside :meth:`deit.models.deit.DeiT.forward`, or inside
:class:`deit.losses.DistillationLoss` for a single-head student); its logits, there and in
the teacher agreement of :func:`evaluate`, come from
:func:`deit.models.teacher_output.teacher_logits`.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from deit import distributed
from deit.losses import DistillationLoss
from deit.models.deit import DeiT
from deit.models.teacher_output import teacher_logits


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; nothing was written after it."""


@dataclass
class Amp:
    """Autocast settings: bf16 on CPU; bf16 or fp16 (with a GradScaler) on CUDA."""

    enabled: bool = False
    dtype: torch.dtype = torch.bfloat16

    def autocast(self, device: torch.device):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / torch.compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def _split_outputs(model: nn.Module, outputs: Any) -> tuple[Any, torch.Tensor | None]:
    """DeiT.forward returns (student, teacher); other models return student logits."""
    if isinstance(unwrap(model), DeiT):
        return outputs
    return outputs, None


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
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``. Returns ``(metrics, num_updates)``.

    Gradient accumulation: ``accum_steps`` micro-batches make one optimizer update (the
    effective batch is ``batch_size * accum_steps * world_size`` whatever fits in memory);
    trailing micro-batches that cannot fill a whole update are skipped.
    """
    from tqdm import tqdm

    model.train()
    steps = (len(loader) // accum_steps) * accum_steps
    totals = {"loss": 0.0, "base_loss": 0.0, "distillation_loss": 0.0}
    seen, start = 0, time.perf_counter()
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, mininterval=1.0,
               leave=False)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        last_micro_step = (step + 1) % accum_steps == 0
        sync = contextlib.nullcontext() if last_micro_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with amp.autocast(device):
                student_out, teacher_out = _split_outputs(model, model(images))
                terms = criterion.compute(images, student_out, targets, teacher_outputs=teacher_out)
            loss_value = terms.total.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the training loss is {loss_value} at epoch {epoch}, step {step} (base {terms.base.item()}, "
                    f"distillation {terms.distillation.item()}); stopping before any update or checkpoint. "
                    "Lower the learning rate, enable --clip-grad, or check the data for NaN/Inf pixels.")
            loss = terms.total / accum_steps
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        if last_micro_step:
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
        batch = images.shape[0]
        seen += batch
        totals["loss"] += loss_value * batch
        totals["base_loss"] += terms.base.item() * batch
        totals["distillation_loss"] += terms.distillation.item() * batch
        elapsed = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                        img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start
    stats = torch.tensor([totals["loss"], totals["base_loss"], totals["distillation_loss"], float(seen)],
                         dtype=torch.float64)
    distributed.all_reduce_sum(stats)
    count = max(stats[3].item(), 1.0)
    metrics = {"train_loss": stats[0].item() / count, "train_base_loss": stats[1].item() / count,
               "train_distillation_loss": stats[2].item() / count, "lr": optimizer.param_groups[0]["lr"],
               "train_images_per_s": stats[3].item() / max(elapsed, 1e-9), "train_time_s": elapsed}
    return metrics, num_updates


def _topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> tuple[int, int]:
    k5 = min(k, logits.shape[1])
    top = logits.topk(k5, dim=1).indices  # (B, k)
    hit = top.eq(targets[:, None])
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp: Amp = Amp(),
             teacher: nn.Module | None = None, collect_predictions: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 (percent) and loss on ``loader``, summed exactly over processes.

    A DeiT reports its class head (``cls_*``), distillation head (``dist_*``) and its own
    eval output (``acc1`` / ``acc5``): the fusion, the mean of the two heads' logits, unless
    its ``return_logits_type`` selects one head. With ``teacher``, the share of
    images where each head's prediction equals the teacher's (``*agree``) is reported too.
    ``collect_predictions`` adds ``predictions`` / ``targets`` tensors (single process).
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    two_heads = isinstance(net, DeiT)
    heads = ("cls", "dist", "") if two_heads else ("",)
    counters = {f"{h}{name}": 0.0 for h in heads for name in ("top1", "top5", "agree")}
    loss_sum, total = 0.0, 0
    predictions, all_targets = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with amp.autocast(device):
            if two_heads:
                cls_logits, dist_logits = net.forward_heads(net.forward_features(images))
                fused = (cls_logits.float() + dist_logits.float()) / 2  # (B, K)
                chosen = {"classification": cls_logits, "distillation": dist_logits}.get(net.return_logits_type)
                # the model's own eval output: fusion, or one head (a plain HF DeiT has one trained head)
                outputs = {"cls": cls_logits.float(), "dist": dist_logits.float(),
                           "": fused if chosen is None else chosen.float()}
            else:
                outputs = {"": net(images).float()}
            teacher_pred = None if teacher is None else \
                teacher_logits(teacher, images, outputs[""].shape[1]).argmax(dim=1)  # (B,)
        for head, logits in outputs.items():
            top1, top5 = _topk_correct(logits, targets, 5)
            counters[f"{head}top1"] += top1
            counters[f"{head}top5"] += top5
            if teacher_pred is not None:
                counters[f"{head}agree"] += float((logits.argmax(1) == teacher_pred).sum())
        loss_sum += float(nn.functional.cross_entropy(outputs[""], targets, reduction="sum"))
        total += targets.shape[0]
        if collect_predictions:
            predictions.append(outputs[""].argmax(1).cpu())
            all_targets.append(targets.cpu())
    keys = sorted(counters)
    stats = torch.tensor([counters[k] for k in keys] + [loss_sum, float(total)], dtype=torch.float64)
    distributed.all_reduce_sum(stats)
    count = max(stats[-1].item(), 1.0)
    reduced = dict(zip(keys, stats[:-2].tolist()))
    metrics: dict[str, Any] = {"loss": stats[-2].item() / count, "count": int(stats[-1].item())}
    for head in heads:
        prefix = f"{head}_" if head else ""
        metrics[f"{prefix}acc1"] = 100.0 * reduced[f"{head}top1"] / count
        metrics[f"{prefix}acc5"] = 100.0 * reduced[f"{head}top5"] / count
        if teacher is not None:
            metrics[f"{prefix}teacher_agreement"] = 100.0 * reduced[f"{head}agree"] / count
    if collect_predictions:
        metrics["predictions"] = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
        metrics["targets"] = torch.cat(all_targets) if all_targets else torch.empty(0, dtype=torch.long)
    net.train(was_training)
    return metrics
