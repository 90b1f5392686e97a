"""Optimizer and schedule of the DeiT recipe.

Weight decay by parameter rank (nanoGPT): matrices and convolution kernels decay; biases,
norm weights and LayerScale gammas (1-D) do not, nor do the names a model lists in
``no_weight_decay()`` (class / distillation tokens, position embedding).
"""
from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay; the fused kernel on CUDA, foreach on CPU."""
    on_cuda = next(model.parameters()).is_cuda
    kwargs = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), eps=1e-8, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float,
                    warmup_lr: float):
    """timm's cosine schedule with linear warm-up, stepped once per optimizer update so that
    short runs and gradient accumulation get a smooth curve (``step_update(n)``)."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=max(total_steps - warmup_steps, 1), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=warmup_lr, warmup_prefix=True,
                             t_in_epochs=False)
