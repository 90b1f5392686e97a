"""ONNX / TorchScript export: numerical agreement with PyTorch through
onnxruntime and the TorchScript interpreter, a dynamic batch axis, metadata, and
``deit predict --onnx`` without torch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit import create_model
from deit.cli import main
from deit.deploy.export import ExportHead, export_model, load_metadata, run_exported, verify_export
from deit.deploy.onnx_predict import preprocess

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]
DATA = {"dataset": "digits", "image_size": 32, "in_channels": 1, "mean": [0.3], "std": [0.4]}


@pytest.fixture(scope="module")
def distilled() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("deit_pico_distilled_patch4_32", num_classes=10, in_channels=1).eval()


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
@pytest.mark.parametrize("head", ["fusion", "cls", "dist", "all"])
def test_export_matches_pytorch_with_a_dynamic_batch(distilled, head, suffix, tmp_path):
    path, meta = export_model(distilled, tmp_path / f"m{suffix}", head=head, data_config=DATA, classes=list("abcdefghij"))
    for batch in (1, 7):  # traced with 2
        x = torch.randn(batch, 1, 32, 32)
        errors = verify_export(path, distilled, x, head=head, atol=1e-4)
        assert max(errors.values()) < 1e-4
    outputs = run_exported(path, torch.randn(3, 1, 32, 32))
    assert [o.shape for o in outputs] == [(3, 10)] * (3 if head == "all" else 1)
    assert meta["outputs"] == (["cls", "dist", "fusion"] if head == "all" else [head])
    assert load_metadata(path) == meta


def test_fused_output_is_the_mean_of_the_heads(distilled, tmp_path):
    path, _ = export_model(distilled, tmp_path / "m.onnx", head="all", data_config=DATA)
    cls_logits, dist_logits, fusion = run_exported(path, torch.randn(4, 1, 32, 32))
    np.testing.assert_allclose(fusion, (cls_logits + dist_logits) / 2, atol=1e-6)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        expected = distilled.student_model(x)  # eval mode: the fused logits
    np.testing.assert_allclose(run_exported(path, x)[2], expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", ["deit_pico_patch4_32", "deit_pico_convstem_patch8_28", "convnext_atto_32",
                                  "resnet8_32"])
def test_single_head_models_export(name, tmp_path):
    model = create_model(name, num_classes=5, in_channels=3).eval()
    size = getattr(model, "image_size", 32)
    data = {"image_size": size, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}
    path, meta = export_model(model, tmp_path / "m.onnx", data_config=data)
    assert meta["outputs"] == ["logits"] and meta["classes"] == ["0", "1", "2", "3", "4"]
    assert max(verify_export(path, model, torch.randn(3, 3, size, size)).values()) < 1e-4
    with pytest.raises(ValueError, match="head='cls' needs a distilled model"):
        export_model(model, tmp_path / "m2.onnx", head="cls", data_config=data)


def test_metadata_records_preprocessing_and_classes(distilled, tmp_path):
    path, _ = export_model(distilled, tmp_path / "m.onnx", data_config=DATA, classes=[f"c{i}" for i in range(10)])
    import onnx

    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["image_size"] == 32 and props["in_channels"] == 1 and props["color_mode"] == "L"
    assert props["mean"] == [0.3] and props["std"] == [0.4]
    assert props["classes"] == [f"c{i}" for i in range(10)]
    assert props["model_name"] == "deit_pico_distilled_patch4_32"
    assert props["resize"] == "shorter_side" and props["crop"] == "center" and props["interpolation"] == "bicubic"


def test_bad_export_requests(distilled, tmp_path):
    with pytest.raises(ValueError, match="cannot tell the export format from m.bin"):
        export_model(distilled, tmp_path / "m.bin", data_config=DATA)
    with pytest.raises(ValueError, match="head='both' is not supported"):
        export_model(distilled, tmp_path / "m.onnx", head="both", data_config=DATA)


@pytest.mark.parametrize("mode,size,image_size", [("L", (23, 40), 16), ("RGB", (50, 31), 24), ("RGBA", (20, 20), 20)])
def test_numpy_preprocessing_equals_the_library_transform(mode, size, image_size, tmp_path):
    from deit.data import build_transform, load_image

    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 3}[mode]
    shape = (size[1], size[0]) + (() if mode == "L" else (len(mode),))
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(tmp_path / "x.png")
    mean, std = [0.1, 0.2, 0.3][:channels], [0.5, 0.6, 0.7][:channels]
    meta = {"image_size": image_size, "in_channels": channels, "mean": mean, "std": std,
            "color_mode": "L" if channels == 1 else "RGB"}
    ours = preprocess(tmp_path / "x.png", meta)
    reference = build_transform(is_train=False, image_size=image_size, in_channels=channels, mean=mean, std=std)(
        load_image(tmp_path / "x.png", channels))
    assert ours.shape == tuple(reference.shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-6)


def test_cli_export_verifies_on_random_and_real_images(trained_checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.onnx"),
                 "--head", "all"]) == 0
    out = capsys.readouterr().out
    assert "verified on random images" in out and "verified on real images" in out
    assert "outputs cls, dist, fusion" in out
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.pt")]) == 0
    assert load_metadata(tmp_path / "m.pt")["classes"] == [str(i) for i in range(10)]


def test_predict_with_onnx_equals_predict_with_the_checkpoint(trained_checkpoint, digit_images, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    files = [str(p) for p in digit_images]
    assert main(["predict", "--checkpoint", str(trained_checkpoint), "--json", *files]) == 0
    torch_results = json.loads(capsys.readouterr().out)
    assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--json", *files]) == 0
    onnx_results = json.loads(capsys.readouterr().out)
    for a, b in zip(torch_results, onnx_results):
        assert [c["class"] for c in a["top"]] == [c["class"] for c in b["top"]]
        np.testing.assert_allclose([c["probability"] for c in a["top"]], [c["probability"] for c in b["top"]],
                                   atol=1e-5)


def test_onnx_predictor_runs_without_torch(trained_checkpoint, digit_images, tmp_path):
    """The standalone script with ``import torch`` made impossible."""
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.onnx")]) == 0
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = ['onnx_predict.py', {str(tmp_path / 'm.onnx')!r}, {str(digit_images[0])!r}]; "
            f"runpy.run_path({str(REPO / 'deit' / 'deploy' / 'onnx_predict.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{digit_images[0]}: ") and result.stdout.count("%") == 5


def test_predict_needs_exactly_one_model_source(trained_checkpoint, digit_images, tmp_path, capsys):
    assert main(["predict", str(digit_images[0])]) == 2
    assert "exactly one of --checkpoint" in capsys.readouterr().err
    (tmp_path / "fake.onnx").write_bytes(b"not onnx at all")
    assert main(["predict", "--onnx", str(tmp_path / "fake.onnx"), str(digit_images[0])]) == 2
    assert "is not a readable ONNX file" in capsys.readouterr().err


def test_export_head_wrapper_is_the_student_only(distilled):
    teacher = create_model("convnext_atto_32", num_classes=10, in_channels=1).eval()
    distilled.set_teacher(teacher, inputs="student")
    try:
        wrapper = ExportHead(distilled, "all")
        names = {name for name, _ in wrapper.named_parameters()}
        assert not any("stages" in n or "stem" in n for n in names)  # no teacher weights exported
    finally:
        distilled.set_teacher(None)


@pytest.mark.parametrize("size, crop_pct, interpolation, crop_mode", [
    ((500, 375), 0.875, "bicubic", "center"), ((61, 97), 0.9, "bilinear", "center"),
    ((80, 50), 0.8, "nearest", "squash"), ((40, 40), 1.0, "bicubic", "center"),
])
def test_numpy_preprocessing_equals_timms_eval_transform(size, crop_pct, interpolation, crop_mode, tmp_path):
    """onnx_predict's PIL + numpy resize and crop against timm's own evaluation transform."""
    from timm.data import create_transform

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / "x.png")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    meta = {"image_size": 32, "in_channels": 3, "mean": mean, "std": std, "color_mode": "RGB",
            "crop_pct": crop_pct, "interpolation": interpolation, "crop_mode": crop_mode}
    reference = create_transform(input_size=32, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                                 crop_mode=crop_mode, mean=mean, std=std)(Image.open(tmp_path / "x.png").convert("RGB"))
    np.testing.assert_allclose(preprocess(tmp_path / "x.png", meta), reference.numpy(), atol=1e-6)


def test_metadata_of_a_published_variant_comes_from_the_resolver():
    """An official-layout model: the release's crop_pct, mean/std and ImageNet names and synsets."""
    from deit.deploy.export import export_metadata

    with torch.device("meta"):
        model = create_model("deit_small_distilled_patch16_224")
    meta = export_metadata(model, {}, None, ["fusion"])
    assert (meta["image_size"], meta["crop_pct"], meta["interpolation"]) == (224, 0.9, "bicubic")
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["class_ids"][0] == "n01440764" and meta["classes"][0].startswith("tench")
    overridden = export_metadata(model, {}, None, ["fusion"], {"crop_pct": 0.875, "interpolation": "bilinear"})
    assert (overridden["crop_pct"], overridden["interpolation"]) == (0.875, "bilinear")


def test_onnx_and_pytorch_predictors_agree_with_a_centre_crop(tmp_path):
    """A non-square photo, crop_pct 0.875, bilinear: the torch-free predictor follows the file's
    metadata to the same top-5 as the PyTorch Predictor."""
    from deit.deploy.onnx_predict import OnnxPredictor
    from deit.deploy.predict import Predictor

    torch.manual_seed(0)
    model = create_model("deit_pico_distilled_patch4_32", num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    settings = {"crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.2, 0.2]}
    export_model(model, tmp_path / "m.onnx", overrides=settings)
    coarse = np.random.default_rng(2).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    files = []
    for i, size in enumerate([(90, 60), (45, 70), (33, 33)]):
        Image.fromarray(np.roll(coarse, i, axis=1)).resize(size, Image.Resampling.BICUBIC).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    ours = Predictor(model, overrides=settings).predict_files(files)
    theirs = OnnxPredictor(tmp_path / "m.onnx").predict_files(files)
    for a, b in zip(ours, theirs):
        assert [c["index"] for c in a["top"]] == [c["index"] for c in b["top"]]
        np.testing.assert_allclose([c["probability"] for c in a["top"]], [c["probability"] for c in b["top"]],
                                   atol=1e-4)


def test_export_preprocessing_flags_are_recorded(trained_checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "m.pt"),
                 "--crop-pct", "0.8", "--interpolation", "bilinear", "--mean", "0.2", "--std", "0.3"]) == 0
    meta = load_metadata(tmp_path / "m.pt")
    assert (meta["crop_pct"], meta["interpolation"], meta["mean"], meta["std"]) == (0.8, "bilinear", [0.2], [0.3])
    assert "verified on real images" in capsys.readouterr().out  # real images preprocessed with these settings


def test_default_head_follows_the_models_own_output():
    """A DeiT whose return_logits_type picks one head (how a plain HF DeiTForImageClassification
    loads: its distillation head is untrained) exports and evaluates that head, not the fusion."""
    from deit.train.engine import evaluate

    torch.manual_seed(0)
    model = create_model("deit_pico_distilled_patch4_32", num_classes=5, return_logits_type="classification").eval()
    x = torch.randn(4, 3, 32, 32)  # (B, C, H, W)
    with torch.no_grad():
        cls_logits, dist_logits = model.forward_heads(model.forward_features(x))  # (B, K) each
        torch.testing.assert_close(ExportHead(model)(x), cls_logits)
        torch.testing.assert_close(ExportHead(model, "fusion")(x), (cls_logits + dist_logits) / 2)
    assert ExportHead(model).output_names == ["cls"]
    targets = cls_logits.argmax(1)  # the class head is right on every image
    metrics = evaluate(model, [(x, targets)], device=torch.device("cpu"))
    assert metrics["acc1"] == metrics["cls_acc1"] == 100.0


def test_onnx_preprocessing_scales_16_bit_images_like_the_library(tmp_path):
    """The torch-free predictor decodes through the library's decoder: a 16-bit PNG is scaled
    (value >> 8, torchvision's to_dtype rule), not clipped to white."""
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # (H, W) 0..65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "eight.png")
    metadata = {"image_size": 32, "in_channels": 1, "mean": [0.5], "std": [0.5], "crop_pct": 1.0}
    deep, eight = preprocess(tmp_path / "deep.png", metadata), preprocess(tmp_path / "eight.png", metadata)
    np.testing.assert_array_equal(deep, eight)
    assert abs(float(deep.mean())) < 0.05  # a full ramp centres on 0 after (x - 0.5) / 0.5


def test_real_images_come_from_the_folder_path_the_checkpoint_records(tmp_path, monkeypatch):
    """The verification images of an image-folder checkpoint are found by its recorded absolute
    path from another directory, where the relative name given to training finds nothing."""
    from deit.deploy.export import real_images

    for name in ("a", "b"):
        for split in ("train", "val"):
            (tmp_path / "animals" / split / name).mkdir(parents=True)
            Image.fromarray(np.full((12, 12), 60 if name == "a" else 200, np.uint8)).save(
                tmp_path / "animals" / split / name / "0.png")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    metadata = {"image_size": 8, "in_channels": 1, "mean": [0.5], "std": [0.25], "crop_pct": 1.0,
                "interpolation": "bicubic", "crop_mode": "center"}
    assert real_images({"dataset": "animals"}, metadata) is None
    images = real_images({"dataset": "animals", "dataset_path": str(tmp_path / "animals")}, metadata)
    assert images.shape == (2, 1, 8, 8) and images[0].mean() < 0 < images[1].mean()  # a's dark, b's light
