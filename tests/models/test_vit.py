"""ViT: configuration checks, patchify techniques, regularisation knobs, timm interface."""
from __future__ import annotations

import pytest
import torch

from deit import ViT
from deit.models.layers import DropPath, LayerScale
from tests.helpers import perturb_

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


# --- convolutional stem (Xiao et al. 2021) ---------------------------------------------------

STEM = dict(num_classes=5, d_model=32, encoder_mlp_d=64, encoder_num_heads=4, num_encoder_blocks=2,
            in_channels=1, patchify_technique="conv_stem")


@pytest.mark.parametrize("d_model, patch, channels", [(192, 16, [24, 48, 96, 192]), (64, 8, [16, 32, 64]),
                                                      (64, 4, [32, 64]), (32, 12, [16, 32])])
def test_conv_stem_channels_double_up_to_the_width(d_model, patch, channels):
    from deit.models.layers import conv_stem_channels

    assert conv_stem_channels(d_model, patch) == channels  # Xiao et al. 2021 §3: 24-48-96-192 at width 192


@pytest.mark.parametrize("image_size, patch, grid", [(28, 8, 4), (32, 8, 4), (28, 4, 7), (224, 16, 14), (24, 12, 2)])
def test_conv_stem_grid_and_token_count(image_size, patch, grid):
    model = ViT(**STEM, image_size=image_size, patch_size=patch).eval()
    assert model.patch_embed.grid_size == (grid, grid)
    tokens = model.forward_features(torch.rand(2, 1, image_size, image_size))
    assert tokens.shape == (2, 1 + grid * grid, 32)
    assert model.pos_embed.shape == (1, 1 + grid * grid, 32)


def _timm_hybrid_vit(image_size: int, patch: int, ours: ViT):
    """timm's hybrid ViT with its ``ConvStem`` set up as Xiao et al.'s stem: stride-2 3x3
    Conv-BN-ReLU steps, then a convolution with bias and no norm (timm's ``vit_base_mci_224`` pattern)."""
    from functools import partial

    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import ConvStem

    from deit.models.layers import conv_stem_channels

    channels = conv_stem_channels(32, patch)
    rest = patch >> len(channels)
    stem = ConvStem(in_chans=1, depth=len(channels) + 1, channels=(*channels, 32), kernel_size=(3,) * len(channels)
                    + (rest,), stride=(2,) * len(channels) + (rest,), padding=(1,) * len(channels) + (0,))
    return VisionTransformer(img_size=image_size, patch_size=1, in_chans=1, num_classes=5, embed_dim=32, depth=2,
                             num_heads=4, mlp_ratio=2.0, embed_layer=partial(HybridEmbed, backbone=stem, proj=False))


@pytest.mark.parametrize("image_size, patch", [(28, 8), (32, 4), (24, 12)])
def test_conv_stem_equals_timms_hybrid_vit_given_the_same_weights(image_size, patch):
    ours = perturb_(ViT(**STEM, image_size=image_size, patch_size=patch))
    theirs = _timm_hybrid_vit(image_size, patch, ours)
    sd = {}
    for key, value in ours.state_dict().items():
        if key.startswith("patch_embed.stem."):
            key = key.replace("patch_embed.stem.", "patch_embed.backbone.")
        elif key.startswith("patch_embed.proj."):
            key = key.replace("patch_embed.proj.", f"patch_embed.backbone.{len(ours.patch_embed.stem)}.conv.")
        sd[key] = value
    theirs.load_state_dict(sd)
    x = torch.rand(3, 1, image_size, image_size)
    for mode in ("eval", "train"):  # train: BatchNorm on the batch's statistics in both
        getattr(ours, mode)(), getattr(theirs, mode)()
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_conv_stem_learns_through_every_layer():
    model = ViT(**STEM, image_size=28, patch_size=8).train()
    model(torch.rand(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.patch_embed.parameters())


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=28, patch_size=7), "patch_size=7 does not fit patchify_technique='conv_stem'"),
    (dict(image_size=4, patch_size=8), "image_size=4 is smaller than patch_size=8"),
])
def test_conv_stem_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViT(**STEM, **kwargs)
