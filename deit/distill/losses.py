"""Distillation losses of DeiT (Touvron et al. 2021, §4 and §5).

Let Z_s be the student's class-head logits, Z_d its distillation-head logits, Z_t the
teacher's logits, y the (possibly Mixup/CutMix-mixed, label-smoothed) target and ψ the
softmax:

* ``none``: L = L_CE(Z_s, y)
* ``soft`` (eq. 1): L = (1-λ) L_CE(Z_s, y) + λ τ² KL(ψ(Z_t/τ) ‖ ψ(Z_d/τ))
* ``hard`` (eq. 2): L = (1-λ) L_CE(Z_s, y) + λ L_CE(Z_d, argmax Z_t), λ = 1/2 in the paper

The class head only ever sees the labels and the distillation head only ever sees the
teacher — the two terms are on different heads (paper §4, "distillation token"). A
single-head student (a plain ViT) gets both terms on its one head: the paper's "usual
distillation" baseline.

Defaults. The paper (§5.2) uses τ = 3.0 and λ = 0.1 for soft distillation; the official
code's command-line defaults are τ = 1.0 and α = 0.5 (α is λ). We follow the paper:
``alpha=None`` means 0.1 for ``soft`` and 0.5 for ``hard``; ``tau=None`` means 3.0.

KL reduction. The KL term is computed on log-probabilities (``log_target=True``: both
distributions are passed as log-softmax, never as softmax, which is what KLDivLoss
expects) and reduced with ``"batchmean"`` — the sum over classes averaged over the batch,
i.e. the KL divergence as defined, whose scale does not depend on the number of classes.
The official code divides the sum by ``outputs.numel()`` (batch × classes), which is our
value divided by K; ``kl_reduction="official"`` reproduces it (useful for comparing with
the official recipe at K = 1000, where it shrinks the soft term a thousandfold).

With ``none`` and a two-head student (a DeiT trained without a teacher), both heads are
supervised by the labels (mean of the two cross-entropies) so that the distillation head
and the fusion remain meaningful; the official code leaves that head untrained.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_choice
from deit.models.teacher_output import TeacherRef, teacher_logits

DISTILLATION_TYPES = ("none", "soft", "hard")
KL_REDUCTIONS = ("batchmean", "official")
PAPER_SOFT_ALPHA, PAPER_HARD_ALPHA, PAPER_TAU = 0.1, 0.5, 3.0


class LossTerms(NamedTuple):
    total: torch.Tensor
    base: torch.Tensor
    distillation: torch.Tensor


def soft_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
                      reduction: str = "batchmean") -> torch.Tensor:
    """τ² KL(ψ(Z_t/τ) ‖ ψ(Z_s/τ)), from log-probabilities on both sides; in float32 at least
    (half-precision logits under AMP are promoted, float64 ones kept)."""
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_p_student = F.log_softmax(student_logits.to(dtype) / tau, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits.to(dtype) / tau, dim=-1)  # (B, K)
    kl_sum = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    denominator = student_logits.shape[0] if reduction == "batchmean" else student_logits.numel()
    return kl_sum * (tau * tau) / denominator


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's hard decision argmax Z_t."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


class DistillationLoss(nn.Module):
    """The DeiT training objective (see the module docstring for the formulas).

    Args:
        base_criterion: loss of the class head against the labels, e.g. timm's
            ``SoftTargetCrossEntropy`` under Mixup/CutMix (see :func:`build_base_criterion`).
        teacher: the frozen teacher, used when the caller does not pass ``teacher_outputs``
            (a :class:`~deit.models.deit.DeiT` with a teacher computes them in ``forward``).
        distillation_type: ``"none"``, ``"soft"`` or ``"hard"``.
        alpha: λ, the weight of the distillation term; None -> paper default by type.
        tau: temperature of soft distillation; None -> 3.0 (paper).
        kl_reduction: ``"batchmean"`` (default) or ``"official"`` (sum / numel).
    """

    def __init__(self, base_criterion: nn.Module, teacher: nn.Module | None = None,
                 distillation_type: str = "none", alpha: float | None = None, tau: float | None = None,
                 kl_reduction: str = "batchmean") -> None:
        super().__init__()
        check_choice("distillation_type", distillation_type, DISTILLATION_TYPES)
        check_choice("kl_reduction", kl_reduction, KL_REDUCTIONS)
        if alpha is None:
            alpha = {"soft": PAPER_SOFT_ALPHA, "hard": PAPER_HARD_ALPHA}.get(distillation_type, 0.0)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"distillation alpha={alpha} is invalid; expected a weight in [0, 1]")
        tau = PAPER_TAU if tau is None else tau
        if not float(tau) > 0:
            raise ConfigError(f"distillation tau={tau} is invalid; expected a temperature > 0")
        self.base_criterion = base_criterion
        self._teacher_ref = TeacherRef(teacher)  # frozen, never a submodule (not in state_dict)
        self.distillation_type = distillation_type
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.kl_reduction = kl_reduction

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher run on the inputs when no ``teacher_outputs`` are passed."""
        return self._teacher_ref.value

    def teacher_logits(self, inputs: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """The teacher's logits (B, K) for ``inputs``, as a loss target (see
        :func:`deit.models.teacher_output.teacher_logits`)."""
        if self.teacher is None:
            raise ConfigError(f"{self.distillation_type} distillation needs a teacher: pass teacher= or "
                              "teacher_outputs=")
        return teacher_logits(self.teacher, inputs, num_classes)

    def compute(self, inputs: torch.Tensor, outputs, labels: torch.Tensor,
                teacher_outputs: torch.Tensor | None = None) -> LossTerms:
        """All terms of the loss. ``outputs`` is a (B, K) tensor or ``(cls_logits, dist_logits)``."""
        two_heads = isinstance(outputs, (tuple, list))
        cls_logits, dist_logits = outputs if two_heads else (outputs, outputs)
        base = self.base_criterion(cls_logits, labels)
        if self.distillation_type == "none":
            if two_heads:
                base = (base + self.base_criterion(dist_logits, labels)) / 2
            return LossTerms(base, base.detach(), torch.zeros((), device=base.device))
        if teacher_outputs is None:
            teacher_outputs = self.teacher_logits(inputs, num_classes=dist_logits.shape[-1])
        if self.distillation_type == "soft":
            distill = soft_distillation(dist_logits, teacher_outputs, self.tau, self.kl_reduction)
        else:
            distill = hard_distillation(dist_logits, teacher_outputs)
        total = (1.0 - self.alpha) * base + self.alpha * distill
        return LossTerms(total, base.detach(), distill.detach())

    def forward(self, inputs: torch.Tensor, outputs, labels: torch.Tensor,
                teacher_outputs: torch.Tensor | None = None) -> torch.Tensor:
        return self.compute(inputs, outputs, labels, teacher_outputs).total


def build_base_criterion(*, mixup_active: bool, smoothing: float) -> nn.Module:
    """timm's criteria as the official recipe: soft-target CE under Mixup/CutMix (which
    already carries the label smoothing), label-smoothing CE, or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()
