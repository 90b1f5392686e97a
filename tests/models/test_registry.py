"""Every registered model: forward and backward on CPU; official parameter counts."""
from __future__ import annotations

import pytest
import torch

from deit import DeiT, create_model, list_models, register_model
from deit.models.registry import model_family

ALL = list_models()
BIG = {"deit_base_patch16_384", "deit_base_distilled_patch16_384"}
BASE = {"deit_base_patch16_224", "deit_base_distilled_patch16_224"}  # ~2.5 s each: the slow tier


def _input_for(model) -> torch.Tensor:
    size = getattr(model, "image_size", 64)  # ConvNeXt takes any size >= stem*8, ResNet any size
    if model_family(model.model_name) in ("convnext", "resnet"):
        size = 32 if model.model_name.endswith("_32") else 64
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BASE else n
                                  for n in ALL if n not in BIG])
def test_forward_backward_every_registered_model(name):
    model = create_model(name, num_classes=7).train()
    x = _input_for(model)
    out = model.student_model(x) if isinstance(model, DeiT) else model(x)
    outputs = out if isinstance(out, tuple) else (out,)
    assert all(o.shape == (2, 7) for o in outputs)
    sum(o.float().logsumexp(-1).sum() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    model.eval()
    with torch.no_grad():
        out = model.student_model(x) if isinstance(model, DeiT) else model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG))
def test_forward_backward_384px_models(name):
    model = create_model(name, num_classes=3).train()
    out = model.student_model(torch.randn(1, 3, 384, 384)) if isinstance(model, DeiT) else \
        model(torch.randn(1, 3, 384, 384))
    outputs = out if isinstance(out, tuple) else (out,)
    sum(o.sum() for o in outputs).backward()
    assert model.pos_embed.grad is not None and model.pos_embed.shape[1] == 24 * 24 + model.num_prefix_tokens


@pytest.mark.parametrize("name, millions", [
    ("deit_tiny_patch16_224", 5.72), ("deit_tiny_distilled_patch16_224", 5.91),
    ("deit_small_patch16_224", 22.05), ("deit_small_distilled_patch16_224", 22.44),
    ("deit_base_patch16_224", 86.57), ("deit_base_distilled_patch16_224", 87.34),
    ("convnext_atto", 3.70), ("convnext_tiny", 28.59),
])
def test_official_parameter_counts(name, millions):
    with torch.device("meta"):
        model = create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "deit_small_patch16_224", "convnext_atto"])
def test_parameter_counts_equal_timm(name):
    import timm

    ours = sum(p.numel() for p in create_model(name).parameters())
    theirs = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    assert ours == theirs


def test_names_include_timm_names_and_small_image_variants():
    expected = {f"deit_{s}_patch16_224" for s in ("tiny", "small", "base")} | \
        {f"deit_{s}_distilled_patch16_224" for s in ("tiny", "small", "base")} | \
        {"deit_base_patch16_384", "deit_base_distilled_patch16_384", "deit_tiny_distilled_patch4_32",
         "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_atto_32",
         "resnet8_32", "resnet14_32", "resnet20_32", "resnet8w4_32", "resnet14w2_32", "deit_pico_patch7_28",
         "deit_pico_distilled_patch7_28"}
    assert expected <= set(ALL)
    assert list_models("distilled_patch16") == sorted(n for n in ALL if "distilled_patch16" in n)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="unknown model name 'deit_tiny_distiled_patch16_224'.*did you mean"):
        create_model("deit_tiny_distiled_patch16_224")


def test_overrides_and_pretrained_from_checkpoint_dir(tmp_path):
    from deit import MissingCheckpointError, save_model

    model = create_model("deit_pico_distilled_patch4_32", num_classes=4, image_size=28, patchify_technique="linear")
    assert model.image_size == 28 and model.num_classes == 4 and model.patch_embed.technique == "linear"
    save_model(model, tmp_path / "deit_pico_distilled_patch4_32.safetensors")
    again = create_model("deit_pico_distilled_patch4_32", pretrained=True, checkpoint_dir=tmp_path, num_classes=4,
                         image_size=28, patchify_technique="linear")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value)
    with pytest.raises(MissingCheckpointError, match="downloads are disabled.*deit_tiny_patch16_224.safetensors"):
        create_model("deit_tiny_patch16_224", pretrained=True, checkpoint_dir=tmp_path, download=False)


# --- timm keyword names ------------------------------------------------------------------

def test_timm_drop_path_rate_gives_timms_per_block_rates():
    import timm

    with torch.device("meta"):
        ours = create_model("deit_small_patch16_224", drop_path_rate=0.1)
        theirs = timm.create_model("deit_small_patch16_224", drop_path_rate=0.1)
    assert ours.config["stochastic_depth"] is True and ours.config["stochastic_depth_mp"] == 0.1
    assert [b.drop_path1.drop_prob for b in ours.blocks] == \
        pytest.approx([getattr(b.drop_path1, "drop_prob", 0.0) for b in theirs.blocks])
    assert create_model("deit_pico_patch4_32", drop_path_rate=0.0).config["stochastic_depth"] is False


def test_timm_names_build_the_same_vit_as_ours_and_as_timm():
    import timm

    aliased = create_model("deit_pico_distilled_patch4_32", img_size=48, in_chans=1, drop_rate=0.1,
                           proj_drop_rate=0.2, attn_drop_rate=0.3, global_pool="token", num_classes=5)
    native = create_model("deit_pico_distilled_patch4_32", image_size=48, in_channels=1, dropout=0.1,
                          encoder_dropout=0.2, encoder_attention_dropout=0.3, num_classes=5)
    assert aliased.config == native.config
    with torch.device("meta"):
        theirs = timm.create_model("deit_tiny_distilled_patch16_224", img_size=48, in_chans=1, num_classes=5)
        ours = create_model("deit_tiny_distilled_patch16_224", img_size=48, in_chans=1, num_classes=5)
    shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: shapes[k] for k in ("pos_embed", "patch_embed.proj.weight", "head.weight")} == \
        {k: ours.state_dict()[k].shape for k in ("pos_embed", "patch_embed.proj.weight", "head.weight")}


@pytest.mark.parametrize("name, family", [("convnext_atto_32", "ConvNeXt"), ("resnet14_32", "ResNet")])
def test_timm_names_for_convnets(name, family):
    aliased = create_model(name, in_chans=1, drop_rate=0.2, drop_path_rate=0.1, global_pool="avg")
    native = create_model(name, in_channels=1, head_dropout=0.2, drop_path_rate=0.1)
    assert aliased.config == native.config
    with pytest.raises(ValueError, match=f"img_size=64 does not apply to {name}: {family} takes any input size"):
        create_model(name, img_size=64)
    with pytest.raises(ValueError, match=f"global_pool='token' is not supported by {name}.*'avg'"):
        create_model(name, global_pool="token")


@pytest.mark.parametrize("name, kwargs, message", [
    ("deit_pico_patch4_32", dict(img_size=32, image_size=32), "img_size=32 .* and image_size=32"),
    ("deit_pico_patch4_32", dict(in_chans=1, in_channels=1), "in_chans=1 .* and in_channels=1"),
    ("deit_pico_patch4_32", dict(drop_rate=0.1, dropout=0.1), "drop_rate=0.1 .* and dropout=0.1"),
    ("deit_pico_patch4_32", dict(drop_path_rate=0.1, stochastic_depth_mp=0.1),
     "drop_path_rate=0.1 .* and stochastic_depth_mp=0.1"),
    ("deit_pico_patch4_32", dict(drop_path_rate=0.1, stochastic_depth=True), "drop_path_rate=0.1 .* and stochastic_depth"),
    ("convnext_atto_32", dict(drop_rate=0.1, head_dropout=0.1), "drop_rate=0.1 .* and head_dropout=0.1"),
])
def test_alias_with_its_native_name_is_an_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


def test_vit_global_pool_other_than_token_is_an_error():
    with pytest.raises(ValueError, match="global_pool='avg' is not supported by deit_pico_patch4_32.*'token'"):
        create_model("deit_pico_patch4_32", global_pool="avg")


def test_registered_models_carry_their_pretrained_configuration(monkeypatch):
    from deit.models import PretrainedCfg, get_pretrained_cfg, registry

    for table in ("_MODELS", "_FAMILY", "_PRETRAINED"):  # the registrations below end with the test
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    cfg = PretrainedCfg(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), num_classes=10, label_set=None)

    @register_model("vit", pretrained_cfg=cfg)
    def my_vit_28(**kw):
        return DeiT(image_size=28, patch_size=4, d_model=32, encoder_num_heads=2, num_encoder_blocks=1,
                    encoder_mlp_d=64, in_channels=1, **kw)

    @register_model("vit")
    def my_vit_without_cfg(**kw):
        return DeiT(image_size=28, patch_size=4, d_model=32, encoder_num_heads=2, num_encoder_blocks=1, **kw)

    assert get_pretrained_cfg("my_vit_28") is cfg and not cfg.has_weights
    with pytest.raises(ValueError, match="'my_vit_without_cfg' was registered without a pretrained configuration"):
        get_pretrained_cfg("my_vit_without_cfg")
