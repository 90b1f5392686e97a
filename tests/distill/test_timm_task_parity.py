"""Our distillation against timm's own: ``timm/task/token_distillation.py``
(``TokenDistillationTask``, timm >= 1.0.25) holding timm's ``VisionTransformerDistilled``
loaded with our student's weights, against our DeiT, :class:`DistillationLoss` and training
step. Same weights, teacher, batch and settings give the same loss terms (to 1e-6) and,
after one AdamW update from the same state, the same weights.

The correspondence (also in docs/distillation.md, "timm's TokenDistillationTask"):
``task_loss_weight = 1 − α``, ``distill_loss_weight = α`` (or ``α / K`` for our
``kl_reduction="official"``), ``temperature = τ``. The teacher is trained with statistics
other than the student's, so both sides convert the student's batch to the teacher's
normalisation (timm: ``DistillationTeacher.normalize_input`` from the modules'
``pretrained_cfg``; ours: :class:`TeacherInputNorm`).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deit import DeiT
from deit.distill.losses import DistillationLoss
from deit.models.teacher_output import TeacherInputNorm
from deit.train.engine import train_one_epoch
from deit.train.optim import build_optimizer
from tests.helpers import perturb_

task_module = pytest.importorskip("timm.task", reason="timm >= 1.0.25 has timm.task")

K = 6
SMALL = dict(num_classes=K, d_model=32, image_size=16, patch_size=4, encoder_mlp_d=64, encoder_num_heads=4,
             num_encoder_blocks=2)
STUDENT_MEAN, STUDENT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TEACHER_MEAN, TEACHER_STD = (0.5, 0.5, 0.5), (0.25, 0.3, 0.35)  # a teacher trained with other statistics
LR, WEIGHT_DECAY = 1e-3, 0.05


def _teacher() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, K))


def _pair(dtype: torch.dtype = torch.float32):
    """(our DeiT⚗ holding its converted teacher, timm's twin with the same weights, timm's teacher)."""
    torch.manual_seed(0)
    ours = perturb_(DeiT(**SMALL)).to(dtype)
    from timm.models.deit import VisionTransformerDistilled

    twin = VisionTransformerDistilled(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2,
                                      num_classes=K).to(dtype)
    twin.load_state_dict(ours.state_dict())
    twin.pretrained_cfg = {"mean": STUDENT_MEAN, "std": STUDENT_STD}  # what TokenDistillationTask reads
    teacher = _teacher()
    timm_teacher = copy.deepcopy(teacher).to(dtype)
    timm_teacher.pretrained_cfg = {"mean": TEACHER_MEAN, "std": TEACHER_STD}  # what DistillationTeacher reads
    ours.set_teacher(TeacherInputNorm(teacher, student_mean=STUDENT_MEAN, student_std=STUDENT_STD,
                                      teacher_mean=TEACHER_MEAN, teacher_std=TEACHER_STD).to(dtype))
    return ours.train(), twin.train(), timm_teacher


def _batch(dtype: torch.dtype = torch.float32):
    torch.manual_seed(2)
    return torch.randn(8, 3, 16, 16, dtype=dtype), torch.randint(0, K, (8,))


def _timm_task(twin, teacher, kind: str, alpha: float, tau: float, distill_weight: float | None = None):
    from timm.loss import LabelSmoothingCrossEntropy

    return task_module.TokenDistillationTask(
        twin, teacher, criterion=LabelSmoothingCrossEntropy(0.1), distill_type=kind, task_loss_weight=1 - alpha,
        distill_loss_weight=alpha if distill_weight is None else distill_weight, temperature=tau,
        device=torch.device("cpu"), verbose=False).train()


def _our_loss(kind: str, alpha: float, tau: float, kl_reduction: str = "batchmean") -> DistillationLoss:
    from timm.loss import LabelSmoothingCrossEntropy

    return DistillationLoss(LabelSmoothingCrossEntropy(0.1), distillation_type=kind, alpha=alpha, tau=tau,
                            kl_reduction=kl_reduction)


@pytest.mark.parametrize("kind, alpha, tau, reduction", [
    ("hard", 0.5, 1.0, "batchmean"),  # the paper's hard distillation (eq. 2)
    ("soft", 0.1, 3.0, "batchmean"),  # the paper's soft distillation (eq. 1, §5.2's τ and λ)
    ("soft", 0.9, 3.0, "official"),  # the official code's KL reduction: timm's weight α / K
])
def test_loss_terms_equal_timm_token_distillation_task(kind, alpha, tau, reduction):
    ours, twin, timm_teacher = _pair()
    x, y = _batch()
    distill_weight = alpha / K if reduction == "official" else alpha
    task = _timm_task(twin, timm_teacher, kind, alpha, tau, distill_weight)
    theirs = task(x, y)
    student, teacher_logits = ours(x)  # the seed API: (Heads(cls, dist), teacher's logits)
    terms = _our_loss(kind, alpha, tau, reduction).compute(x, student, y, teacher_outputs=teacher_logits)
    exact = dict(rtol=0.0, atol=1e-6)
    torch.testing.assert_close(student.cls, theirs["output"], **exact)
    torch.testing.assert_close(terms.base, theirs["task_loss"], **exact)
    their_distill = theirs["distill_loss"] * (distill_weight / alpha)  # official: timm's KL ÷ K is ours
    torch.testing.assert_close(terms.distillation, their_distill, **exact)
    torch.testing.assert_close(terms.total, theirs["loss"], **exact)
    assert terms.distillation > 1e-3 and terms.base > 1e-3  # neither side is trivially zero


def test_the_teacher_sees_the_same_converted_batch_on_both_sides():
    ours, _, timm_teacher = _pair()
    x, _ = _batch()
    theirs = task_module.DistillationTeacher(timm_teacher)
    converted = theirs.normalize_input(x, torch.tensor(STUDENT_MEAN).view(1, 3, 1, 1),
                                       torch.tensor(STUDENT_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(ours.teacher.renormalise(x), converted, rtol=0.0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ours.teacher_forward(x), theirs(converted), rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("kind, alpha, tau", [("hard", 0.5, 1.0), ("soft", 0.1, 3.0)])
def test_one_adamw_update_gives_the_same_weights_as_timm(kind, alpha, tau):
    """Our training step (``train_one_epoch`` on one batch, our rank-based weight-decay groups)
    against timm's (``task(x, y)["loss"].backward()``, ``create_optimizer_v2('adamw')`` with
    its ``no_weight_decay`` groups), in float64 so that Adam's first update, ``lr · g / |g|``,
    is not decided by rounding where a gradient is near zero."""
    from timm.optim import create_optimizer_v2

    ours, twin, timm_teacher = _pair(torch.float64)
    x, y = _batch(torch.float64)
    task = _timm_task(twin, timm_teacher, kind, alpha, tau)
    their_optimizer = create_optimizer_v2(twin, "adamw", lr=LR, weight_decay=WEIGHT_DECAY)
    their_optimizer.zero_grad()
    task(x, y)["loss"].backward()
    their_optimizer.step()

    before = copy.deepcopy(ours.state_dict())
    our_optimizer = build_optimizer(ours, LR, WEIGHT_DECAY)
    metrics, updates = train_one_epoch(ours, _our_loss(kind, alpha, tau), [(x, y)], our_optimizer,
                                       device=torch.device("cpu"), epoch=0, num_updates=0)
    assert updates == 1
    after, reference = ours.state_dict(), twin.state_dict()
    assert after.keys() == reference.keys()
    moved = 0
    for name, value in after.items():
        torch.testing.assert_close(value, reference[name], rtol=0.0, atol=1e-9, msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved == len(after)  # every tensor took the step (the decayed ones and the others)
