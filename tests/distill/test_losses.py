"""Losses against values computed by hand (numpy, from the formulas of the paper)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deit.distill.losses import DistillationLoss, build_base_criterion

CLS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
DIST = torch.tensor([[0.3, 1.5, -0.2], [1.0, -1.0, 0.0]])
TEACHER = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 0.5]])
LABELS = torch.tensor([0, 2])
SOFT_LABELS = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])  # e.g. after Mixup


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ce(logits, target):
    """Cross-entropy with hard (index) or soft (distribution) targets, batch mean."""
    lp = log_softmax(logits)
    target = np.asarray(target)
    if target.ndim == 1:
        return -np.mean(lp[np.arange(len(target)), target])
    return -np.mean((target * lp).sum(-1))


def kl_batchmean(student, teacher, tau):
    ls, lt = log_softmax(np.asarray(student) / tau), log_softmax(np.asarray(teacher) / tau)
    return (np.exp(lt) * (lt - ls)).sum() / len(student) * tau * tau


def test_none_is_plain_cross_entropy_on_the_class_head():
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="none")
    assert loss(None, CLS, LABELS).item() == pytest.approx(ce(CLS, LABELS), rel=1e-6)
    # a two-head student without a teacher: both heads supervised by the labels
    both = loss(None, (CLS, DIST), LABELS).item()
    assert both == pytest.approx((ce(CLS, LABELS) + ce(DIST, LABELS)) / 2, rel=1e-6)


def test_hard_distillation_matches_equation_2():
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="hard")
    assert loss.alpha == 0.5
    terms = loss.compute(None, (CLS, DIST), LABELS, teacher_outputs=TEACHER)
    teacher_labels = TEACHER.argmax(-1).numpy()  # [1, 0]
    assert terms.base.item() == pytest.approx(ce(CLS, LABELS), rel=1e-6)
    assert terms.distillation.item() == pytest.approx(ce(DIST, teacher_labels), rel=1e-6)
    assert terms.total.item() == pytest.approx(0.5 * ce(CLS, LABELS) + 0.5 * ce(DIST, teacher_labels), rel=1e-6)


def test_soft_distillation_matches_equation_1_with_paper_defaults():
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="soft")
    assert (loss.alpha, loss.tau) == (0.1, 3.0)
    total = loss(None, (CLS, DIST), LABELS, teacher_outputs=TEACHER).item()
    want = 0.9 * ce(CLS, LABELS) + 0.1 * kl_batchmean(DIST, TEACHER, 3.0)
    assert total == pytest.approx(want, rel=1e-6)


def test_official_kl_reduction_divides_by_the_number_of_classes():
    ours = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="soft", alpha=1.0, tau=2.0)
    official = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="soft", alpha=1.0, tau=2.0,
                                kl_reduction="official")
    a = ours(None, (CLS, DIST), LABELS, teacher_outputs=TEACHER).item()
    b = official(None, (CLS, DIST), LABELS, teacher_outputs=TEACHER).item()
    assert a == pytest.approx(kl_batchmean(DIST, TEACHER, 2.0), rel=1e-6)
    assert b == pytest.approx(a / 3, rel=1e-6)


def test_kl_is_zero_when_student_equals_teacher_and_positive_otherwise():
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="soft", alpha=1.0)
    assert loss(None, (CLS, TEACHER), LABELS, teacher_outputs=TEACHER).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(None, (CLS, DIST), LABELS, teacher_outputs=TEACHER).item() > 0


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_mixed_soft_labels_go_to_the_class_head_only(kind):
    base = build_base_criterion(mixup_active=True, smoothing=0.1)
    loss = DistillationLoss(base, distillation_type=kind, alpha=0.3, tau=2.0)
    terms = loss.compute(None, (CLS, DIST), SOFT_LABELS, teacher_outputs=TEACHER)
    assert terms.base.item() == pytest.approx(ce(CLS, SOFT_LABELS), rel=1e-6)
    distill = kl_batchmean(DIST, TEACHER, 2.0) if kind == "soft" else ce(DIST, TEACHER.argmax(-1).numpy())
    assert terms.total.item() == pytest.approx(0.7 * ce(CLS, SOFT_LABELS) + 0.3 * distill, rel=1e-6)


def test_each_term_reaches_only_its_own_head():
    cls_logits, dist_logits = CLS.clone().requires_grad_(), DIST.clone().requires_grad_()
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="hard")
    terms = loss.compute(None, (cls_logits, dist_logits), LABELS, teacher_outputs=TEACHER)
    grad_cls, grad_dist = torch.autograd.grad(terms.total, (cls_logits, dist_logits))
    p_cls = torch.softmax(CLS, -1)
    p_dist = torch.softmax(DIST, -1)
    want_cls = 0.5 * (p_cls - torch.nn.functional.one_hot(LABELS, 3)) / 2
    want_dist = 0.5 * (p_dist - torch.nn.functional.one_hot(TEACHER.argmax(-1), 3)) / 2
    torch.testing.assert_close(grad_cls, want_cls)
    torch.testing.assert_close(grad_dist, want_dist)


def test_label_smoothing_criterion_value():
    base = build_base_criterion(mixup_active=False, smoothing=0.1)
    lp = log_softmax(CLS)
    want = np.mean(0.9 * -lp[np.arange(2), LABELS.numpy()] + 0.1 * -lp.mean(-1))
    assert base(CLS, LABELS).item() == pytest.approx(want, rel=1e-6)
    assert isinstance(build_base_criterion(mixup_active=False, smoothing=0.0), nn.CrossEntropyLoss)


def test_teacher_module_is_run_when_no_outputs_given_and_never_registered():
    teacher = nn.Linear(4, 3)
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher=teacher, distillation_type="hard")
    assert not list(loss.parameters()) and "teacher" not in loss.state_dict()
    x = torch.randn(2, 4)
    got = loss(x, (CLS, DIST), LABELS).item()
    with torch.no_grad():
        want = loss(x, (CLS, DIST), LABELS, teacher_outputs=teacher(x)).item()
    assert got == pytest.approx(want)
    assert not teacher.training


@pytest.mark.parametrize("kwargs, match", [
    (dict(distillation_type="medium"), "distillation_type"),
    (dict(distillation_type="soft", alpha=1.5), "alpha"),
    (dict(distillation_type="soft", tau=0.0), "tau"),
    (dict(kl_reduction="sum"), "kl_reduction"),
])
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(nn.CrossEntropyLoss(), **kwargs)


def test_distillation_without_teacher_is_a_clear_error():
    loss = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="hard")
    with pytest.raises(ValueError, match="needs a teacher"):
        loss(torch.randn(2, 4), (CLS, DIST), LABELS)


def test_hand_values_are_not_degenerate():
    assert not math.isclose(ce(CLS, LABELS), ce(DIST, TEACHER.argmax(-1).numpy()))
