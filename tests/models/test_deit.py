"""DeiT: token layout, heads per return_logits_type, gradients, and the frozen teacher."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deit import CheckpointError, ConvNeXt, DeiT, MissingCheckpointError, create_model, save_model
from tests.helpers import perturb_

SMALL = dict(num_classes=6, d_model=32, image_size=16, patch_size=4, encoder_mlp_d=64,
             encoder_num_heads=4, num_encoder_blocks=2)
X = lambda b=2: torch.randn(b, 3, 16, 16)  # noqa: E731


def small_teacher(num_classes: int = 6, in_channels: int = 3) -> ConvNeXt:
    return create_model("convnext_atto_32", num_classes=num_classes, in_channels=in_channels)


@pytest.fixture
def teacher_dir(tmp_path):
    """A checkpoint directory holding a trained-looking convnext_atto_32 teacher."""
    teacher = perturb_(small_teacher())
    save_model(teacher, tmp_path / "convnext_atto_32.safetensors")
    return tmp_path


def test_seed_example_constructs_with_every_documented_argument(teacher_dir):
    model = DeiT(num_classes=6, d_model=32, image_size=16, patch_size=4, classifier_mlp_d=None,
                 encoder_mlp_d=64, encoder_num_heads=4, num_encoder_blocks=2, dropout=0.1, encoder_dropout=0.0,
                 encoder_attention_dropout=0.0, patchify_technique="linear", stochastic_depth=False,
                 stochastic_depth_mp=0.0, layer_scale=None, return_logits_type="fusion",
                 teacher_model_name="ConvNeXt", in_channels=3, checkpoint_dir=teacher_dir)
    student, teacher = model(X())
    assert student[0].shape == (2, 6) and student[1].shape == (2, 6)  # training mode: (cls, dist)
    assert teacher.shape == (2, 6)


def test_distillation_token_is_second_and_has_its_own_position_row():
    model = DeiT(**SMALL)
    assert model.pos_embed.shape == (1, 16 + 2, 32)
    assert model.prefix_token_parameters() == [model.cls_token, model.dist_token]
    model.eval()
    x = X()
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda mod, args: captured.setdefault("tokens", args[0]))
    model.forward_features(x)
    tokens = captured["tokens"]  # (B, N+2, D) entering the first block
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0] + model.pos_embed[:, 0]).expand(2, -1))
    torch.testing.assert_close(tokens[:, 1], (model.dist_token[0] + model.pos_embed[:, 1]).expand(2, -1))
    patches = model.patch_embed(x) + model.pos_embed[:, 2:]
    torch.testing.assert_close(tokens[:, 2:], patches)


def test_tokens_are_truncated_normal_std_002():
    models = [DeiT(**SMALL) for _ in range(128)]  # 128 x 32 values per token: the std within ~2.5 %
    for name in ("cls_token", "dist_token"):
        values = torch.cat([getattr(model, name).detach().flatten() for model in models])  # (4096,)
        assert values.std().item() == pytest.approx(0.02, rel=0.15)
        # trunc_normal_(std=0.02) as timm and the official code: bounds at +-2 (absolute)
        assert values.abs().max().item() <= 2.0 and values.mean().abs().item() < 0.002


def test_eval_outputs_per_return_logits_type():
    model = perturb_(DeiT(**SMALL)).eval()
    x = X(3)
    feats = model.forward_features(x)
    cls_logits = model.head(feats[:, 0])
    dist_logits = model.head_dist(feats[:, 1])
    expected = {"classification": cls_logits, "distillation": dist_logits,
                "fusion": (cls_logits + dist_logits) / 2}
    for kind, want in expected.items():
        model.return_logits_type = kind
        out = model.student_model(x)
        assert out.shape == (3, 6)
        torch.testing.assert_close(out, want)
        student, teacher = model(x)
        torch.testing.assert_close(student, want)
        assert teacher is None  # student-only DeiT
    assert not torch.allclose(cls_logits, dist_logits)


def test_training_mode_returns_both_heads_and_gradients_reach_everything():
    model = DeiT(**SMALL, stochastic_depth=True, stochastic_depth_mp=0.1).train()
    cls_logits, dist_logits = model.student_model(X(4))
    (cls_logits.logsumexp(-1).sum() + 2 * dist_logits.logsumexp(-1).sum()).backward()
    for name in ("dist_token", "cls_token", "pos_embed", "head.weight", "head_dist.weight",
                 "patch_embed.proj.weight", "norm.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_heads_are_supervised_independently():
    """A loss on the dist head only must not touch the class head (paper §4)."""
    model = DeiT(**SMALL).train()
    _, dist_logits = model.student_model(X())
    dist_logits.sum().backward()
    assert model.head.weight.grad is None or model.head.weight.grad.abs().sum() == 0
    assert model.head_dist.weight.grad.abs().sum() > 0


def test_return_logits_type_is_validated():
    with pytest.raises(ValueError, match="return_logits_type.*'classification'.*'distillation'.*'fusion'"):
        DeiT(**SMALL, return_logits_type="mean")
    model = DeiT(**SMALL)
    with pytest.raises(ValueError, match="return_logits_type"):
        model.return_logits_type = "both"


def test_classifier_mlp_d_is_accepted_but_heads_stay_linear():
    with pytest.warns(UserWarning, match="classifier_mlp_d"):
        model = DeiT(**SMALL, classifier_mlp_d=2048)
    assert isinstance(model.head, nn.Linear) and isinstance(model.head_dist, nn.Linear)
    assert model.head.in_features == 32


def test_reset_classifier_resets_both_heads():
    model = DeiT(**SMALL)
    model.reset_classifier(3)
    assert model.head.out_features == 3 and model.head_dist.out_features == 3
    model.eval()
    assert model.student_model(X()).shape == (2, 3)
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token"}


# --- teacher -------------------------------------------------------------------------------

def test_teacher_loaded_by_name_is_frozen_and_not_part_of_the_student(teacher_dir):
    model = DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=teacher_dir)
    teacher = model.teacher
    assert isinstance(teacher, ConvNeXt) and teacher.teacher_name == "convnext_atto_32"
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert not any(k.startswith(("teacher", "_teacher", "stages", "stem")) for k in model.state_dict())
    assert "teacher" not in dict(model.named_modules()) and "_teacher" not in dict(model.named_modules())
    optimizer = torch.optim.AdamW(model.parameters())
    assert not teacher_params & {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(not p.requires_grad for p in teacher.parameters())
    model.train()
    assert model.training and not teacher.training
    teacher.train()  # even if a user flips it, forward puts it back
    model(X())
    assert not teacher.training


def test_forward_returns_student_and_gradient_free_teacher_output(teacher_dir):
    reference = perturb_(small_teacher())
    save_model(reference, teacher_dir / "convnext_atto_32.safetensors")
    model = DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=teacher_dir).train()
    x = X(3)
    (cls_logits, dist_logits), teacher_out = model(x)
    assert not teacher_out.requires_grad and teacher_out.grad_fn is None
    torch.testing.assert_close(teacher_out, reference.eval()(x))  # the saved weights, in eval mode
    (cls_logits.sum() + dist_logits.sum()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())


def test_teacher_moves_with_to_and_survives_deepcopy(teacher_dir):
    model = DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=teacher_dir)
    model.to(torch.float64)
    assert next(model.teacher.parameters()).dtype == torch.float64
    student, teacher = model.eval()(X().double())
    assert student.dtype == teacher.dtype == torch.float64
    clone = copy.deepcopy(model)
    assert clone.teacher is model.teacher  # shared, not duplicated (EMA copies)
    assert clone.pos_embed is not model.pos_embed


def test_env_checkpoint_dir_and_explicit_path(teacher_dir, monkeypatch):
    monkeypatch.setenv("DEIT_CHECKPOINT_DIR", str(teacher_dir))
    assert DeiT(**SMALL, teacher_model_name="convnext").teacher is not None
    monkeypatch.delenv("DEIT_CHECKPOINT_DIR")
    path = teacher_dir / "convnext_atto_32.safetensors"
    assert DeiT(**SMALL, teacher_model_name="convnext_atto_32", teacher_checkpoint=path).teacher is not None


def test_missing_teacher_checkpoint_names_the_paths_tried(tmp_path):
    with pytest.raises(MissingCheckpointError) as info:
        DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "convnext_atto_32.safetensors") in message
    assert str(tmp_path / "convnext_atto_32.pth") in message
    assert "num_classes=6" in message and "deit train --model convnext_atto_32" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_explicit_teacher_checkpoint_names_it(tmp_path):
    path = tmp_path / "nowhere" / "teacher.pth"
    with pytest.raises(MissingCheckpointError, match=str(path)):
        DeiT(**SMALL, teacher_model_name="ConvNeXt", teacher_checkpoint=path)


def test_no_checkpoint_configured_explains_the_options():
    with pytest.raises(MissingCheckpointError, match="DEIT_CHECKPOINT_DIR"):
        DeiT(**SMALL, teacher_model_name="ConvNeXt")


def test_teacher_checkpoint_with_wrong_class_count_is_refused(tmp_path):
    save_model(small_teacher(num_classes=9), tmp_path / "convnext_atto_32.pth")
    with pytest.raises(CheckpointError) as info:
        DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "convnext_atto_32.pth") in message and "num_classes=6" in message


def test_teacher_checkpoint_of_another_architecture_is_refused(tmp_path):
    save_model(create_model("deit_pico_patch4_32", num_classes=6), tmp_path / "convnext_atto_32.pth")
    with pytest.raises(CheckpointError, match="does not fit the expected architecture teacher convnext_atto_32"):
        DeiT(**SMALL, teacher_model_name="ConvNeXt", checkpoint_dir=tmp_path)


def test_unknown_teacher_name_lists_the_options():
    with pytest.raises(ValueError, match="teacher_model_name='ResNet-ish'.*'ConvNeXt'.*timm:"):
        DeiT(**SMALL, teacher_model_name="ResNet-ish")


def test_teacher_as_module_and_timm_teacher(tmp_path):
    import timm

    module_teacher = perturb_(small_teacher())
    model = DeiT(**SMALL, teacher_model_name=module_teacher, teacher_inputs="student").eval()
    assert model.teacher is module_teacher and not module_teacher.training
    torch.testing.assert_close(model(X())[1].shape, torch.Size([2, 6]))

    timm_teacher = timm.create_model("resnet10t", num_classes=6)
    save_model(timm_teacher, tmp_path / "timm-resnet10t.safetensors")
    model = DeiT(**SMALL, teacher_model_name="timm:resnet10t", checkpoint_dir=tmp_path).eval()
    x = X()
    torch.testing.assert_close(model(x)[1], timm_teacher.eval()(x))


def test_teacher_with_wrong_output_size_is_caught_at_forward():
    model = DeiT(**SMALL, teacher_model_name=small_teacher(num_classes=4), teacher_inputs="student")
    with pytest.raises(ValueError, match=r"teacher returned logits of shape \(2, 4\).*\(batch, 6\)"):
        model(X())


def test_deit_teacher_for_transformer_teacher_runs(tmp_path):
    teacher = create_model("deit_pico_distilled_patch4_32", num_classes=6, image_size=16)
    save_model(teacher, tmp_path / "deit_pico_distilled_patch4_32.pth")
    model = DeiT(**SMALL, teacher_model_name="deit_pico_distilled_patch4_32", checkpoint_dir=tmp_path)
    _, teacher_out = model.eval()(X())
    assert teacher_out.shape == (2, 6)


def test_module_teacher_given_to_the_constructor_is_not_part_of_the_student():
    """Regression: an nn.Module passed as teacher_model_name used to be registered as a
    submodule, putting the teacher into state_dict(), parameters() and the optimizer."""
    from deit.models import ConvNeXt, DeiT

    teacher = ConvNeXt(num_classes=10, depths=(1, 1), dims=(8, 16), in_channels=3)
    student = DeiT(num_classes=10, d_model=16, image_size=16, patch_size=4, encoder_mlp_d=32, encoder_num_heads=2,
                   num_encoder_blocks=1, teacher_model_name=teacher, teacher_inputs="student")
    teacher_tensors = {id(t) for t in [*teacher.parameters(), *teacher.buffers()]}
    assert not any(id(t) in teacher_tensors for t in student.state_dict(keep_vars=True).values())
    assert not any(id(p) in teacher_tensors for p in student.parameters())
    assert student.teacher is teacher and student.teacher_model_name is teacher
    student.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_teacher_holders_are_shared_by_copies_and_never_registered():
    """EMA copies share the teacher; replacing it on a copy leaves the original's alone;
    assigning a module to teacher_model_name does not make it a submodule."""
    teacher = small_teacher()
    model = DeiT(**SMALL, teacher_model_name=teacher, teacher_inputs="student")
    clone = copy.deepcopy(model)
    assert clone.teacher is teacher and clone.teacher_model_name is teacher
    clone.set_teacher(None)
    assert clone.teacher is None and model.teacher is teacher
    other = small_teacher()
    model.teacher_model_name = other
    assert model.teacher_model_name is other
    assert not any(m is other for m in model.modules())
    assert not any(k.startswith("teacher") for k in model.state_dict())
