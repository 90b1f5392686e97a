"""Pretrained configurations: one per registered variant, the way timm's ``pretrained_cfg`` does it.

Each configuration says how the variant's published weights expect their input (size,
interpolation, ``crop_pct``, mean/std), what their outputs mean (number of classes, label
set) and where the weight files are published. The values are those of
``timm/models/deit.py`` (``_cfg`` and ``default_cfgs``: crop_pct 0.9 at 224 px, 1.0 for the
384 px fine-tunes, ImageNet mean/std, bicubic) and ``timm/models/convnext.py`` (``_cfg``:
crop_pct 0.875; 0.95 for ``convnext_nano.d1h_in1k``). The official DeiT release files
(facebookresearch/deit ``README_deit.md``) carry the first 8 hex digits of their SHA-256 in
their name, which the official ``models.py`` checks with ``torch.hub`` (``check_hash=True``);
the other files publish no checksum.

The small-image variants (``*_patch4_32``, ``*_patch7_28``, ``convnext_*_32``,
``resnet*_32``) are this library's own and have no published weights: their configuration
describes their input (32 px, or 28 px for the patch-7 students) and has no label set and
no weight files.

Pure data and small pure functions: the only file read is timm's packaged ImageNet label
files, lazily, in :func:`class_names`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from deit.core.errors import ConfigError
from deit.core.validation import per_channel

# resize filters a configuration may name: PIL's (timm's str_to_interp_mode, HF's resample)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_DEIT_URL = "https://dl.fbaipublicfiles.com/deit/"
_TIMM_RELEASE_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
_CONVNEXT_URL = "https://dl.fbaipublicfiles.com/convnext/"
HF_HUB_URL = "https://huggingface.co/"
"""Base of Hugging Face hub downloads: ``{HF_HUB_URL}{repo_id}/resolve/main/{file}``."""
TIMM_HUB_FILE = "model.safetensors"
"""The weights file of timm's hub repos (``timm/models/_hub.py`` ``HF_SAFE_WEIGHTS_NAME``)."""


@dataclass(frozen=True)
class WeightFile:
    """One published weight file.

    Attributes:
        url: direct download URL, or None when the file is only on the Hugging Face hub.
        hf_hub_id: Hugging Face hub repository holding a copy (``timm/<name>.<tag>``), or None.
        file_name: the file's name in the download cache and in a checkpoint directory.
        sha256: full hex digest or hex prefix (the ``-<prefix>.pth`` torch.hub convention);
            None when no checksum is published.
        layout: key layout of the file: ``"official"`` (``{'model': state_dict}`` of
            facebookresearch/deit or /ConvNeXt), ``"timm"`` or ``"hf"`` (transformers).
    """

    url: str | None
    hf_hub_id: str | None
    file_name: str
    sha256: str | None
    layout: str

    @property
    def download_url(self) -> str:
        """``url``, else the hub URL of ``hf_hub_id``'s weights file."""
        if self.url:
            return self.url
        if self.hf_hub_id:
            return f"{HF_HUB_URL}{self.hf_hub_id}/resolve/main/{TIMM_HUB_FILE}"
        raise ConfigError(f"weight file {self.file_name!r} has neither a URL nor a hub id")


@dataclass(frozen=True)
class PretrainedCfg:
    """How a variant's published weights see images and what their outputs mean.

    Field names and defaults follow timm's ``PretrainedCfg`` (``timm/models/_pretrained.py``).
    """

    input_size: tuple[int, int, int]  # (C, H, W)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    num_classes: int = 1000
    label_set: str | None = "imagenet-1k"
    weights: tuple[WeightFile, ...] = ()
    tag: str | None = None  # timm's pretrained tag of the weights described (``fb_in1k``)

    @property
    def has_weights(self) -> bool:
        return bool(self.weights)

    def data_config(self) -> dict[str, Any]:
        """The evaluation preprocessing as keyword values (timm ``resolve_data_config`` names)."""
        return {"image_size": self.input_size[1], "in_channels": self.input_size[0],
                "mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "crop_mode": self.crop_mode}


# --- DeiT (timm/models/deit.py default_cfgs, facebookresearch/deit README_deit.md) ---------------

def _deit(name: str, sha_prefix: str, size: int = 224) -> PretrainedCfg:
    """A DeiT release: the official file plus timm's hub copy, crop_pct 0.9 (1.0 at 384 px)."""
    official = WeightFile(url=f"{_DEIT_URL}{name}-{sha_prefix}.pth", hf_hub_id=None,
                          file_name=f"{name}-{sha_prefix}.pth", sha256=sha_prefix, layout="official")
    timm_copy = WeightFile(url=None, hf_hub_id=f"timm/{name}.fb_in1k",
                           file_name=f"{name}.fb_in1k.safetensors", sha256=None, layout="timm")
    return PretrainedCfg(input_size=(3, size, size), crop_pct=1.0 if size == 384 else 0.9,
                         weights=(official, timm_copy), tag="fb_in1k")


def _convnext(name: str, tag: str, url: str, crop_pct: float = 0.875, layout: str = "timm") -> PretrainedCfg:
    """A ConvNeXt release as timm's ``convnext.py`` describes it (its URL, then its hub copy)."""
    direct = WeightFile(url=url, hf_hub_id=None, file_name=url.rsplit("/", 1)[1], sha256=None, layout=layout)
    timm_copy = WeightFile(url=None, hf_hub_id=f"timm/{name}.{tag}",
                           file_name=f"{name}.{tag}.safetensors", sha256=None, layout="timm")
    return PretrainedCfg(input_size=(3, 224, 224), crop_pct=crop_pct, weights=(direct, timm_copy), tag=tag)


def _small(size: int = 32) -> PretrainedCfg:
    """This library's small-image variants: ``size`` px input (32, or 28 for the patch-7
    students of 28 px data), no published weights, no label set.

    crop_pct 1.0: the evaluation transform keeps the whole small image
    (``deit/data/transforms.py`` ``build_transform``). mean/std 0.5 map [0, 1] to [-1, 1]; a
    trained checkpoint carries its data set's own statistics, which take precedence.
    ``num_classes`` is the constructor's default.
    """
    return PretrainedCfg(input_size=(3, size, size), crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                         label_set=None)


_CFGS: dict[str, PretrainedCfg] = {
    "deit_tiny_patch16_224": _deit("deit_tiny_patch16_224", "a1311bcf"),
    "deit_small_patch16_224": _deit("deit_small_patch16_224", "cd65a155"),
    "deit_base_patch16_224": _deit("deit_base_patch16_224", "b5f2ef4d"),
    "deit_base_patch16_384": _deit("deit_base_patch16_384", "8de9b5d1", 384),
    "deit_tiny_distilled_patch16_224": _deit("deit_tiny_distilled_patch16_224", "b40b3cf7"),
    "deit_small_distilled_patch16_224": _deit("deit_small_distilled_patch16_224", "649709d9"),
    "deit_base_distilled_patch16_224": _deit("deit_base_distilled_patch16_224", "df68dfff"),
    "deit_base_distilled_patch16_384": _deit("deit_base_distilled_patch16_384", "d0272ac0", 384),
    "convnext_atto": _convnext("convnext_atto", "d2_in1k", _TIMM_RELEASE_URL + "convnext_atto_d2-01bb0f51.pth"),
    "convnext_femto": _convnext("convnext_femto", "d1_in1k", _TIMM_RELEASE_URL + "convnext_femto_d1-d71d5b4c.pth"),
    "convnext_pico": _convnext("convnext_pico", "d1_in1k", _TIMM_RELEASE_URL + "convnext_pico_d1-10ad7f0d.pth"),
    "convnext_nano": _convnext("convnext_nano", "d1h_in1k", _TIMM_RELEASE_URL + "convnext_nano_d1h-7eb4bdea.pth",
                               crop_pct=0.95),
    "convnext_tiny": _convnext("convnext_tiny", "fb_in1k", _CONVNEXT_URL + "convnext_tiny_1k_224_ema.pth",
                               layout="official"),
}
for _name in ("deit_pico_patch4_32", "deit_nano_patch4_32", "deit_tiny_patch4_32", "deit_pico_distilled_patch4_32",
              "deit_nano_distilled_patch4_32", "deit_tiny_distilled_patch4_32", "convnext_atto_32",
              "convnext_femto_32", "convnext_pico_32", "resnet8_32", "resnet14_32", "resnet20_32", "resnet8w4_32",
              "resnet14w2_32"):
    _CFGS[_name] = _small()
for _name in ("deit_pico_patch7_28", "deit_pico_distilled_patch7_28", "deit_pico_convstem_patch8_28",
              "deit_pico_distilled_convstem_patch8_28", "deit_nano_convstem_patch8_28",
              "deit_nano_distilled_convstem_patch8_28", "deit_pico_convstem_patch4_28",
              "deit_pico_distilled_convstem_patch4_28"):
    _CFGS[_name] = _small(28)


def pretrained_cfg_names() -> list[str]:
    """Every name with a pretrained configuration, sorted."""
    return sorted(_CFGS)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The pretrained configuration of a registered variant.

    Raises:
        ValueError: ``name`` is not a variant, listing close names.
    """
    try:
        return _CFGS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), _CFGS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"no pretrained configuration for model name {name!r}{hint} "
                          f"Known: {', '.join(sorted(_CFGS))}") from None


# --- label names ---------------------------------------------------------------------------

LABEL_SETS = ("imagenet-1k",)


@lru_cache(maxsize=None)
def _imagenet_1k() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from timm.data import ImageNetInfo  # timm/data/_info/imagenet_synsets.txt + _synset_to_lemma.txt

    info = ImageNetInfo("imagenet-1k")
    ids = tuple(info.label_names())
    names = tuple(info.label_name_to_description(s, detailed=False) for s in ids)
    return names, ids


def class_names(label_set: str) -> tuple[list[str], list[str]]:
    """``(display names, ids)`` of a label set, in class-index order.

    ``"imagenet-1k"``: WordNet lemmas (``"tench, Tinca tinca"``) and synset ids
    (``"n01440764"``) from the files timm ships (``timm.data.ImageNetInfo``).
    """
    if label_set == "imagenet-1k":
        names, ids = _imagenet_1k()
        return list(names), list(ids)
    raise ConfigError(f"unknown label set {label_set!r}; expected one of {', '.join(LABEL_SETS)}")


def stats_for_channels(values: Any, channels: int) -> tuple[float, ...]:
    """Normalisation statistics (one value or one per channel) for ``channels`` input
    channels: grey statistics replicated for RGB input, RGB statistics averaged for grey
    input — what a model trained on one kind of image is fed when given the other."""
    return per_channel(values, channels, name="statistics", mismatch="average")
