"""ConvNeXt teacher: layout, small-image variants, input checks, timm interface."""
from __future__ import annotations

import pytest
import torch

from deit import ConvNeXt, create_model
from deit.distill.teachers import resolve_teacher_name


def test_timm_key_layout():
    keys = set(create_model("convnext_atto").state_dict())
    for key in ("stem.0.weight", "stem.1.weight", "stages.1.downsample.0.weight", "stages.1.downsample.1.weight",
                "stages.0.blocks.0.conv_dw.weight", "stages.0.blocks.0.norm.weight",
                "stages.0.blocks.0.mlp.fc1.weight", "stages.0.blocks.0.mlp.fc2.weight", "stages.0.blocks.0.gamma",
                "head.norm.weight", "head.fc.weight"):
        assert key in keys
    assert not any(k.startswith("stages.0.downsample") for k in keys)


@pytest.mark.parametrize("size", [28, 32])
def test_small_image_variant_keeps_spatial_extent(size):
    model = create_model("convnext_atto_32", num_classes=10, in_channels=1).eval()
    feats = model.forward_features(torch.randn(2, 1, size, size))
    assert feats.shape[:2] == (2, 320) and min(feats.shape[2:]) >= 1
    assert model.forward_head(feats).shape == (2, 10)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 320)


def test_too_small_input_names_the_minimum_and_the_fix():
    with pytest.raises(ValueError, match="at least 32 px.*_32 variant"):
        create_model("convnext_atto")(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        create_model("convnext_atto")(torch.randn(1, 1, 64, 64))


def test_default_teacher_depends_on_image_size():
    assert resolve_teacher_name("ConvNeXt", 224) == "convnext_atto"
    assert resolve_teacher_name("convnext", 28) == "convnext_atto_32"
    assert resolve_teacher_name("timm:resnet18", 28) == "timm:resnet18"


def test_stochastic_depth_and_layer_scale_config():
    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), drop_path_rate=0.4, layer_scale_init=None)
    rates = [b.drop_path.drop_prob for stage in model.stages for b in stage.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert all(b.gamma is None for stage in model.stages for b in stage.blocks)
    with pytest.raises(ValueError, match="depths.*dims"):
        ConvNeXt(depths=(1, 1), dims=(8, 16, 32))


def test_reset_classifier_and_no_weight_decay():
    model = create_model("convnext_atto_32")
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model.no_weight_decay() == set()
    assert model.get_classifier() is model.head.fc
