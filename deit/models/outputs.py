"""What a classifier answers: one named structure for its heads, read by training, evaluation,
export and prediction alike, so no caller asks which class a model is.

* :class:`Heads` — the class head and, for a distilled model, the distillation head, each
  ``(B, K)`` logits; :attr:`Heads.fused` is the prediction at test time, the mean of the two
  heads' logits, as the official code and timm's ``VisionTransformerDistilled.forward_head`` in
  eval mode (the paper's late fusion, §4, adds the two softmax outputs; the argmax rarely
  differs). It is a tuple ``(cls, dist)``, the shape the seed API's training output has.
* :class:`StudentTeacher` — ``DeiT.forward``'s ``(student, teacher)`` pair (the seed API), the
  teacher's logits ``None`` without a teacher.
* :func:`classifier_heads` — every head of any classifier in one pass: a model with
  ``forward_heads`` (DeiT⚗) gives both, any other ``nn.Module`` its one output as the class head.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["RETURN_LOGITS_TYPES", "Heads", "StudentTeacher", "classifier_heads"]

# what a DeiT returns in eval mode (its ``return_logits_type``, the seed API's values)
RETURN_LOGITS_TYPES = ("classification", "distillation", "fusion")


class Heads(NamedTuple):
    """A classifier's logits per head: ``cls`` (B, K) and ``dist`` (B, K) or ``None``."""

    cls: torch.Tensor
    dist: torch.Tensor | None = None

    @property
    def distilled(self) -> bool:
        return self.dist is not None

    @property
    def fused(self) -> torch.Tensor:
        """The mean of the two heads' logits (B, K); the class head alone for a one-head model."""
        if self.dist is None:
            return self.cls
        return (self.cls + self.dist) / 2  # (B, K)

    def select(self, return_logits_type: str) -> torch.Tensor:
        """The (B, K) logits ``return_logits_type`` names: ``classification`` (the class head),
        ``distillation`` (the distillation head) or ``fusion``."""
        if return_logits_type == "classification" or self.dist is None:
            return self.cls
        if return_logits_type == "distillation":
            return self.dist
        if return_logits_type == "fusion":
            return self.fused
        raise ValueError(f"return_logits_type={return_logits_type!r} is invalid; expected one of "
                         f"{', '.join(RETURN_LOGITS_TYPES)}")


class StudentTeacher(NamedTuple):
    """``DeiT.forward``'s output: the student's (``Heads`` in training mode, the ``(B, K)`` logits
    its ``return_logits_type`` selects in eval mode) and the teacher's ``(B, K)`` logits or ``None``."""

    student: Heads | torch.Tensor
    teacher: torch.Tensor | None


def classifier_heads(model: nn.Module, images: torch.Tensor) -> Heads:
    """Every head of ``model`` for ``images`` (B, C, H, W) in one pass, whatever its mode: a
    model with ``forward_heads`` (DeiT⚗: ``forward_heads(forward_features(x))``) gives both heads,
    any other classifier its output as the class head."""
    forward_heads = getattr(model, "forward_heads", None)
    if forward_heads is None:
        return Heads(model(images))  # (B, K)
    return Heads(*forward_heads(model.forward_features(images)))
