"""Every registered model: forward and backward on CPU; official parameter counts."""
from __future__ import annotations

import pytest
import torch

from deit import DeiT, create_model, list_models
from deit.models.registry import model_family

ALL = list_models()
BIG = {"deit_base_patch16_384", "deit_base_distilled_patch16_384"}


def _input_for(model) -> torch.Tensor:
    size = getattr(model, "image_size", 64)  # ConvNeXt takes any size >= stem*8
    if model_family(model.model_name) == "convnext":
        size = 32 if model.model_name.endswith("_32") else 64
    return torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", [n for n in ALL if n not in BIG])
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
         "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_atto_32"}
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
    with pytest.raises(MissingCheckpointError, match="deit_tiny_patch16_224.safetensors"):
        create_model("deit_tiny_patch16_224", pretrained=True, checkpoint_dir=tmp_path)
