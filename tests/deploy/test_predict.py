"""``deit predict`` / ``deit eval`` with the preprocessing and labels of the weights' variant,
checked against timm's own pipeline (``resolve_data_config`` + ``create_transform``) given
the same weights; folders, globs, batches and unreadable files."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from deit.cli import main
from deit.deploy.predict import Predictor, find_images
from deit.deploy.preprocessing import resolve_labels, resolve_preprocessing
from deit.models import create_model
from deit.weights.layouts import save_model
from tests.helpers import perturb_

OFFICIAL = {"deit_small_distilled_patch16_224": "649709d9", "deit_base_distilled_patch16_384": "d0272ac0"}
FLAGS = "--mean --std --crop-pct --interpolation"


def photo(path, size=(500, 375), seed=0):
    """A smooth photo-like RGB JPEG (random colours upsampled): resizing and cropping matter."""
    coarse = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
    return path


def official_file(name, tmp_path):
    """An official-release-layout file (``{'model': state_dict}`` under the release name) of a
    timm model with perturbed random weights; heads sharpened so the top-5 is not near-uniform."""
    torch.manual_seed(0)
    model = perturb_(timm.create_model(name, pretrained=False)).eval()
    with torch.no_grad():
        model.head.weight.mul_(3)
        model.head_dist.weight.mul_(3)
    path = tmp_path / f"{name}-{OFFICIAL[name]}.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def timm_top5(model, image_path):
    """timm's pipeline: the model's data config, its eval transform, softmax, top-5."""
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        top = model.eval()(transform(Image.open(image_path).convert("RGB"))[None]).softmax(-1).topk(5)
    return top.indices[0].tolist(), top.values[0].tolist()


def predict_json(capsys, *argv):
    code = main(["predict", "--json", *map(str, argv)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def assert_same_top5(ours, reference):
    indices, probabilities = reference
    assert [c["index"] for c in ours["top"]] == indices
    np.testing.assert_allclose([c["probability"] for c in ours["top"]], probabilities, atol=2e-3)


@pytest.mark.slow
def test_official_small_distilled_224_predicts_as_timm(tmp_path, capsys):
    model, path = official_file("deit_small_distilled_patch16_224", tmp_path)
    image = photo(tmp_path / "photo.jpg")
    reference = timm_top5(model, image)
    code, results, err = predict_json(capsys, "--checkpoint", path, image)
    assert code == 0 and "Traceback" not in err, err
    assert_same_top5(results[0], reference)
    info = ImageNetInfo("imagenet-1k")
    first = results[0]["top"][0]
    assert first["id"] == info.index_to_label_name(first["index"])  # WordNet synset, e.g. n01440764
    assert first["class"] == info.index_to_description(first["index"])  # display name, e.g. "tench, Tinca tinca"


@pytest.mark.slow
def test_text_output_prints_imagenet_names(tmp_path, capsys):
    """A published variant saved without class names: predictions read as ImageNet display names."""
    model = perturb_(create_model("deit_tiny_patch16_224"), 0.2).eval()
    path = save_model(model, tmp_path / "tiny.safetensors")
    image = photo(tmp_path / "photo.jpg")
    assert main(["predict", "--checkpoint", str(path), "--topk", "3", str(image)]) == 0
    text = capsys.readouterr().out
    top = Predictor(model).predict_files([image], topk=3)[0]["top"]
    description = ImageNetInfo("imagenet-1k").index_to_description
    assert text == f"{image}: " + "; ".join(f"{description(c['index'])} {100 * c['probability']:.1f}%"
                                            for c in top) + "\n"


@pytest.mark.slow
def test_official_base_distilled_384_predicts_as_timm(tmp_path, capsys):
    """Without --model the 24 x 24 grid is read off the file's shapes; preprocessing at 384 px
    with crop_pct 1.0 (the release's). Then the same with --model on a portrait photo."""
    model, path = official_file("deit_base_distilled_patch16_384", tmp_path)
    image = photo(tmp_path / "photo.jpg", seed=1)
    code, results, err = predict_json(capsys, "--checkpoint", path, image)
    assert code == 0, err
    assert_same_top5(results[0], timm_top5(model, image))
    portrait = photo(tmp_path / "portrait.jpg", size=(375, 500), seed=2)
    code, results, err = predict_json(capsys, "--checkpoint", path, "--model", "deit_base_distilled_patch16_384",
                                      portrait)
    assert code == 0, err
    assert_same_top5(results[0], timm_top5(model, portrait))


def timm_tiny_file(tmp_path, num_classes=10):
    """A plain timm state dict of a small ViT that no published weights describe."""
    from deit.bench.harness import timm_equivalent

    ours = perturb_(create_model("deit_pico_patch4_32", num_classes=num_classes), 0.2).eval()
    peer = timm_equivalent(ours).eval()
    peer.load_state_dict(ours.state_dict(), strict=True)
    torch.save(peer.state_dict(), tmp_path / "vit_tiny_timm.pth")
    return peer, tmp_path / "vit_tiny_timm.pth"


def test_unknown_preprocessing_warns_and_the_flags_set_it_as_timm_would(tmp_path, capsys, caplog):
    peer, path = timm_tiny_file(tmp_path)
    image = photo(tmp_path / "photo.png", size=(45, 37))
    with caplog.at_level(logging.WARNING, logger="deit.deploy.preprocessing"):  # the CLI's stderr log line
        code, results, err = predict_json(capsys, "--checkpoint", path, image)
    assert code == 0 and FLAGS in caplog.text and "no preprocessing is recorded" in caplog.text
    caplog.clear()
    assert [c["class"] for c in results[0]["top"]] == [str(c["index"]) for c in results[0]["top"]]  # no names

    mean, std = [0.2, 0.3, 0.4], [0.5, 0.6, 0.7]
    with caplog.at_level(logging.WARNING, logger="deit.deploy.preprocessing"):
        code, results, err = predict_json(capsys, "--checkpoint", path, "--mean", *mean, "--std", *std,
                                          "--crop-pct", 0.8, "--interpolation", "bilinear", "--topk", 5, "--", image)
    assert code == 0 and not caplog.records
    transform = create_transform(input_size=32, is_training=False, crop_pct=0.8, interpolation="bilinear",
                                 mean=mean, std=std)
    with torch.no_grad():
        top = peer(transform(Image.open(image).convert("RGB"))[None]).softmax(-1).topk(5)
    assert_same_top5(results[0], (top.indices[0].tolist(), top.values[0].tolist()))


def test_bad_preprocessing_flags_name_the_flag(tmp_path, capsys):
    _, path = timm_tiny_file(tmp_path)
    image = photo(tmp_path / "photo.png", size=(40, 40))
    for argv, flag in ((["--crop-pct", "1.5"], "--crop-pct"), (["--std", "0", "1", "1"], "--std"),
                       (["--mean", "0.1", "0.2"], "--mean")):
        assert main(["predict", "--checkpoint", str(path), str(image), *argv]) == 2
        assert flag in capsys.readouterr().err


def small_checkpoint(tmp_path, classes=("ant", "bee", "cat")):
    model = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=len(classes)), 0.2).eval()
    data_config = {"image_size": 32, "in_channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    return model, save_model(model, tmp_path / "small.pth", data_config=data_config, classes=list(classes))


def test_folders_globs_batches_and_unreadable_files(tmp_path, capsys):
    _, path = small_checkpoint(tmp_path)
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    good = [photo(folder / "a.png", (40, 30), 1), photo(folder / "nested" / "b.jpg", (33, 50), 2),
            photo(tmp_path / "c.png", (32, 32), 3), photo(tmp_path / "d.png", (64, 48), 4)]
    (folder / "notes.txt").write_text("not an image, not an image extension: not collected from a folder")
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = tmp_path / "missing.png"
    code, results, err = predict_json(capsys, "--checkpoint", path, "--batch-size", 2, folder, tmp_path / "*.png",
                                      missing)
    assert code == 1
    by_image = {r["image"]: r for r in results}
    assert [r["image"] for r in results] == [str(folder / "a.png"), str(broken), str(good[1]), str(good[2]),
                                             str(good[3]), str(missing)]
    assert "error" in by_image[str(broken)] and str(broken) in by_image[str(broken)]["error"]
    assert by_image[str(missing)]["error"] == f"image file not found: {missing}"
    assert err.count("deit predict: error:") == 2  # one line per bad file
    assert all(len(by_image[str(p)]["top"]) == 3 for p in good)
    assert {c["class"] for c in by_image[str(good[0])]["top"]} == {"ant", "bee", "cat"}

    code, alone, _ = predict_json(capsys, "--checkpoint", path, *good)  # one batch of 4: the same numbers
    assert code == 0
    for item in alone:
        np.testing.assert_allclose([c["probability"] for c in item["top"]],
                                   [c["probability"] for c in by_image[item["image"]]["top"]], atol=1e-6)
    assert main(["predict", "--checkpoint", str(path), str(tmp_path / "nothing-*.png")]) == 1
    assert "no image file matches" in capsys.readouterr().err


def test_find_images_keeps_the_order_given(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.JPG").write_bytes(b"")
    (tmp_path / "sub" / "a.webp").write_bytes(b"")
    found = find_images([tmp_path / "z.png", tmp_path / "sub", tmp_path / "empty*"])
    assert found[:3] == [(str(tmp_path / "z.png"), None), (str(tmp_path / "sub" / "a.webp"), None),
                         (str(tmp_path / "sub" / "b.JPG"), None)]
    assert found[3][1] == f"no image file matches {tmp_path / 'empty*'}"


def test_our_checkpoints_keep_crop_pct_one(tmp_path):
    """A file that records its mean/std (as deit train writes them) is evaluated without a crop."""
    model, path = small_checkpoint(tmp_path)
    predictor = Predictor.from_checkpoint(path)
    assert predictor.preprocessing["crop_pct"] == 1.0 and predictor.preprocessing["interpolation"] == "bicubic"
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    expected = (torch.from_numpy(array).permute(2, 0, 1) / 255.0
                - torch.tensor([0.4, 0.5, 0.6])[:, None, None]) / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    torch.testing.assert_close(predictor.transform(Image.fromarray(array)), expected)  # passed through unchanged
    assert predictor.classes == ["ant", "bee", "cat"]


def test_resolver_order(caplog):
    """overrides > the file's record > the published variant > a warned fallback."""
    with torch.device("meta"):
        official = create_model("deit_small_distilled_patch16_224")
        finetuned = create_model("deit_small_distilled_patch16_224", num_classes=10)
    with caplog.at_level(logging.WARNING, logger="deit.deploy.preprocessing"):
        published = resolve_preprocessing(official)
        assert not caplog.records
        assert published == {"image_size": 224, "in_channels": 3, "mean": [0.485, 0.456, 0.406],
                             "std": [0.229, 0.224, 0.225], "crop_pct": 0.9, "interpolation": "bicubic",
                             "crop_mode": "center"}  # timm's pretrained_cfg of the release
        recorded = resolve_preprocessing(official, {"mean": [0.5] * 3, "std": [0.5] * 3})
        assert recorded["crop_pct"] == 1.0 and recorded["mean"] == [0.5] * 3
        hf = resolve_preprocessing(official, {"crop_pct": 0.875})  # partial: the rest from the variant
        assert hf["crop_pct"] == 0.875 and hf["mean"] == published["mean"]
        forced = resolve_preprocessing(official, {"mean": [0.5] * 3}, {"mean": [0.1], "crop_pct": 0.5})
        assert forced["mean"] == [0.1] * 3 and forced["crop_pct"] == 0.5
        assert not caplog.records
        guessed = resolve_preprocessing(finetuned, source="ft.pth")
    assert guessed["crop_pct"] == 0.9  # the variant's values, with a warning
    assert len(caplog.records) == 1 and "ft.pth" in caplog.text and FLAGS in caplog.text


def test_labels_order():
    with torch.device("meta"):
        official = create_model("deit_tiny_patch16_224")
        other = create_model("deit_tiny_patch16_224", num_classes=3)
    names, ids = resolve_labels(official)
    assert ids[0] == "n01440764" and names[0] == ImageNetInfo("imagenet-1k").index_to_description(0)
    assert resolve_labels(official, [f"c{i}" for i in range(1000)])[0][:2] == ["c0", "c1"]
    assert resolve_labels(other) == (["0", "1", "2"], [None] * 3)


def write_folder(root, classes=("ant", "bee", "cat"), per_class=2):
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                photo(root / split / name / f"{i}.png", (36, 36), seed=10 * k + i)
    return root


def test_eval_bad_images_policy_names_the_eval_flag(tmp_path, capsys):
    root = write_folder(tmp_path / "folder")
    (root / "val" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _, path = small_checkpoint(tmp_path)
    argv = ["eval", "--checkpoint", str(path), "--dataset", str(root), "--output", str(tmp_path / "eval")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "deit eval --bad-images skip" in err and "train with" not in err
    assert main(argv + ["--bad-images", "skip", "--crop-pct", "0.875"]) == 0
    assert "top-1" in capsys.readouterr().out  # the unreadable file skipped


def test_eval_skips_unreadable_files_from_the_metric_and_names_them(tmp_path, capsys):
    """32 readable validation files and 4 unreadable ones: the accuracy is that of the 32, each
    counted once (no substitute in a skipped file's place), and the report names the 4."""
    classes = ("ant", "bee", "cat", "dog")
    root = write_folder(tmp_path / "folder", classes, per_class=8)
    readable = sorted((root / "val").rglob("*.png"))
    bad = [root / "val" / name / "3x.png" for name in classes]
    for path in bad:
        path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _, checkpoint = small_checkpoint(tmp_path, classes)
    predicted = Predictor.from_checkpoint(checkpoint, overrides={"crop_pct": 0.875}).predict_files(readable)
    expected = 100.0 * np.mean([r["top"][0]["class"] == p.parent.name for r, p in zip(predicted, readable)])
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", str(root), "--output", str(tmp_path / "eval"),
                 "--bad-images", "skip", "--crop-pct", "0.875", "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    names = [f"val/{name}/3x.png" for name in classes]
    assert f"(32 images; 4 unreadable file(s) skipped, not counted: {', '.join(names)})" in out
    assert f"top-1 {expected:6.2f}%" in out
    report = json.loads((tmp_path / "eval" / "small-eval.json").read_text())
    assert report["metrics"]["count"] == 32 and report["metrics"]["skipped"] == 4
    assert report["metrics"]["acc1"] == pytest.approx(expected) and report["skipped_files"] == names
    from deit.deploy.predict import evaluate_checkpoint  # batches of one: a batch of an unreadable file only

    one_by_one = evaluate_checkpoint(checkpoint, dataset=str(root), batch_size=1, bad_images="skip",
                                     overrides={"crop_pct": 0.875}, output=tmp_path / "eval1")
    assert one_by_one.metrics["count"] == 32 and one_by_one.metrics["acc1"] == pytest.approx(expected)
    assert one_by_one.skipped == names
