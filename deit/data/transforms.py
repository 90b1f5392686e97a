"""Image transforms for training and evaluation (DeiT recipe, built on timm).

Every transform takes a ``PIL.Image`` of any mode and returns a float tensor
(in_channels, image_size, image_size), normalised with ``mean`` / ``std``.

Channels: the image is first converted to the model's mode — ``L`` for
``in_channels=1``, ``RGB`` for ``in_channels=3`` (a grey source is then replicated to
three equal channels) — and every augmentation runs in that mode. timm's RandAugment
works on ``L`` images as long as its fill colour has one entry, which it derives from
``mean``; so a 1-entry ``mean`` gives a 1-entry fill and nothing needs converting back.

Pillow >= 13 rejects ``ImageOps.posterize(img, 0)``, which timm's ``PosterizeIncreasing``
asks for when the sampled magnitude reaches 10 (about 1 image in 700 with
``rand-m9-mstd0.5``, i.e. a crash every few batches). Our transforms swap in a posterize
that returns the black image older Pillow produced for 0 bits (see :func:`_posterize`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, ImageOps
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform
from torchvision import transforms as T

from deit.core.errors import ConfigError
from deit.core.validation import check_choice, check_positive_int, per_channel
from deit.data.decode import load_image  # every file is decoded there (EXIF, bit depth, channels)
from deit.models.pretrained import INTERPOLATIONS as PIL_INTERPOLATIONS
from deit.models.pretrained import stats_for_channels  # noqa: F401 (part of deit.data's API)

__all__ = ["CROP_MODES", "INTERPOLATIONS", "ConvertMode", "build_transform", "load_image"]

INTERPOLATIONS = (*PIL_INTERPOLATIONS, "random")  # timm str_to_interp_mode; random only while training
CROP_MODES = ("center", "squash", "border")  # timm transforms_imagenet_eval
_MODES = {1: "L", 3: "RGB"}


class ConvertMode:
    """``PIL.Image -> PIL.Image`` in ``mode`` (``L`` or ``RGB``); a no-op if already there."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, with 0 bits giving the all-black image (Pillow < 13 behaviour)
    instead of Pillow 13's ``ValueError: bits must be between or equal to 1 and 8``."""
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    if bits_to_keep >= 8:
        return img
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform) -> None:
    """Point every posterize op inside ``transform`` (RandAugment / AutoAugment / AugMix,
    possibly nested in Compose) at :func:`_posterize`. Changes these objects only."""
    stack = [transform]
    while stack:
        obj = stack.pop()
        if isinstance(obj, timm_auto_augment.AugmentOp):
            if obj.aug_fn is timm_auto_augment.posterize:
                obj.aug_fn = _posterize
            continue
        for attr in ("transforms", "ops", "policy"):
            children = getattr(obj, attr, None)
            if isinstance(children, (list, tuple)):
                stack.extend(children)
        if isinstance(obj, (list, tuple)):  # AutoAugment policy entries are lists of ops
            stack.extend(obj)


def _check_unit(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value!r} is invalid; expected a probability in [0, 1]")


def build_transform(*, is_train: bool, image_size: int, in_channels: int, mean: Sequence[float],
                    std: Sequence[float], auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                    color_jitter: float | None = 0.3, reprob: float = 0.25, remode: str = "pixel",
                    recount: int = 1, hflip: float = 0.5, scale: tuple[float, float] = (0.08, 1.0),
                    interpolation: str = "bicubic", crop_pct: float = 1.0,
                    crop_mode: str = "center") -> Callable[[Image.Image], torch.Tensor]:
    """The DeiT train or eval transform: ``PIL.Image -> (in_channels, image_size, image_size)``.

    Training (``is_train=True``) is timm's ``create_transform(is_training=True)``: random
    resized crop (``scale``, ``interpolation``), horizontal flip (``hflip``), RandAugment
    (``auto_augment``; timm then skips ``color_jitter``, which applies only without it),
    ToTensor, Normalize, random erasing (``reprob``, ``remode``, ``recount``) — preceded by
    the mode conversion described in the module docstring.

    Evaluation is timm's ``create_transform(is_training=False)``
    (``timm/data/transforms_factory.py`` ``transforms_imagenet_eval``): the shorter side
    resized to ``floor(image_size / crop_pct)`` with ``interpolation`` (``random`` means
    bicubic here), centre crop ``image_size`` (``crop_mode`` ``squash`` resizes both sides
    instead, ``border`` pads), ToTensor, Normalize. The official DeiT evaluation uses
    ``crop_pct`` 0.875 at 224 px and 1.0 at 384 px (timm's ``pretrained_cfg``); the default
    1.0 cuts nothing away, so 28 px images lose no border and a square image already at
    ``image_size`` passes through unchanged. The augmentation arguments are ignored.

    ``mean`` / ``std`` are per channel in [0, 1] units with ``in_channels`` entries; a
    1-entry pair is replicated when ``in_channels=3``.
    """
    check_positive_int("image_size", image_size)
    check_choice("in_channels", in_channels, tuple(_MODES))
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    mean = per_channel(mean, in_channels, name="mean")
    std = per_channel(std, in_channels, name="std", positive=True)
    convert = ConvertMode(_MODES[in_channels])
    if not is_train:
        if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct={crop_pct!r} is invalid; expected the fraction of the resized image kept "
                              "by the centre crop, in (0, 1] (--crop-pct)")
        check_choice("crop_mode", crop_mode, CROP_MODES)
        eval_interp = "bicubic" if interpolation == "random" else interpolation
        return T.Compose([convert, create_transform(input_size=image_size, is_training=False,
                                                    crop_pct=float(crop_pct), crop_mode=crop_mode,
                                                    interpolation=eval_interp, mean=mean, std=std)])
    if auto_augment is not None and not (isinstance(auto_augment, str) and auto_augment):
        raise ConfigError(f"auto_augment={auto_augment!r} is invalid; expected None or a timm policy "
                         "string such as 'rand-m9-mstd0.5-inc1'")
    if color_jitter is not None and (isinstance(color_jitter, bool) or not isinstance(color_jitter, (int, float))
                                     or color_jitter < 0):
        raise ConfigError(f"color_jitter={color_jitter!r} is invalid; expected None or a number >= 0")
    _check_unit("reprob", reprob)
    _check_unit("hflip", hflip)
    check_choice("remode", remode, ("pixel", "rand", "const"))
    check_positive_int("recount", recount)
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ConfigError(f"scale={tuple(scale)!r} is invalid; expected (low, high) with 0 < low <= high <= 1")
    train = create_transform(
        input_size=image_size, is_training=True, auto_augment=auto_augment or None,
        color_jitter=color_jitter if color_jitter else None, re_prob=float(reprob), re_mode=remode,
        re_count=recount, hflip=float(hflip), scale=tuple(scale), interpolation=interpolation,
        mean=mean, std=std)
    _patch_posterize(train)
    return T.Compose([convert, train])

