"""Transforms: shapes, normalisation and randomness for the three channel cases."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_auto_augment

from deit.data.transforms import _posterize, build_transform, load_image

MEAN, STD = (0.25,), (0.5,)
RGB_MEAN, RGB_STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)


def grey_image(size=28, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8))


def rgb_image(size=28, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


CASES = {  # name: (source image, in_channels, mean, std)
    "grey->1": (grey_image, 1, MEAN, STD),
    "rgb->3": (rgb_image, 3, RGB_MEAN, RGB_STD),
    "grey->3": (grey_image, 3, MEAN, STD),  # 1-entry stats replicated
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("is_train", [True, False])
def test_output_shape_and_dtype(case, is_train):
    make, channels, mean, std = CASES[case]
    transform = build_transform(is_train=is_train, image_size=32, in_channels=channels, mean=mean, std=std)
    out = transform(make())
    assert out.shape == (channels, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_eval_normalises_exactly():
    array = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    out = build_transform(is_train=False, image_size=28, in_channels=3, mean=RGB_MEAN, std=RGB_STD)(
        Image.fromarray(array))
    expected = (torch.from_numpy(array).permute(2, 0, 1) / 255.0
                - torch.tensor(RGB_MEAN)[:, None, None]) / torch.tensor(RGB_STD)[:, None, None]
    torch.testing.assert_close(out, expected)  # 28 -> 28: no resampling, no crop loss

    grey = grey_image()
    one = build_transform(is_train=False, image_size=28, in_channels=1, mean=MEAN, std=STD)(grey)
    torch.testing.assert_close(one[0], (torch.from_numpy(np.array(grey)) / 255.0 - 0.25) / 0.5)
    three = build_transform(is_train=False, image_size=28, in_channels=3, mean=MEAN, std=STD)(grey)
    for c in range(3):  # grey replicated to three identical channels
        torch.testing.assert_close(three[c], one[0])


def test_eval_resizes_small_images_and_reduces_rgb_to_grey():
    out = build_transform(is_train=False, image_size=16, in_channels=1, mean=MEAN, std=STD)(grey_image(8))
    assert out.shape == (1, 16, 16)
    constant = Image.new("RGB", (20, 20), (51, 51, 51))  # RGB source, 1-channel model
    out = build_transform(is_train=False, image_size=20, in_channels=1, mean=(0.2,), std=(0.1,))(constant)
    torch.testing.assert_close(out, torch.zeros(1, 20, 20))


@pytest.mark.parametrize("size, crop_pct, interpolation, crop_mode", [
    ((500, 375), 0.875, "bicubic", "center"),  # timm's default (official DeiT eval at 224 px: 256 -> 224)
    ((375, 500), 0.9, "bicubic", "center"),  # timm's pretrained_cfg of the DeiT releases
    ((97, 61), 1.0, "bilinear", "center"),  # the 384 px releases keep the whole shorter side
    ((80, 50), 0.8, "nearest", "squash"),
])
def test_eval_is_timms_eval_transform(size, crop_pct, interpolation, crop_mode):
    """Resize the shorter side to floor(size / crop_pct), centre crop, normalise: equal to
    timm's create_transform(is_training=False) and to the same steps written out in torchvision."""
    import math

    from timm.data import create_transform
    from torchvision import transforms as T

    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = build_transform(is_train=False, image_size=48, in_channels=3, mean=RGB_MEAN, std=RGB_STD,
                           crop_pct=crop_pct, interpolation=interpolation, crop_mode=crop_mode)(rgb)
    timm_eval = create_transform(input_size=48, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                                 crop_mode=crop_mode, mean=RGB_MEAN, std=RGB_STD)
    torch.testing.assert_close(ours, timm_eval(rgb), rtol=0, atol=0)
    scale = math.floor(48 / crop_pct)
    filters = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
               "nearest": T.InterpolationMode.NEAREST}
    by_hand = T.Compose([T.Resize(scale if crop_mode == "center" else (scale, scale),
                                  interpolation=filters[interpolation]),
                         T.CenterCrop(48), T.ToTensor(), T.Normalize(RGB_MEAN, RGB_STD)])(rgb)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=0)


def test_eval_crop_arguments_are_checked():
    with pytest.raises(ValueError, match=r"crop_pct=1.5 is invalid.*--crop-pct"):
        build_transform(is_train=False, image_size=16, in_channels=1, mean=MEAN, std=STD, crop_pct=1.5)
    with pytest.raises(ValueError, match="crop_mode"):
        build_transform(is_train=False, image_size=16, in_channels=1, mean=MEAN, std=STD, crop_mode="corner")


def test_eval_is_deterministic_and_train_is_random():
    image = grey_image()
    evaluate = build_transform(is_train=False, image_size=28, in_channels=1, mean=MEAN, std=STD)
    torch.testing.assert_close(evaluate(image), evaluate(image))
    train = build_transform(is_train=True, image_size=28, in_channels=1, mean=MEAN, std=STD)
    outs = [train(image) for _ in range(4)]
    assert all(not torch.equal(outs[0], other) for other in outs[1:])

    def seeded():
        random.seed(3), np.random.seed(3), torch.manual_seed(3)
        return train(image)
    torch.testing.assert_close(seeded(), seeded())  # randomness comes from the global RNGs only


@pytest.mark.parametrize("case", list(CASES))
def test_full_recipe_survives_many_draws(case):
    """RandAugment + random erasing over many draws in every channel mode (the rare
    magnitude-10 posterize is tested on its own below)."""
    make, channels, mean, std = CASES[case]
    transform = build_transform(is_train=True, image_size=16, in_channels=channels, mean=mean, std=std)
    image = make(16)
    random.seed(0)
    for _ in range(300):
        assert transform(image).shape == (channels, 16, 16)


def test_posterize_zero_bits_gives_black_image():
    transform = build_transform(is_train=True, image_size=16, in_channels=1, mean=MEAN, std=STD)
    ops = [op for op in transform.transforms[1].transforms[2].ops if op.name == "PosterizeIncreasing"]
    assert len(ops) == 1 and ops[0].aug_fn is _posterize
    op = ops[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # level 10 -> keep 0 bits
    assert np.asarray(op(grey_image(16))).max() == 0
    assert timm_auto_augment.posterize is not _posterize  # timm's module itself is untouched


def test_train_without_auto_augment_uses_color_jitter_on_grey():
    transform = build_transform(is_train=True, image_size=16, in_channels=1, mean=MEAN, std=STD,
                                auto_augment=None, color_jitter=0.3, reprob=0.0)
    names = [type(t).__name__ for t in transform.transforms[1].transforms]
    assert "ColorJitter" in names and "RandomErasing" not in names
    assert transform(grey_image()).shape == (1, 16, 16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=1, mean=(0.1, 0.2, 0.3), std=(0.1, 0.1, 0.1)), "mean has 3 entries .* expected 1"),
    (dict(in_channels=3, mean=(0.1, 0.2), std=(0.1, 0.1)), "mean has 2 entries .* expected 3"),
    (dict(in_channels=1, mean=(0.1,), std=(0.0,)), r"std=\(0.0,\) is invalid; expected every entry > 0"),
    (dict(in_channels=2, mean=(0.1,), std=(0.1,)), "in_channels=2 is not supported"),
    (dict(in_channels=1, mean=(0.1,), std=(0.1,), reprob=1.5), "reprob=1.5 is invalid"),
    (dict(in_channels=1, mean=(0.1,), std=(0.1,), scale=(0.5, 0.2)), "scale=.* expected \\(low, high\\)"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_transform(is_train=True, image_size=16, **kwargs)


def test_load_image(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(path)
    assert load_image(path, 3).mode == "RGB" and load_image(path, 3).size == (6, 5)
    assert load_image(str(path), 1).mode == "L"
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png", 1)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image"):
        load_image(bad, 1)
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read .*cut.png"):
        load_image(truncated, 3)
