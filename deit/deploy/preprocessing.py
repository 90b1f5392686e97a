"""Which preprocessing and which class names belong to a model: one resolver for
``deit predict``, ``deit eval``, ``deit export`` (and the metadata of the exported file) and
``deit visualize``.

Preprocessing (``image_size``, ``in_channels``, ``mean``, ``std``, ``crop_pct``,
``interpolation``, ``crop_mode``) is taken key by key, first found wins:

1. explicit overrides (``--mean``, ``--std``, ``--crop-pct``, ``--interpolation``);
2. the checkpoint's own ``data_config`` (ours, or what an HF ``preprocessor_config.json``
   says); a file that records its normalisation but not its crop was evaluated by this
   library with ``crop_pct`` 1.0 and bicubic resizing, so those are its values;
3. the registered variant's pretrained configuration (timm's ``pretrained_cfg``, see
   :mod:`deit.models.pretrained`) when the model is that variant as published: same
   number of classes, image size and channels, and published weights exist;
4. otherwise, with a warning naming the flags to set: the variant's configuration if the
   model is a registered variant (other classes or size, or no published weights: the
   small-image variants use mean/std 0.5 and ``crop_pct`` 1.0), else timm's defaults for a
   model without a pretrained configuration (``timm/data/config.py``
   ``resolve_data_config``: ImageNet mean/std, ``crop_pct`` 0.875, bicubic).

The evaluation transform built from these values is timm's (``create_transform(
is_training=False)``): shorter side resized to ``floor(image_size / crop_pct)``, centre crop
``image_size``, ToTensor, Normalize.

Class names: the checkpoint's ``classes`` (ours, or HF ``id2label``), else the variant's
label set (ImageNet-1k display names with their WordNet synset ids) when the number of
classes matches, else the indices as strings.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

from torch import nn

from deit.core.errors import ConfigError
from deit.data.transforms import CROP_MODES
from deit.models.pretrained import INTERPOLATIONS, class_names, stats_for_channels
from deit.models.registry import get_pretrained_cfg

__all__ = ["FALLBACK", "OVERRIDE_FLAGS", "PREPROCESSING_KEYS", "check_overrides", "resolve_labels",
           "resolve_preprocessing", "variant_config"]

logger = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("image_size", "in_channels", "mean", "std", "crop_pct", "interpolation", "crop_mode")
EVAL_INTERPOLATIONS = INTERPOLATIONS  # PIL filters (HF resample); never random at evaluation
# timm/data/constants.py IMAGENET_DEFAULT_MEAN / _STD and DEFAULT_CROP_PCT, the values
# timm's resolve_data_config gives a model that has no pretrained configuration
FALLBACK = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875,
            "interpolation": "bicubic", "crop_mode": "center"}
# what this library's evaluation transform did for a file that records mean/std only
RECORDED_DEFAULTS = {"crop_pct": 1.0, "interpolation": "bicubic", "crop_mode": "center"}
OVERRIDE_FLAGS = {"mean": "--mean", "std": "--std", "crop_pct": "--crop-pct", "interpolation": "--interpolation"}


def check_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate user overrides (``None`` entries dropped); errors name the flag."""
    checked: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in OVERRIDE_FLAGS and key not in PREPROCESSING_KEYS:
            raise ConfigError(f"unknown preprocessing setting {key!r}; expected one of {', '.join(PREPROCESSING_KEYS)}")
        flag = OVERRIDE_FLAGS.get(key, key)
        if key in ("mean", "std"):
            values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            if len(values) not in (1, 3) or any(not math.isfinite(v) for v in values):
                raise ConfigError(f"{flag} {values} is invalid; expected 1 or 3 finite numbers (one per channel)")
            if key == "std" and min(values) <= 0:
                raise ConfigError(f"{flag} {values} is invalid; expected every entry > 0")
            value = values
        elif key == "crop_pct":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ConfigError(f"{flag} {value!r} is invalid; expected the fraction of the resized image kept by "
                                  "the centre crop, in (0, 1] (0.875 for timm's default, 1.0 to keep all)")
            value = float(value)
        elif key == "interpolation" and value not in EVAL_INTERPOLATIONS:
            raise ConfigError(f"{flag} {value!r} is invalid; expected one of {', '.join(EVAL_INTERPOLATIONS)}")
        elif key == "crop_mode" and value not in CROP_MODES:
            raise ConfigError(f"crop_mode {value!r} is invalid; expected one of {', '.join(CROP_MODES)}")
        checked[key] = value
    return checked


def variant_config(model: nn.Module) -> dict[str, Any] | None:
    """The pretrained configuration's ``data_config()`` of the registered variant ``model`` is,
    when the model is that variant as published (weights exist, same classes, image size and
    channels); else ``None``."""
    data, published = _variant(model)
    return data if published else None


def _variant(model: nn.Module) -> tuple[dict[str, Any] | None, bool]:
    """``(data_config of the model's registered variant or None, whether the model is that
    variant as published)``."""
    cfg = _pretrained_cfg(getattr(model, "model_name", None))
    if cfg is None:
        return None, False
    data = dict(cfg.data_config())
    published = (bool(getattr(cfg, "has_weights", False))
                 and getattr(model, "num_classes", None) == cfg.num_classes
                 and getattr(model, "image_size", data["image_size"]) == data["image_size"]
                 and getattr(model, "in_channels", data["in_channels"]) == data["in_channels"])
    return data, published


def _pretrained_cfg(name: str | None) -> Any:
    if not name:
        return None

    try:
        return get_pretrained_cfg(name)
    except (KeyError, ValueError):
        return None


def resolve_preprocessing(model: nn.Module, data_config: Mapping[str, Any] | None = None,
                          overrides: Mapping[str, Any] | None = None, *, source: str = "the weights",
                          fallback: Mapping[str, Any] | None = None,
                          fallback_name: str = "timm's defaults") -> dict[str, Any]:
    """The evaluation preprocessing of ``model`` (see the module docstring for the order):
    a dict with :data:`PREPROCESSING_KEYS`, ready for ``build_transform(is_train=False, **it)``.

    ``data_config`` is the checkpoint's own (possibly partial) record; ``overrides`` the
    user's flags; ``source`` names the file in the warning given when nothing is known.
    ``fallback`` / ``fallback_name`` replace the last step where the caller knows better
    (``deit eval`` uses the statistics of the data set it evaluates on).
    """
    data_config = {k: v for k, v in (data_config or {}).items() if v is not None}
    overrides = check_overrides(overrides)
    variant, published = _variant(model)
    if not published:  # the variant's own values are then only the best guess, with a warning
        if variant is not None:
            fallback_name = f"{model.model_name}'s configuration" if fallback is None else fallback_name
            fallback = {**{k: v for k, v in variant.items() if k not in ("image_size", "in_channels")},
                        **(fallback or {})}
        variant = None
    in_channels = int(overrides.get("in_channels") or data_config.get("in_channels")
                      or getattr(model, "in_channels", None) or (variant or {}).get("in_channels") or 3)
    image_size = int(overrides.get("image_size") or data_config.get("image_size")
                     or getattr(model, "image_size", None) or (variant or {}).get("image_size") or 224)
    layers: list[Mapping[str, Any]] = [overrides, data_config]
    if data_config.get("mean") is not None:
        layers.append(RECORDED_DEFAULTS)
    if variant is not None:
        layers.append(variant)
    resolved: dict[str, Any] = {"image_size": image_size, "in_channels": in_channels}
    last_resort = {**FALLBACK, **(fallback or {})}
    guessed = []
    for key in ("mean", "std", "crop_pct", "interpolation", "crop_mode"):
        found = next((layer[key] for layer in layers if layer.get(key) is not None), None)
        if found is None:
            found = last_resort[key]
            if key in OVERRIDE_FLAGS:
                guessed.append(key)
        resolved[key] = found
    resolved["mean"] = list(stats_for_channels(resolved["mean"], in_channels))
    resolved["std"] = list(stats_for_channels(resolved["std"], in_channels))
    resolved["crop_pct"] = float(resolved["crop_pct"])
    if guessed:
        name = getattr(model, "model_name", None) or type(model).__name__
        shown = ", ".join(f"{k}={resolved[k]}" for k in guessed)
        flags = " ".join(OVERRIDE_FLAGS[k] for k in guessed)
        logger.warning("no preprocessing is recorded in %s and %s (%d classes, %d px) does not match a published "
                       "variant: using %s %s; if the weights were trained otherwise, pass %s", source, name,
                       getattr(model, "num_classes", 0), image_size, fallback_name, shown, flags)
    return resolved


def resolve_labels(model: nn.Module, classes: Sequence[Any] | None = None, class_ids: Sequence[Any] | None = None
                   ) -> tuple[list[str], list[str | None]]:
    """``(names, ids)`` for the model's outputs: the checkpoint's ``classes`` (ours or HF
    ``id2label``; ``class_ids`` beside them where the file has them), else the variant's label
    set when the class count matches (ImageNet-1k: display names and WordNet synset ids), else
    the indices. ``ids`` holds ``None`` where a class has no id of its own."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if classes:
        names = [str(c) for c in classes]
        if num_classes and len(names) != num_classes:
            logger.warning("the checkpoint names %d classes but the model has %d outputs: using the indices",
                           len(names), num_classes)
        else:
            ids = [str(i) for i in class_ids] if class_ids and len(class_ids) == len(names) else [None] * len(names)
            return names, ids
    cfg = _pretrained_cfg(getattr(model, "model_name", None))
    label_set = getattr(cfg, "label_set", None) if cfg is not None else None
    if label_set and cfg.num_classes == num_classes:
        names, ids = class_names(label_set)
        if len(names) == num_classes:
            return [str(n) for n in names], [str(i) for i in ids]
    return [str(i) for i in range(num_classes)], [None] * num_classes
