"""Foreign weights as their users save them: architecture read off the raw shapes (official
224 / 384 files, timm state dicts, safetensors), HF transformers ``save_pretrained`` folders
with their config.json and preprocessor_config.json, and this library's format versions.
Every model is compared with the peer that wrote the file, given the same weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deit import CheckpointError, build_from_checkpoint, create_model, save_model
from deit.cli import main
from deit.weights.layouts import FORMAT_VERSION, extract_state_dict, read_checkpoint
from tests.helpers import (
    perturb_,
    to_hf_v4,  # transformers-4 key names, as the .bin files on the Hub
)

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

LABELS = ["tench", "goldfinch", "great white shark", "tree frog", "loggerhead turtle"]
HF_HEADS = {"DeiTForImageClassificationWithTeacher", "DeiTForImageClassification"}


# --- official / timm files: the architecture comes from the raw shapes ------------------------

def _save_official(model, path):
    """As the official DeiT code (main.py) and timm users write weights."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save({"model": model.state_dict()}, path)


@pytest.mark.slow
def test_official_384_file_stays_384(tmp_path):
    """A 24x24 position grid builds a 384 px model (never resampled to the 224 variant's
    14x14), from the official .pth layout and from safetensors; with 1 of the 12 blocks the
    build is explicit and says so."""
    ref = perturb_(timm.create_model("deit_base_distilled_patch16_384", pretrained=False, depth=1,
                                     num_classes=10)).eval()
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        want = ref(x)
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"deit_base_distilled_patch16_384{suffix}"
        _save_official(ref, path)
        ours, report = build_from_checkpoint(path)
        assert ours.model_name == "deit_base_distilled_patch16_384"
        assert (ours.image_size, ours.config["num_encoder_blocks"], ours.num_classes) == (384, 1, 10)
        assert ours.pos_embed.shape == ref.pos_embed.shape == (1, 24 * 24 + 2, 768)
        assert not any("resampled" in n for n in report.notes)
        assert any("num_encoder_blocks=1" in n and "grid=24x24" in n for n in report.notes)
        with torch.no_grad():
            torch.testing.assert_close(ours.eval().student_model(x), want, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_official_small_distilled_224_full_depth_is_recognised(tmp_path):
    ref = perturb_(timm.create_model("deit_small_distilled_patch16_224", pretrained=False)).eval()
    _save_official(ref, tmp_path / "deit_small_distilled_patch16_224-649709d9.pth")
    ours, report = build_from_checkpoint(tmp_path / "deit_small_distilled_patch16_224-649709d9.pth")
    assert ours.model_name == "deit_small_distilled_patch16_224" and ours.image_size == 224
    assert ours.config["encoder_num_heads"] == 6 and ours.config["norm_eps"] == 1e-6
    inferred = "architecture inferred from the tensor shapes: deit_small_distilled_patch16_224 ("
    assert report.notes[0].startswith(inferred)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().student_model(x), ref(x), atol=1e-5, rtol=0)


def test_every_registered_variant_is_told_apart_by_its_shapes():
    """No two registered variants share their shapes: each one's own state dict (meta
    device) infers back to its name with no override."""
    from deit.models import list_models
    from deit.weights.factory import infer_architecture_overrides

    for name in list_models():
        with torch.device("meta"):
            state_dict = create_model(name).state_dict()
        assert infer_architecture_overrides(state_dict)[:2] == (name, {})


def test_an_unregistered_image_size_is_an_override_not_a_resample(tmp_path):
    ref = perturb_(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=160, depth=1,
                                     num_classes=4)).eval()
    _save_official(ref, tmp_path / "tiny160.pth")
    ours, report = build_from_checkpoint(tmp_path / "tiny160.pth")
    assert ours.model_name == "deit_tiny_distilled_patch16_224" and ours.image_size == 160
    assert not any("resampled" in n for n in report.notes)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().student_model(x), ref(x), atol=1e-5, rtol=0)


def test_a_file_that_fits_two_variants_names_both(tmp_path, monkeypatch):
    """pico-distilled shapes at 48 px: the 32 px variant and a 64 px one fit equally well."""
    from deit.models import registry

    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_FAMILY", dict(registry._FAMILY))

    def deit_pico_distilled_patch4_64(**kw):
        return registry._MODELS["deit_pico_distilled_patch4_32"](**{"image_size": 64, **kw})

    registry.register_model("vit")(deit_pico_distilled_patch4_64)
    source = perturb_(create_model("deit_pico_distilled_patch4_32", image_size=48, num_classes=3))
    torch.save({"model": source.state_dict()}, tmp_path / "pico48.pth")
    expected = r"several registered models: deit_pico_distilled_patch4_32, deit_pico_distilled_patch4_64.*grid=12x12"
    with pytest.raises(CheckpointError, match=expected):
        build_from_checkpoint(tmp_path / "pico48.pth")
    named, _ = build_from_checkpoint(tmp_path / "pico48.pth", "deit_pico_distilled_patch4_64", image_size=48)
    assert named.image_size == 48


def test_an_unknown_width_is_refused_naming_what_was_inferred(tmp_path):
    source = create_model("deit_pico_distilled_patch4_32", d_model=96, encoder_num_heads=3, encoder_mlp_d=384)
    torch.save(source.state_dict(), tmp_path / "w96.pth")
    with pytest.raises(CheckpointError, match=r"width=96, depth=6, heads=unknown.*number of attention heads"):
        build_from_checkpoint(tmp_path / "w96.pth")


def test_timm_convnext_file_is_recognised(tmp_path):
    ref = perturb_(timm.create_model("convnext_atto", pretrained=False, num_classes=7)).eval()
    torch.save(ref.state_dict(), tmp_path / "atto.pth")
    ours, _ = build_from_checkpoint(tmp_path / "atto.pth")
    assert ours.model_name == "convnext_atto" and ours.num_classes == 7
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=1e-5, rtol=0)


def test_distilled_file_into_a_vit_is_refused_clearly(tmp_path):
    source = create_model("deit_pico_distilled_patch4_32", image_size=48)
    torch.save({"model": source.state_dict()}, tmp_path / "pico48.pth")
    with pytest.raises(CheckpointError, match=r"distillation token.*distilled variant"):
        build_from_checkpoint(tmp_path / "pico48.pth", "deit_pico_patch4_32")


# --- HF transformers save_pretrained folders ---------------------------------------------------

def _hf_folder(folder, cls_name, *, weights="safetensors", hidden=64, layers=2, heads=2, image=32, patch=8,
               resize=40, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """An HF DeiT classifier with perturbed random weights, saved as its users do."""
    cfg = transformers.DeiTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=4 * hidden, image_size=image, patch_size=patch,
                                  layer_norm_eps=1e-12, id2label=dict(enumerate(LABELS)),
                                  label2id={name: i for i, name in enumerate(LABELS)})
    hf = perturb_(getattr(transformers, cls_name)(cfg), scale=0.2).eval()
    if weights == "safetensors":
        hf.save_pretrained(folder)
    else:  # the Hub's pytorch_model.bin files: transformers-4 key names, config.json beside them
        cfg.save_pretrained(folder)
        torch.save(to_hf_v4(hf.state_dict()), folder / "pytorch_model.bin")
    transformers.DeiTImageProcessor(size={"height": resize, "width": resize},
                                    crop_size={"height": image, "width": image},
                                    image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    return hf


@pytest.mark.parametrize("cls_name", sorted(HF_HEADS))
@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_hf_folder_equals_hf_logits(tmp_path, cls_name, weights):
    hf = _hf_folder(tmp_path / "hf", cls_name, weights=weights)
    ours, report = build_from_checkpoint(tmp_path / "hf")
    assert ours.config["norm_eps"] == 1e-12  # config.json's layer_norm_eps, not timm's 1e-6
    assert report.info["classes"] == LABELS
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got, want = ours.eval().student_model(x), hf(pixel_values=x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if cls_name == "DeiTForImageClassification":  # the class head alone, never fused with an untrained head
        assert ours.return_logits_type == "classification"
        assert any("return_logits_type='classification'" in n for n in report.notes)
        assert sorted(report.reinitialised) == ["head_dist.bias", "head_dist.weight"]
    else:
        assert ours.return_logits_type == "fusion" and not report.reinitialised
        with torch.no_grad():
            out = hf(pixel_values=x)
            cls_logits, dist_logits = ours.forward_heads(ours.forward_features(x))
        torch.testing.assert_close(cls_logits, out.cls_logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(dist_logits, out.distillation_logits, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_hf_folder_at_the_deit_small_224_config(tmp_path):
    """The real DeiT-S widths (384, 6 heads, patch 16, 224 px), 2 of its 12 layers."""
    hf = _hf_folder(tmp_path / "hf", "DeiTForImageClassificationWithTeacher", hidden=384, heads=6, image=224,
                    patch=16, resize=256)
    ours, report = build_from_checkpoint(tmp_path / "hf")
    assert ours.model_name == "deit_small_distilled_patch16_224"
    assert (ours.config["num_encoder_blocks"], ours.config["encoder_num_heads"], ours.image_size) == (2, 6, 224)
    assert report.info["data_config"]["crop_pct"] == 224 / 256
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval().student_model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


def _photo(width, height, seed=0):
    """A smooth random RGB image (noise upscaled), so resampling filters matter but stay close."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (max(height // 4, 2), max(width // 4, 2), 3), dtype=np.uint8))
    return small.resize((width, height), Image.BICUBIC)


@pytest.mark.parametrize("size", [(40, 40), (300, 200), (57, 90)])
def test_hf_preprocessor_becomes_a_data_config_with_the_same_effect(tmp_path, size):
    """The data_config, applied by timm's eval transform, gives HF DeiTImageProcessor's
    pixels (within 2 levels of 8-bit resampling difference) and the same top-5, also for
    non-square images (HF resizes to a fixed size: timm's crop_mode 'squash')."""
    from timm.data import create_transform

    hf = _hf_folder(tmp_path / "hf", "DeiTForImageClassificationWithTeacher")
    ours, report = build_from_checkpoint(tmp_path / "hf")
    dc = report.info["data_config"]
    assert dc == {"image_size": 32, "in_channels": 3, "mean": pytest.approx([0.485, 0.456, 0.406]),
                  "std": pytest.approx([0.229, 0.224, 0.225]), "crop_pct": 0.8, "interpolation": "bicubic",
                  "crop_mode": "squash"}
    image = _photo(*size)
    processor = transformers.DeiTImageProcessor.from_pretrained(tmp_path / "hf")
    want = processor(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, 32, 32)
    transform = create_transform(input_size=dc["image_size"], is_training=False, crop_pct=dc["crop_pct"],
                                 crop_mode=dc["crop_mode"], interpolation=dc["interpolation"], mean=dc["mean"],
                                 std=dc["std"])
    got = transform(image)[None]  # (1, 3, 32, 32)
    assert got.shape == want.shape
    # PIL (timm) and torchvision (HF) round the 8-bit resize differently: up to 2 levels here
    assert (got - want).abs().max() <= 2.01 / 255 / min(dc["std"])
    assert (got - want).abs().mean() <= 0.5 / 255 / min(dc["std"])
    with torch.no_grad():
        p_ours = ours.eval().student_model(got).softmax(-1)
        p_hf = hf(pixel_values=want).logits.softmax(-1)
    assert p_ours.topk(5).indices.tolist() == p_hf.topk(5).indices.tolist()
    torch.testing.assert_close(p_ours, p_hf, atol=2e-3, rtol=0)


def test_hf_rescale_factor_and_no_normalisation_fold_into_mean_and_std(tmp_path):
    """(x*r - m)/s == (x/255 - m')/s' with m' = m/(255 r), s' = s/(255 r)."""
    from deit.weights.hf_folder import hf_data_config

    notes: list[str] = []
    plain = hf_data_config({"size": {"shortest_edge": 256}, "crop_size": 224, "do_normalize": False,
                            "rescale_factor": 1 / 127.5, "resample": 2}, 3, notes)
    assert plain["mean"] == [0.0] * 3 and plain["std"] == pytest.approx([0.5] * 3)
    assert (plain["crop_mode"], plain["interpolation"], plain["crop_pct"]) == ("center", "bilinear", 224 / 256)
    x = torch.rand(3, 4, 4) * 255
    torch.testing.assert_close((x / 255 - 0.0) / plain["std"][0], x * (1 / 127.5))
    assert hf_data_config({"size": {"height": 256, "width": 320}}, 3, notes) is None
    assert "non-square" in notes[-1]


def test_hf_folder_sharded_and_file_inside_a_folder(tmp_path):
    from safetensors.torch import save_file

    hf = _hf_folder(tmp_path / "hf", "DeiTForImageClassificationWithTeacher")
    sd = hf.state_dict()
    keys = sorted(sd)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    (shard_dir / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k].contiguous() for k in part}, str(shard_dir / name))
        weight_map.update({k: name for k in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    x = torch.randn(2, 3, 32, 32)
    for source in (shard_dir, tmp_path / "hf" / "model.safetensors"):
        ours, report = build_from_checkpoint(source)
        assert ours.config["norm_eps"] == 1e-12 and report.info["classes"] == LABELS
        with torch.no_grad():
            torch.testing.assert_close(ours.eval().student_model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


def test_hf_folder_errors_name_the_problem(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="directory without config.json"):
        build_from_checkpoint(empty)
    _hf_folder(tmp_path / "hf", "DeiTForImageClassification")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="config.json but no weights"):
        build_from_checkpoint(tmp_path / "hf")
    _hf_folder(tmp_path / "bad", "DeiTForImageClassification")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(CheckpointError, match="hidden_size=128 but the weights have width 64"):
        build_from_checkpoint(tmp_path / "bad")


def test_convert_and_info_of_an_hf_folder(tmp_path, capsys):
    hf = _hf_folder(tmp_path / "hf", "DeiTForImageClassification")
    assert main(["info", str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "norm_eps = 1e-12" in out and "return_logits_type = 'classification'" in out
    assert "classes: 5 (tench, goldfinch" in out and "crop_pct=0.8" in out
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "converted.safetensors")]) == 0
    converted, report = build_from_checkpoint(tmp_path / "converted.safetensors")
    assert report.info["classes"] == LABELS and report.info["data_config"]["crop_pct"] == 0.8
    assert converted.return_logits_type == "classification" and converted.config["norm_eps"] == 1e-12
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval().student_model(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls_name", sorted(HF_HEADS))
def test_predict_on_an_hf_folder_and_its_conversion_equals_hf_processor_and_model(tmp_path, capsys, cls_name):
    """deit predict --json on the folder and on the file deit convert wrote: HF's top-5 and
    probabilities (DeiTImageProcessor + the model) on a non-square photo."""
    hf = _hf_folder(tmp_path / "hf", cls_name)
    _photo(300, 200).save(tmp_path / "photo.png")
    processor = transformers.DeiTImageProcessor.from_pretrained(tmp_path / "hf")
    with Image.open(tmp_path / "photo.png") as image, torch.no_grad():
        want = hf(**processor(images=image.convert("RGB"), return_tensors="pt")).logits.softmax(-1)[0].topk(5)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "converted.pth")]) == 0
    capsys.readouterr()
    for source in (tmp_path / "hf", tmp_path / "converted.pth"):
        assert main(["predict", "--checkpoint", str(source), str(tmp_path / "photo.png"), "--json"]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        assert [c["index"] for c in top] == want.indices.tolist()
        assert [c["class"] for c in top] == [LABELS[i] for i in want.indices.tolist()]
        assert [c["probability"] for c in top] == pytest.approx(want.values.tolist(), abs=2e-3)


# --- this library's format versions ------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_format_2_carries_preprocessing_and_labels(tmp_path, suffix):
    model = create_model("deit_pico_patch4_32", num_classes=3)
    data_config = {"image_size": 32, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 0.875,
                   "interpolation": "bicubic"}
    path = save_model(model, tmp_path / f"m{suffix}", data_config=data_config, classes=["a", "b", "c"],
                      class_ids=["n1", "n2", "n3"])
    obj, metadata = read_checkpoint(path)
    version = obj.get("format_version") or int(metadata["format_version"])
    assert version == FORMAT_VERSION == 2
    _, info = extract_state_dict(obj, metadata)
    assert info["data_config"] == data_config and info["classes"] == ["a", "b", "c"]
    assert info["class_ids"] == ["n1", "n2", "n3"]
    _, report = build_from_checkpoint(path)
    assert report.info["data_config"] == data_config


def test_version_1_files_still_load_and_newer_ones_are_refused(tmp_path):
    from safetensors.torch import save_file

    model = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=4, image_size=28))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    v1 = {"format": "deit", "format_version": 1, "model_name": "deit_pico_distilled_patch4_32",
          "model_config": dict(model.config), "model": sd}  # the version-1 layout, written by hand
    torch.save(v1, tmp_path / "v1.pth")
    save_file(sd, str(tmp_path / "v1.safetensors"), metadata={
        "format": "deit", "format_version": "1", "model_name": "deit_pico_distilled_patch4_32",
        "model_config": json.dumps(model.config)})
    x = torch.randn(2, 3, 28, 28)
    for path in (tmp_path / "v1.pth", tmp_path / "v1.safetensors"):
        rebuilt, report = build_from_checkpoint(path)
        assert rebuilt.image_size == 28 and "data_config" not in report.info
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval().student_model(x), model.eval().student_model(x))
    torch.save({**v1, "format_version": FORMAT_VERSION + 1}, tmp_path / "v3.pth")
    with pytest.raises(CheckpointError, match=f"format version {FORMAT_VERSION + 1} by a newer deit"):
        build_from_checkpoint(tmp_path / "v3.pth")
