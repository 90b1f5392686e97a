"""One output contract: the heads of any classifier, read the same way by training, evaluation
and export, whatever the model's class."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deit.deploy.export import ExportHead
from deit.models.outputs import Heads, StudentTeacher, classifier_heads
from deit.models.registry import build_model
from deit.train.engine import evaluate


def test_fused_is_the_mean_of_the_two_heads_logits():
    cls, dist = torch.tensor([[1.0, -3.0]]), torch.tensor([[3.0, 1.0]])
    heads = Heads(cls, dist)
    assert torch.equal(heads.fused, torch.tensor([[2.0, -1.0]]))
    assert heads.select("classification") is cls and heads.select("distillation") is dist
    assert torch.equal(heads.select("fusion"), heads.fused)
    one = Heads(cls)
    assert not one.distilled and one.fused is cls and one.select("distillation") is cls
    with pytest.raises(ValueError, match="return_logits_type='mean'"):
        heads.select("mean")


def test_heads_are_the_seed_apis_training_tuple():
    model = build_model("deit_pico_distilled_patch4_32", num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)  # (B, C, H, W)
    student, teacher = model(x)
    assert isinstance(student, Heads) and teacher is None
    cls_logits, dist_logits = student  # the seed API's (cls, dist) unpacking
    assert cls_logits.shape == dist_logits.shape == (2, 5)
    assert isinstance(model(x), StudentTeacher)


@pytest.mark.parametrize("kind", ["classification", "distillation", "fusion"])
def test_eval_output_is_the_heads_selection(kind):
    model = build_model("deit_pico_distilled_patch4_32", num_classes=5, return_logits_type=kind).eval()
    x = torch.randn(2, 3, 32, 32)  # (B, C, H, W)
    with torch.no_grad():
        heads = classifier_heads(model, x)
        assert torch.allclose(model.student_model(x), heads.select(kind))
        assert torch.allclose(model(x).student, heads.select(kind))


def test_a_one_head_model_gives_its_output_as_the_class_head():
    model = build_model("deit_pico_patch4_32", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)  # (B, C, H, W)
    with torch.no_grad():
        heads = classifier_heads(model, x)
        assert heads.dist is None and torch.equal(heads.cls, model(x))


class TwoHeads(nn.Module):
    """A distilled classifier that is not our DeiT: features and two linear heads."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
        self.head, self.head_dist = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward_features(self, x):
        return self.features(x)  # (B, 8)

    def forward_heads(self, x):
        return Heads(self.head(x), self.head_dist(x))  # (B, 3) each

    def forward(self, x):
        return self.forward_heads(self.forward_features(x)).fused


def test_evaluation_and_export_read_the_contract_not_the_class():
    torch.manual_seed(0)
    model = TwoHeads().eval()
    images, targets = torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,))
    metrics = evaluate(model, [(images, targets)], device=torch.device("cpu"))
    heads = classifier_heads(model, images)
    for prefix, logits in (("cls_", heads.cls), ("dist_", heads.dist), ("", heads.fused)):
        expected = 100.0 * (logits.argmax(1) == targets).float().mean().item()
        assert metrics[f"{prefix}acc1"] == pytest.approx(expected)
    exported = ExportHead(model, head="all")
    cls_logits, dist_logits, fused = exported(images)
    assert torch.equal(fused, heads.fused) and torch.equal(cls_logits, heads.cls)
