"""Checkpoint interop: numerical equivalence with timm and HF transformers given the same
(random) weights, load-time adaptation, safe loading, and conversion."""
from __future__ import annotations

import argparse
import pickle
import re

import pytest
import torch

from deit import (
    CheckpointError,
    DeiT,
    MissingCheckpointError,
    build_from_checkpoint,
    convert_checkpoint,
    create_model,
    load_pretrained,
    save_model,
)
from tests.helpers import RunsCode, perturb_, to_hf_v4

timm = pytest.importorskip("timm")

HEADS = ("classification", "distillation", "fusion")


def _timm_heads(model, x):
    """cls, dist and fused logits of a timm distilled DeiT in eval mode."""
    feats = model.forward_features(x)
    cls_logits, dist_logits = model.head(feats[:, 0]), model.head_dist(feats[:, 1])
    return {"classification": cls_logits, "distillation": dist_logits, "fusion": model(x)}


@pytest.mark.parametrize("container", ["plain", "official", "ddp"])
def test_timm_deit_tiny_distilled_equivalence(tmp_path, container):
    ref = perturb_(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)).eval()
    sd = ref.state_dict()
    if container == "official":  # official DeiT training checkpoint: args is an argparse.Namespace
        obj = {"model": sd, "epoch": 299, "args": argparse.Namespace(model="deit_tiny_distilled_patch16_224")}
    elif container == "ddp":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = sd
    torch.save(obj, tmp_path / "ckpt.pth")
    ours = create_model("deit_tiny_distilled_patch16_224")
    load_pretrained(ours, tmp_path / "ckpt.pth")
    ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = _timm_heads(ref, x)
        for kind in HEADS:
            ours.return_logits_type = kind
            torch.testing.assert_close(ours.student_model(x), want[kind], atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", ["compile(ddp(m))", "ddp(compile(m))"])
def test_a_state_dict_of_nested_wrappers_loads(tmp_path, order):
    class Replica(torch.nn.Module):  # DDP's state-dict layout: the model under ``module``
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = perturb_(create_model("deit_pico_distilled_patch4_32"))
    wrapped = torch.compile(Replica(model)) if order == "compile(ddp(m))" else Replica(torch.compile(model))
    prefix = "_orig_mod.module." if order == "compile(ddp(m))" else "module._orig_mod."
    assert all(key.startswith(prefix) for key in wrapped.state_dict())
    torch.save(wrapped.state_dict(), tmp_path / "wrapped.pth")
    loaded = create_model("deit_pico_distilled_patch4_32")
    load_pretrained(loaded, tmp_path / "wrapped.pth")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_timm_deit_small_equivalence(tmp_path):
    ref = perturb_(timm.create_model("deit_small_patch16_224", pretrained=False)).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "deit_small.pth")
    ours = create_model("deit_small_patch16_224")
    load_pretrained(ours, tmp_path / "deit_small.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_tiny"])
def test_timm_convnext_equivalence(tmp_path, name):
    """atto stores its MLP as 1x1 convs (conv_mlp=True), tiny as Linear: both load."""
    ref = perturb_(timm.create_model(name, pretrained=False)).eval()
    torch.save(ref.state_dict(), tmp_path / "convnext.pth")
    ours = create_model(name)
    load_pretrained(ours, tmp_path / "convnext.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


def _facebookresearch_convnext(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    fb = {}
    for key, value in ref.state_dict().items():  # timm -> original ConvNeXt repo naming
        key = key.replace("stem.", "downsample_layers.0.")
        key = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", key)
        key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        key = key.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        fb[key] = value.flatten(1) if "pwconv" in key and value.ndim == 4 else value
    return fb


def test_facebookresearch_convnext_keys_map_as_timms_filter_maps_them():
    """Our key map gives what timm's ``convnext.checkpoint_filter_fn`` gives, without needing the model
    (timm reshapes the 1x1-convolution weights to the model's shape here; we do at load time,
    ``adapt_state_dict``, as the equivalence test below shows)."""
    from timm.models.convnext import checkpoint_filter_fn

    from deit.weights.layouts import convert_fb_convnext

    ref = timm.create_model("convnext_atto", pretrained=False)
    fb = _facebookresearch_convnext(ref)
    theirs, ours = checkpoint_filter_fn(dict(fb), ref), convert_fb_convnext(fb)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k].reshape(theirs[k].shape), theirs[k]) for k in ours)


def test_facebookresearch_convnext_layout_equivalence(tmp_path):
    ref = perturb_(timm.create_model("convnext_atto", pretrained=False)).eval()
    torch.save({"model": _facebookresearch_convnext(ref)}, tmp_path / "fb.pth")
    ours = create_model("convnext_atto")
    report = load_pretrained(ours, tmp_path / "fb.pth")
    assert any("facebookresearch" in n for n in report.notes)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


def _hf_teacher_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DeiTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                                  intermediate_size=768, image_size=224, patch_size=16, num_labels=1000,
                                  layer_norm_eps=1e-6, hidden_act="gelu")
    return perturb_(transformers.DeiTForImageClassificationWithTeacher(cfg)).eval()


# The per-layer names of HF DeiT before transformers 5 — the layout of the files on the Hub.
@pytest.mark.parametrize("layout, suffix", [("v5", ".safetensors"), ("v4", ".bin")])
def test_hf_transformers_deit_with_teacher_equivalence(tmp_path, layout, suffix):
    from safetensors.torch import save_file

    hf = _hf_teacher_model()
    sd = hf.state_dict() if layout == "v5" else to_hf_v4(hf.state_dict())
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    ours = create_model("deit_tiny_distilled_patch16_224")
    report = load_pretrained(ours, path)
    assert any("HF transformers" in n for n in report.notes)
    ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = hf(pixel_values=x)
        want = {"classification": out.cls_logits, "distillation": out.distillation_logits, "fusion": out.logits}
        for kind in HEADS:
            ours.return_logits_type = kind
            torch.testing.assert_close(ours.student_model(x), want[kind], atol=1e-5, rtol=0)


def test_224_checkpoint_into_384_model_matches_timm_resampling(tmp_path):
    from timm.models.deit import checkpoint_filter_fn

    ref224 = perturb_(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))
    sd = ref224.state_dict()
    ref384 = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=384).eval()
    ref384.load_state_dict(checkpoint_filter_fn(dict(sd), ref384))
    torch.save({"model": sd}, tmp_path / "deit224.pth")
    ours = create_model("deit_tiny_distilled_patch16_224", image_size=384)
    report = load_pretrained(ours, tmp_path / "deit224.pth")
    assert any("resampled pos_embed" in n for n in report.notes)
    torch.testing.assert_close(ours.pos_embed, ref384.pos_embed, atol=1e-6, rtol=0)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().student_model(x), ref384(x), atol=1e-5, rtol=0)


def test_other_num_classes_reinitialises_both_heads_and_keeps_the_body(tmp_path, caplog):
    source = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=10))
    save_model(source, tmp_path / "src.pth")
    target = create_model("deit_pico_distilled_patch4_32", num_classes=3)
    with caplog.at_level("INFO", logger="deit"):
        report = load_pretrained(target, tmp_path / "src.pth")
    assert sorted(report.reinitialised) == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]
    assert "re-initialised for 3 classes" in caplog.text
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(target.dist_token, source.dist_token)
    assert target.head.weight.shape == (3, 64)


def test_non_distilled_checkpoint_into_deit_keeps_dist_token_init(tmp_path):
    source = perturb_(create_model("deit_pico_patch4_32", num_classes=10))
    save_model(source, tmp_path / "vit.pth")
    target = create_model("deit_pico_distilled_patch4_32", num_classes=10)
    init_dist = target.dist_token.detach().clone()
    report = load_pretrained(target, tmp_path / "vit.pth")
    assert "dist_token" in report.reinitialised
    torch.testing.assert_close(target.dist_token, init_dist)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])
    torch.testing.assert_close(target.pos_embed[:, 2:], source.pos_embed[:, 1:])
    torch.testing.assert_close(target.head.weight, source.head.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_own_format_round_trip_rebuilds_the_model(tmp_path, suffix):
    model = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=5, image_size=28,
                                  return_logits_type="distillation"))
    path = save_model(model, tmp_path / f"m{suffix}")
    rebuilt, _ = build_from_checkpoint(path)
    assert isinstance(rebuilt, DeiT) and rebuilt.model_name == "deit_pico_distilled_patch4_32"
    assert rebuilt.image_size == 28 and rebuilt.return_logits_type == "distillation"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().student_model(x), model.eval().student_model(x))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_convert_infers_the_architecture_from_a_timm_file(tmp_path):
    ref = perturb_(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=7)).eval()
    torch.save({"model": ref.state_dict()}, tmp_path / "official.pth")
    dst, name = convert_checkpoint(tmp_path / "official.pth", tmp_path / "converted.safetensors")
    assert name == "deit_tiny_distilled_patch16_224"
    model, _ = build_from_checkpoint(dst)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().student_model(x), ref(x), atol=1e-5, rtol=0)


def test_convert_refuses_unknown_layout_and_bad_destination(tmp_path):
    torch.save({"weird.weight": torch.zeros(3, 3)}, tmp_path / "weird.pth")
    with pytest.raises(CheckpointError, match="match no registered model"):
        convert_checkpoint(tmp_path / "weird.pth", tmp_path / "out.pth")
    with pytest.raises(CheckpointError, match="must end in"):
        convert_checkpoint(tmp_path / "weird.pth", tmp_path / "out.onnx")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": RunsCode(marker)}}, f)
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(marker)}, tmp_path / "evil2.pth")
    for evil in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="refused to load"):
            load_pretrained(create_model("deit_pico_patch4_32"), evil)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00not a checkpoint at all" * 10, "truncated"])
def test_unreadable_checkpoints_give_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        save_model(create_model("deit_pico_patch4_32"), path)
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_pretrained(create_model("deit_pico_patch4_32"), path)


def test_truncated_safetensors_and_missing_file(tmp_path):
    path = save_model(create_model("deit_pico_patch4_32"), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_pretrained(create_model("deit_pico_patch4_32"), path)
    with pytest.raises(MissingCheckpointError, match="nope.pth"):
        load_pretrained(create_model("deit_pico_patch4_32"), tmp_path / "nope.pth")


def test_checkpoint_of_another_architecture_lists_the_mismatch(tmp_path):
    save_model(create_model("deit_nano_patch4_32"), tmp_path / "nano.pth")
    expected = r"holds deit_nano_patch4_32.*does not fit.*deit_pico_patch4_32.*shape mismatch"
    with pytest.raises(CheckpointError, match=expected):
        load_pretrained(create_model("deit_pico_patch4_32"), tmp_path / "nano.pth")


@pytest.mark.parametrize("name, technique", [("deit_pico_distilled_patch4_32", "linear"),
                                             ("deit_pico_distilled_patch4_32", "convolutional"),
                                             ("convnext_atto_32", None), ("resnet14_32", None)])
def test_rgb_weights_into_greyscale_model_sum_the_colour_filters(tmp_path, name, technique):
    """A grey image replicated to RGB gives the same logits as the grey image fed to the
    adapted 1-channel model (timm's adapt_input_conv rule)."""
    kwargs = {} if technique is None else {"patchify_technique": technique}
    rgb = perturb_(create_model(name, num_classes=5)).eval()
    save_model(rgb, tmp_path / "rgb.safetensors")
    grey = create_model(name, num_classes=5, in_channels=1, **kwargs)
    report = load_pretrained(grey, tmp_path / "rgb.safetensors")
    assert any("input channels adapted 3 -> 1" in n for n in report.notes)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = rgb(x.expand(-1, 3, -1, -1))
        got = grey.eval()(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_hf_deit_without_teacher_head_loads_into_deit(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DeiTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                  image_size=32, patch_size=4, num_labels=10, layer_norm_eps=1e-6)
    hf = perturb_(transformers.DeiTForImageClassification(cfg)).eval()
    torch.save(hf.state_dict(), tmp_path / "hf.bin")
    ours = DeiT(num_classes=10, d_model=64, num_encoder_blocks=2, encoder_num_heads=2, encoder_mlp_d=256,
                image_size=32, patch_size=4, return_logits_type="classification")
    report = load_pretrained(ours, tmp_path / "hf.bin")
    assert report.reinitialised == ["head_dist.weight", "head_dist.bias"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().student_model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


def test_named_architecture_keeps_a_foreign_files_head_and_channels(tmp_path):
    """build_from_checkpoint(path, model_name) builds the named variant with the file's head
    and channels (10 classes, 1 channel), not the registry default (1000 classes, RGB)."""
    import timm

    peer = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, in_chans=1).eval()
    torch.save({"model": peer.state_dict()}, tmp_path / "foreign.pth")
    ours, report = build_from_checkpoint(tmp_path / "foreign.pth", "deit_tiny_distilled_patch16_224")
    assert (ours.num_classes, ours.in_channels) == (10, 1) and not report.reinitialised
    x = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours.eval().student_model(x), peer(x), atol=1e-5)


@pytest.mark.parametrize("name", ["deit_pico_distilled_convstem_patch8_28", "deit_nano_convstem_patch8_28",
                                  "deit_pico_convstem_patch4_28"])
def test_conv_stem_variants_round_trip_and_are_recognised_from_a_bare_state_dict(tmp_path, name):
    model = perturb_(create_model(name, num_classes=5, in_channels=1)).eval()
    x = torch.rand(2, 1, 28, 28)
    path = save_model(model, tmp_path / "m.safetensors")
    rebuilt, _ = build_from_checkpoint(path)
    assert rebuilt.model_name == name and rebuilt.patch_embed.technique == "conv_stem"
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")  # no metadata: shapes only
    dst, inferred = convert_checkpoint(tmp_path / "bare.pth", tmp_path / "converted.safetensors")
    assert inferred == name
    bare, _ = build_from_checkpoint(dst)
    with torch.no_grad():
        expected = model.student_model(x) if isinstance(model, DeiT) else model(x)
        for other in (rebuilt.eval(), bare.eval()):
            torch.testing.assert_close(other.student_model(x) if isinstance(other, DeiT) else other(x), expected)


def test_conv_stem_grey_weights_into_rgb_and_patch_weights_refused(tmp_path):
    grey = perturb_(create_model("deit_pico_convstem_patch8_28", num_classes=5, in_channels=1)).eval()
    torch.save({"model": grey.state_dict()}, tmp_path / "grey.pth")
    rgb = create_model("deit_pico_convstem_patch8_28", num_classes=5, in_channels=3).eval()
    load_pretrained(rgb, tmp_path / "grey.pth")
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():  # an RGB image of three equal channels is the grey image (timm's adapt_input_conv)
        torch.testing.assert_close(rgb(x.expand(-1, 3, -1, -1)), grey(x), atol=1e-5, rtol=1e-5)
    plain = create_model("deit_pico_patch4_32", num_classes=5, image_size=28)
    torch.save({"model": plain.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="makes its tokens with a convolutional stem"):
        load_pretrained(create_model("deit_pico_convstem_patch4_28", num_classes=5), tmp_path / "plain.pth")


def test_conv_stem_bare_file_of_another_grid_builds_at_its_size(tmp_path):
    model = perturb_(create_model("deit_pico_convstem_patch8_28", num_classes=5, in_channels=1, image_size=56))
    torch.save({"model": model.state_dict()}, tmp_path / "bare.pth")  # a 7x7 grid: not the registered 4x4
    dst, name = convert_checkpoint(tmp_path / "bare.pth", tmp_path / "converted.safetensors")
    rebuilt, _ = build_from_checkpoint(dst)
    assert name == "deit_pico_convstem_patch8_28" and rebuilt.patch_embed.grid_size == (7, 7)
    x = torch.rand(1, 1, rebuilt.image_size, rebuilt.image_size)
    assert rebuilt.eval()(x).shape == (1, 5)
