"""ViT: configuration checks, patchify techniques, regularisation knobs, timm interface."""
from __future__ import annotations

import pytest
import torch

from deit import ViT
from deit.models.layers import DropPath, LayerScale
from tests.conftest import perturb_

SMALL = dict(num_classes=5, d_model=32, image_size=16, patch_size=4, encoder_mlp_d=64,
             encoder_num_heads=4, num_encoder_blocks=2)


def test_forward_shape_and_tokens():
    model = ViT(**SMALL).eval()
    x = torch.randn(3, 3, 16, 16)
    feats = model.forward_features(x)
    assert feats.shape == (3, 1 + 16, 32)  # class token + 4x4 patches
    assert model(x).shape == (3, 5)
    assert model.pos_embed.shape == (1, 17, 32)


def test_linear_and_convolutional_patchify_agree_given_same_weights():
    conv = perturb_(ViT(**SMALL, patchify_technique="convolutional")).eval()
    lin = ViT(**SMALL, patchify_technique="linear").eval()
    sd = conv.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].reshape(32, -1)  # (D, C*p*p)
    lin.load_state_dict(sd)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(lin(x), conv(x), atol=1e-5, rtol=1e-5)


def test_linear_patchify_loads_conv_checkpoint_through_filter(tmp_path):
    from deit import load_pretrained

    conv = perturb_(ViT(**SMALL, patchify_technique="convolutional")).eval()
    torch.save(conv.state_dict(), tmp_path / "conv.pth")
    lin = ViT(**SMALL, patchify_technique="linear").eval()
    load_pretrained(lin, tmp_path / "conv.pth")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(lin(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, names", [
    (dict(image_size=30, patch_size=4), ["image_size", "patch_size"]),
    (dict(d_model=30, encoder_num_heads=4), ["d_model", "encoder_num_heads"]),
    (dict(patchify_technique="fourier"), ["patchify_technique", "'linear'", "'convolutional'"]),
    (dict(dropout=1.5), ["dropout"]),
    (dict(num_encoder_blocks=0), ["num_encoder_blocks"]),
    (dict(stochastic_depth=False, stochastic_depth_mp=0.1), ["stochastic_depth_mp", "stochastic_depth"]),
    (dict(layer_scale=-1.0), ["layer_scale"]),
    (dict(classifier_mlp_d=0), ["classifier_mlp_d"]),
    (dict(num_classes=-1), ["num_classes"]),
])
def test_configuration_errors_name_the_parameter(kwargs, names):
    cfg = {**SMALL, **kwargs}
    with pytest.raises(ValueError) as info:
        ViT(**cfg)
    for name in names:
        assert name in str(info.value)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        ViT(10)  # type: ignore[misc]


def test_stochastic_depth_rises_linearly_to_max():
    model = ViT(**{**SMALL, "num_encoder_blocks": 5}, stochastic_depth=True, stochastic_depth_mp=0.2)
    rates = [b.drop_path1.drop_prob for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert all(b.drop_path1.drop_prob == b.drop_path2.drop_prob for b in model.blocks)


def test_drop_path_is_identity_in_eval_and_unbiased_in_training():
    layer = DropPath(0.5)
    x = torch.ones(20000, 4)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    out = layer(x)
    kept = (out[:, 0] != 0).float().mean().item()
    assert 0.47 < kept < 0.53
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)  # rescaled by 1/keep
    assert torch.all((out == 0) | (out == 2.0))


def test_layer_scale_present_only_when_requested():
    with_ls = ViT(**SMALL, layer_scale=1e-4)
    assert isinstance(with_ls.blocks[0].ls1, LayerScale)
    assert torch.allclose(with_ls.blocks[0].ls1.gamma, torch.full((32,), 1e-4))
    assert "blocks.0.ls1.gamma" in with_ls.state_dict()
    without = ViT(**SMALL)
    assert not any("gamma" in k for k in without.state_dict())


def test_classifier_mlp_head_is_tanh_pre_logits():
    model = ViT(**SMALL, classifier_mlp_d=48).eval()
    assert model.pre_logits.fc.out_features == 48
    assert isinstance(model.pre_logits.act, torch.nn.Tanh)
    x = torch.randn(2, 3, 16, 16)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 48) and pre.abs().max() <= 1.0
    torch.testing.assert_close(model.head(pre), model(x))


def test_reset_classifier_and_feature_extractor():
    model = ViT(**SMALL)
    model.reset_classifier(7)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 7)
    assert model.num_classes == 7 and model.config["num_classes"] == 7
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 32)


def test_no_weight_decay_names_exist():
    model = ViT(**SMALL)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.no_weight_decay() <= set(params)


def test_dropout_rates_are_wired_to_the_documented_places():
    model = ViT(**SMALL, dropout=0.1, encoder_dropout=0.2, encoder_attention_dropout=0.3)
    assert model.pos_drop.p == 0.1 and model.head_drop.p == 0.1
    block = model.blocks[0]
    assert block.attn.proj_drop.p == 0.2 and block.mlp.drop1.p == 0.2 and block.mlp.drop2.p == 0.2
    assert block.attn.attn_drop == 0.3


def test_attention_matches_explicit_softmax_attention():
    model = perturb_(ViT(**SMALL)).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 32)
    q, k, v = attn.qkv_heads(x)
    probs = attn.attention_map(x)  # (B, H, N, N)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 17))
    manual = (probs @ v).transpose(1, 2).reshape(2, 17, 32)
    torch.testing.assert_close(attn(x), attn.proj(manual), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 1, 16, 16), "input channel"),
    (torch.randn(2, 3, 20, 20), "16x16"),
    (torch.randn(3, 16, 16), "4-D"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating-point"),
])
def test_bad_input_gives_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        ViT(**SMALL)(bad)
