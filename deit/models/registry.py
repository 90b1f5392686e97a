"""Model registry: thin variant functions over the configurable classes (timm style).

Names of the DeiT and ConvNeXt variants are timm's, so a checkpoint saved by timm or the
official DeiT code for ``deit_small_distilled_patch16_224`` loads into the model of the
same name here. The ``*_patch4_32`` and ``*_patch7_28`` DeiTs, ``convnext_*_32`` ConvNeXts
and ``resnet*_32`` ResNets (He et al. 2016, §4.2) are this library's small-image variants
for 28–32 px data (Fashion-MNIST, CIFAR, digits).
Every name has a pretrained configuration (:mod:`deit.models.pretrained`, timm's
``pretrained_cfg``): the input its published weights expect and where those files are.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

from torch import nn

from deit.core.errors import ConfigError
from deit.models.convnext import ConvNeXt
from deit.models.deit import DeiT
from deit.models.pretrained import PretrainedCfg, pretrained_cfg_names
from deit.models.pretrained import get_pretrained_cfg as _builtin_pretrained_cfg
from deit.models.resnet import ResNet
from deit.models.vit import ViT

FAMILIES = ("vit", "convnext", "resnet")  # "vit": ViT and DeiT, the family that takes image_size

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}
_PRETRAINED: dict[str, PretrainedCfg] = {}


def register_model(family: str, pretrained_cfg: PretrainedCfg | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a variant function under its own name; ``family`` is one of :data:`FAMILIES`.

    ``pretrained_cfg`` describes the variant's input and published weights; the built-in
    names take theirs from :mod:`deit.models.pretrained`.
    """
    if family not in FAMILIES:
        raise ConfigError(f"register_model: family={family!r} is not supported; expected one of: "
                          f"{', '.join(repr(f) for f in FAMILIES)}")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = fn
        _FAMILY[fn.__name__] = family
        if pretrained_cfg is not None:
            _PRETRAINED[fn.__name__] = pretrained_cfg
        return fn

    return wrap


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a substring or fnmatch pattern."""
    import fnmatch

    names = sorted(_MODELS)
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return names


def model_family(name: str) -> str:
    """"vit" (ViT and DeiT, which take ``image_size``), "convnext" or "resnet"."""
    check_model_name(name)
    return _FAMILY[name]


def check_model_name(name: str) -> None:
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model name {name!r}{hint} Registered models: {', '.join(sorted(_MODELS))}")


# timm's keyword names (timm/models/vision_transformer.py, convnext.py, resnet.py) -> ours, per family.
# drop_path_rate on a ViT is handled apart: it sets two of our arguments.
TIMM_ALIASES: dict[str, dict[str, str]] = {
    "vit": {"img_size": "image_size", "in_chans": "in_channels", "drop_rate": "dropout",
            "proj_drop_rate": "encoder_dropout", "attn_drop_rate": "encoder_attention_dropout"},
    "convnext": {"in_chans": "in_channels", "drop_rate": "head_dropout"},
    "resnet": {"in_chans": "in_channels", "drop_rate": "head_dropout"},
}
_GLOBAL_POOL = {"vit": "token", "convnext": "avg", "resnet": "avg"}  # the one pooling each family implements
_CONVNETS = {"convnext": "ConvNeXt", "resnet": "ResNet"}  # fully convolutional: no size argument


def resolve_timm_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments with timm's keyword names translated to ours.

    ``drop_path_rate`` on a ViT/DeiT becomes ``stochastic_depth=True`` with
    ``stochastic_depth_mp=rate`` (both rise linearly over the blocks from 0, as timm's
    ``dpr``); ``global_pool`` is accepted only with the pooling the family has ("token" for
    ViT/DeiT, "avg" for ConvNeXt and ResNet) and then dropped. Giving an alias together with the name it
    stands for is an error naming both.
    """
    family = model_family(name)
    out = dict(kwargs)
    for alias, native in TIMM_ALIASES[family].items():
        if alias in out:
            if native in out:
                raise ConfigError(f"{alias}={out[alias]!r} (timm's name) and {native}={out[native]!r} were both given "
                                  f"for {name}; they are the same setting: pass only one")
            out[native] = out.pop(alias)
    if "img_size" in out:  # left only for the convnets (a ViT's became image_size above)
        raise ConfigError(f"img_size={out['img_size']!r} does not apply to {name}: {_CONVNETS[family]} takes any "
                          "input size (omit img_size)")
    if family == "vit" and "drop_path_rate" in out:
        given = [k for k in ("stochastic_depth", "stochastic_depth_mp") if k in out]
        if given:
            raise ConfigError(f"drop_path_rate={out['drop_path_rate']!r} (timm's name) and {given[0]}={out[given[0]]!r} "
                              f"were both given for {name}; drop_path_rate sets stochastic_depth and "
                              "stochastic_depth_mp: pass one or the other")
        rate = out.pop("drop_path_rate")
        out.update(stochastic_depth=bool(rate), stochastic_depth_mp=rate)
    if "global_pool" in out:
        pool = out.pop("global_pool")
        if pool != _GLOBAL_POOL[family]:
            raise ConfigError(f"global_pool={pool!r} is not supported by {name}: it pools with "
                              f"{_GLOBAL_POOL[family]!r} only (omit global_pool or pass {_GLOBAL_POOL[family]!r})")
    return out


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained configuration of a registered name (see :mod:`deit.models.pretrained`).

    Raises:
        ValueError: unknown name, or a name registered without a configuration.
    """
    check_model_name(name)
    if name in _PRETRAINED:
        return _PRETRAINED[name]
    if name in pretrained_cfg_names():
        return _builtin_pretrained_cfg(name)
    raise ConfigError(f"model {name!r} was registered without a pretrained configuration; register it with "
                      "register_model(family, pretrained_cfg=PretrainedCfg(input_size=(3, H, W), ...))")


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The registered variant ``name`` with random weights; ``kwargs`` are constructor
    arguments or their timm names (:func:`resolve_timm_kwargs`). Loading weights is
    :func:`deit.weights.factory.create_model`'s."""
    check_model_name(name)
    model = _MODELS[name](**resolve_timm_kwargs(name, kwargs))
    model.model_name = name
    return model


# --- DeiT / ViT ----------------------------------------------------------------------------

def _vit(distilled: bool, size: dict[str, int], image_size: int, patch_size: int,
         overrides: dict[str, Any]) -> nn.Module:
    """One ViT/DeiT variant: ``size`` gives width, heads and depth; ``overrides`` win."""
    cfg: dict[str, Any] = dict(d_model=size["d_model"], encoder_num_heads=size["heads"],
                               num_encoder_blocks=size["depth"], encoder_mlp_d=4 * size["d_model"],
                               image_size=image_size, patch_size=patch_size, patchify_technique="convolutional")
    cfg.update(overrides)
    if not distilled:
        return ViT(**cfg)
    cfg.setdefault("return_logits_type", "fusion")
    return DeiT(**cfg)


_TINY = dict(d_model=192, heads=3, depth=12)
_SMALL = dict(d_model=384, heads=6, depth=12)
_BASE = dict(d_model=768, heads=12, depth=12)
_NANO = dict(d_model=128, heads=4, depth=6)
_PICO = dict(d_model=64, heads=2, depth=6)


@register_model("vit")
def deit_tiny_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-Ti, 5.7M parameters (paper Table 1)."""
    return _vit(False, _TINY, 224, 16, kw)


@register_model("vit")
def deit_small_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-S, 22M parameters."""
    return _vit(False, _SMALL, 224, 16, kw)


@register_model("vit")
def deit_base_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-B, 86M parameters."""
    return _vit(False, _BASE, 224, 16, kw)


@register_model("vit")
def deit_base_patch16_384(**kw: Any) -> nn.Module:
    """DeiT-B↑384 (fine-tuned at 384 px)."""
    return _vit(False, _BASE, 384, 16, kw)


@register_model("vit")
def deit_tiny_distilled_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-Ti⚗, 5.9M parameters."""
    return _vit(True, _TINY, 224, 16, kw)


@register_model("vit")
def deit_small_distilled_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-S⚗, 22.4M parameters."""
    return _vit(True, _SMALL, 224, 16, kw)


@register_model("vit")
def deit_base_distilled_patch16_224(**kw: Any) -> nn.Module:
    """DeiT-B⚗, 87.3M parameters."""
    return _vit(True, _BASE, 224, 16, kw)


@register_model("vit")
def deit_base_distilled_patch16_384(**kw: Any) -> nn.Module:
    """DeiT-B⚗↑384."""
    return _vit(True, _BASE, 384, 16, kw)


@register_model("vit")
def deit_pico_patch4_32(**kw: Any) -> nn.Module:
    """Small-image ViT (width 64, 6 blocks, 0.3M parameters) for 28–32 px data."""
    return _vit(False, _PICO, 32, 4, kw)


@register_model("vit")
def deit_nano_patch4_32(**kw: Any) -> nn.Module:
    """Small-image ViT (width 128, 6 blocks, 1.2M parameters) for 28–32 px data."""
    return _vit(False, _NANO, 32, 4, kw)


@register_model("vit")
def deit_tiny_patch4_32(**kw: Any) -> nn.Module:
    """DeiT-Ti widths at 32 px with 4 px patches (64 tokens)."""
    return _vit(False, _TINY, 32, 4, kw)


@register_model("vit")
def deit_pico_distilled_patch4_32(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT (width 64, 6 blocks)."""
    return _vit(True, _PICO, 32, 4, kw)


@register_model("vit")
def deit_nano_distilled_patch4_32(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT (width 128, 6 blocks)."""
    return _vit(True, _NANO, 32, 4, kw)


@register_model("vit")
def deit_tiny_distilled_patch4_32(**kw: Any) -> nn.Module:
    """Distilled DeiT-Ti widths at 32 px with 4 px patches."""
    return _vit(True, _TINY, 32, 4, kw)


@register_model("vit")
def deit_pico_patch7_28(**kw: Any) -> nn.Module:
    """Small-image ViT for 28 px data (Fashion-MNIST, MNIST): width 64, 6 blocks, 7 px patches
    (16 tokens), 0.3M parameters; a quarter of the patch4 variant's tokens per image."""
    return _vit(False, _PICO, 28, 7, kw)


@register_model("vit")
def deit_pico_distilled_patch7_28(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT for 28 px data (width 64, 6 blocks, 7 px patches)."""
    return _vit(True, _PICO, 28, 7, kw)


def _convstem(distilled: bool, size: dict[str, int], image_size: int, patch_size: int,
              overrides: dict[str, Any]) -> nn.Module:
    """A small-image ViT/DeiT whose patches come from a convolutional stem (Xiao et al. 2021)."""
    return _vit(distilled, size, image_size, patch_size, dict(dict(patchify_technique="conv_stem"), **overrides))


@register_model("vit")
def deit_pico_convstem_patch8_28(**kw: Any) -> nn.Module:
    """Small-image ViT for 28 px data with a convolutional stem (Xiao et al. 2021): three
    stride-2 3x3 convolutions (28 -> 14 -> 7 -> 4) give 16 tokens of width 64; 6 blocks,
    0.3M parameters, about the speed of ``deit_pico_patch7_28``."""
    return _convstem(False, _PICO, 28, 8, kw)


@register_model("vit")
def deit_pico_distilled_convstem_patch8_28(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT for 28 px data with a convolutional stem (16 tokens, width 64)."""
    return _convstem(True, _PICO, 28, 8, kw)


@register_model("vit")
def deit_nano_convstem_patch8_28(**kw: Any) -> nn.Module:
    """Small-image ViT for 28 px data with a convolutional stem: 16 tokens of width 128, 6
    blocks, 1.3M parameters."""
    return _convstem(False, _NANO, 28, 8, kw)


@register_model("vit")
def deit_nano_distilled_convstem_patch8_28(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT for 28 px data with a convolutional stem (16 tokens, width 128)."""
    return _convstem(True, _NANO, 28, 8, kw)


@register_model("vit")
def deit_pico_convstem_patch4_28(**kw: Any) -> nn.Module:
    """Small-image ViT for 28 px data with a convolutional stem of two stride-2 convolutions:
    49 tokens of width 64 (a third of the speed of the patch-8 stem)."""
    return _convstem(False, _PICO, 28, 4, kw)


@register_model("vit")
def deit_pico_distilled_convstem_patch4_28(**kw: Any) -> nn.Module:
    """Distilled small-image DeiT for 28 px data with a two-convolution stem (49 tokens, width 64)."""
    return _convstem(True, _PICO, 28, 4, kw)


# --- ConvNeXt ------------------------------------------------------------------------------

def _convnext(size: tuple[tuple[int, ...], tuple[int, ...]], stem_stride: int,
              overrides: dict[str, Any]) -> ConvNeXt:
    """One ConvNeXt variant: ``size`` is (depths, dims); ``overrides`` win."""
    cfg: dict[str, Any] = dict(depths=size[0], dims=size[1], stem_stride=stem_stride)
    cfg.update(overrides)
    return ConvNeXt(**cfg)


_ATTO = ((2, 2, 6, 2), (40, 80, 160, 320))
_FEMTO = ((2, 2, 6, 2), (48, 96, 192, 384))
_CN_PICO = ((2, 2, 6, 2), (64, 128, 256, 512))
_CN_NANO = ((2, 2, 8, 2), (80, 160, 320, 640))
_CN_TINY = ((3, 3, 9, 3), (96, 192, 384, 768))


@register_model("convnext")
def convnext_atto(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Atto, 3.7M parameters (timm)."""
    return _convnext(_ATTO, 4, kw)


@register_model("convnext")
def convnext_femto(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Femto, 5.2M parameters (timm)."""
    return _convnext(_FEMTO, 4, kw)


@register_model("convnext")
def convnext_pico(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Pico, 9.1M parameters (timm)."""
    return _convnext(_CN_PICO, 4, kw)


@register_model("convnext")
def convnext_nano(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Nano, 15.6M parameters (timm)."""
    return _convnext(_CN_NANO, 4, kw)


@register_model("convnext")
def convnext_tiny(**kw: Any) -> ConvNeXt:
    """ConvNeXt-T, 28.6M parameters (paper)."""
    return _convnext(_CN_TINY, 4, kw)


@register_model("convnext")
def convnext_atto_32(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Atto with a stride-2 stem, for 28–32 px images."""
    return _convnext(_ATTO, 2, kw)


@register_model("convnext")
def convnext_femto_32(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Femto with a stride-2 stem, for 28–32 px images."""
    return _convnext(_FEMTO, 2, kw)


@register_model("convnext")
def convnext_pico_32(**kw: Any) -> ConvNeXt:
    """ConvNeXt-Pico with a stride-2 stem, for 28–32 px images."""
    return _convnext(_CN_PICO, 2, kw)


# --- ResNet (He et al. 2016, §4.2) -----------------------------------------------------------
# Parameter counts below are at num_classes=10 (the CIFAR head: 10 * (widths[-1] + 1)).

def _resnet(widths: tuple[int, ...], depths: tuple[int, ...], overrides: dict[str, Any]) -> ResNet:
    """One ResNet variant; ``overrides`` win."""
    cfg: dict[str, Any] = dict(widths=widths, depths=depths)
    cfg.update(overrides)
    return ResNet(**cfg)


@register_model("resnet")
def resnet8_32(**kw: Any) -> ResNet:
    """ResNet-8 (6n+2, n=1; widths 16/32/64) for 28–32 px images: 78,042 parameters at 10 classes."""
    return _resnet((16, 32, 64), (1, 1, 1), kw)


@register_model("resnet")
def resnet14_32(**kw: Any) -> ResNet:
    """ResNet-14 (6n+2, n=2; widths 16/32/64) for 28–32 px images: 175,258 parameters at 10 classes."""
    return _resnet((16, 32, 64), (2, 2, 2), kw)


@register_model("resnet")
def resnet20_32(**kw: Any) -> ResNet:
    """ResNet-20 of He et al. 2016 (§4.2, Table 6: 0.27M), 1x1-conv shortcuts: 272,474 parameters at 10 classes."""
    return _resnet((16, 32, 64), (3, 3, 3), kw)


@register_model("resnet")
def resnet8w4_32(**kw: Any) -> ResNet:
    """ResNet-8 at 4x width (64/128/256) for 28–32 px images: 1,227,594 parameters at 10 classes."""
    return _resnet((64, 128, 256), (1, 1, 1), kw)


@register_model("resnet")
def resnet14w2_32(**kw: Any) -> ResNet:
    """ResNet-14 at 2x width (32/64/128) for 28–32 px images: 696,618 parameters at 10 classes."""
    return _resnet((32, 64, 128), (2, 2, 2), kw)
