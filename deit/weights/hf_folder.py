"""HF transformers ``save_pretrained`` folders of DeiT, read as they are.

A folder holds ``config.json`` (a ``DeiTConfig``), the weights as ``model.safetensors``
or ``pytorch_model.bin`` (or their sharded form: ``<name>.index.json`` with a
``weight_map``), and optionally ``preprocessor_config.json`` (a ``DeiTImageProcessor``).
The weights are renamed to timm's layout by :func:`deit.weights.layouts.convert_hf_deit`;
this module turns the two JSON files into constructor arguments, class names and a
``data_config`` for prediction.

``save_pretrained`` writes only the values that differ from the class defaults in some
versions, so a missing key means the default of ``transformers/models/deit/
configuration_deit.py`` (``DeiTConfig``) and ``image_processing_deit.py``
(``DeiTImageProcessor``), copied below; note HF's ``layer_norm_eps`` default is 1e-12
where timm and the official weights use 1e-6.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from deit.core.errors import CheckpointError
from deit.core.validation import per_channel
from deit.weights.files import read_checkpoint_file

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_FORMAT = "hf_transformers"

# transformers/models/deit/configuration_deit.py, DeiTConfig
HF_DEIT_CONFIG_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 224, "patch_size": 16, "num_channels": 3,
    "qkv_bias": True,
}
# transformers/models/deit/image_processing_deit.py, DeiTImageProcessor (IMAGENET_STANDARD_MEAN/STD = 0.5)
HF_DEIT_PROCESSOR_DEFAULTS: dict[str, Any] = {
    "do_resize": True, "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}
# PIL.Image.Resampling codes, as HF stores ``resample``
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a {type(value).__name__}, expected a JSON object")
    return value


def hf_folder_of(path: str | os.PathLike) -> Path | None:
    """The HF folder ``path`` denotes: a directory with ``config.json``, or the
    ``model.safetensors`` / ``pytorch_model.bin`` file inside one (its config then applies
    too). ``None`` for anything else."""
    path = Path(path)
    if path.is_dir():
        return path if (path / "config.json").is_file() else None
    if path.name in HF_WEIGHT_FILES and (path.parent / "config.json").is_file():
        try:
            config = json.loads((path.parent / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return path.parent if isinstance(config, dict) and "model_type" in config else None
    return None


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight file(s) of a folder: a single file, else the shards of an index."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in HF_WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no 'weight_map'")
            shards = [folder / shard for shard in sorted(set(weight_map.values()))]
            missing = [str(s) for s in shards if not s.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
            return shards
    expected = ", ".join(HF_WEIGHT_FILES + tuple(f"{n}.index.json" for n in HF_WEIGHT_FILES))
    raise CheckpointError(f"HF folder {folder} has config.json but no weights; expected one of {expected}")


def read_hf_folder(folder: Path, weights: Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Weights of an HF folder and, as string metadata, its config.json and
    preprocessor_config.json. ``weights``: one file of the folder to read instead of
    looking for them."""
    config = _read_json(folder / "config.json")
    tensors: dict[str, Any] = {}
    for path in [weights] if weights is not None else hf_weight_files(folder):
        obj, _ = read_checkpoint_file(path)
        tensors.update(obj)
    metadata = {"format": HF_FORMAT, "hf_folder": str(folder), "hf_config": json.dumps(config)}
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        metadata["hf_preprocessor_config"] = json.dumps(_read_json(processor))
    return tensors, metadata


def hf_config_value(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, HF_DEIT_CONFIG_DEFAULTS.get(key))


def _square(value: Any, what: str) -> int:
    """An int, or a [h, w] pair with h == w (HF accepts both for image and patch size)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"config.json {what}={list(value)}: only square sizes are supported")
        value = value[0]
    return int(value)


def check_hf_config(config: Mapping[str, Any]) -> None:
    """Refuse a config this library's DeiT cannot reproduce, naming the value."""
    model_type = config.get("model_type")
    if model_type != "deit":
        raise CheckpointError(f"config.json has model_type={model_type!r}; only HF DeiT folders (model_type 'deit') "
                              "are read")
    act = hf_config_value(config, "hidden_act")
    if act != "gelu":
        raise CheckpointError(f"config.json hidden_act={act!r}: this library's blocks use the exact GELU ('gelu')")
    if not hf_config_value(config, "qkv_bias"):
        raise CheckpointError("config.json qkv_bias=false: this library's attention always has a qkv bias")


def hf_model_overrides(config: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(num_attention_heads, constructor arguments)`` from a DeiT config.json: every shape
    value as ViT/DeiT arguments, and ``norm_eps`` from ``layer_norm_eps``."""
    check_hf_config(config)
    heads = int(hf_config_value(config, "num_attention_heads"))
    return heads, {
        "d_model": int(hf_config_value(config, "hidden_size")),
        "num_encoder_blocks": int(hf_config_value(config, "num_hidden_layers")),
        "encoder_num_heads": heads,
        "encoder_mlp_d": int(hf_config_value(config, "intermediate_size")),
        "image_size": _square(hf_config_value(config, "image_size"), "image_size"),
        "patch_size": _square(hf_config_value(config, "patch_size"), "patch_size"),
        "in_channels": int(hf_config_value(config, "num_channels")),
        "norm_eps": float(hf_config_value(config, "layer_norm_eps")),
    }


def hf_classes(config: Mapping[str, Any]) -> list[str] | None:
    """Display names of ``id2label``, ordered by index; ``None`` if absent or not 0..K-1."""
    id2label = config.get("id2label")
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if set(by_index) != set(range(len(by_index))):
        return None
    return [by_index[i] for i in range(len(by_index))]


def _size(value: Any, what: str) -> tuple[str, int, int]:
    """HF size -> (mode, h, w): ``{"height", "width"}`` or an int is a fixed-size resize
    ("squash"); ``{"shortest_edge": s}`` keeps the aspect ratio ("center")."""
    if isinstance(value, (int, float)):
        return "squash", int(value), int(value)
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return "squash", int(value["height"]), int(value["width"])
    if isinstance(value, Mapping) and "shortest_edge" in value and "longest_edge" not in value:
        return "center", int(value["shortest_edge"]), int(value["shortest_edge"])
    raise CheckpointError(f"preprocessor_config.json {what}={value!r} is not a supported size "
                          "({'height', 'width'}, {'shortest_edge'} or an int)")


def _per_channel(value: Any, channels: int, what: str) -> list[float]:
    return list(per_channel(value, channels, name=what, error=CheckpointError,
                            message=f"preprocessor_config.json {what}={value!r} does not fit {channels} channels; "
                                    "expected one value per channel or a single value"))


def hf_data_config(processor: Mapping[str, Any], in_channels: int, notes: list[str]) -> dict[str, Any] | None:
    """A ``data_config`` with the effect of HF's ``DeiTImageProcessor`` on an image.

    HF (``image_processing_backends.py``): resize to ``size`` with ``resample``, centre-crop
    ``crop_size``, multiply by ``rescale_factor``, normalise with ``image_mean`` /
    ``image_std``. With ``size = {height: S, width: S}`` the resize is to exactly S x S,
    which is timm's ``crop_mode='squash'`` with ``crop_pct = crop / S`` (timm's
    ``transforms_imagenet_eval``: resize to ``floor(crop / crop_pct)`` per side, then
    centre-crop); for square images it is also the same as timm's default ``'center'``
    (shorter side to S). ``{shortest_edge: S}`` is timm's ``'center'``. A rescale factor
    other than 1/255 is folded into mean and std: ``(x*r - m)/s = (x/255 - m')/s'`` with
    ``m' = m/(255 r)``, ``s' = s/(255 r)``.

    Returns ``None`` (with a note) for a processor that no such config can express:
    non-square resize or crop, no resize.
    """
    kind = processor.get("image_processor_type") or processor.get("feature_extractor_type") or "?"
    if not str(kind).startswith(("DeiT", "ViT", "?")):
        notes.append(f"preprocessor_config.json is a {kind}; read as DeiTImageProcessor settings")

    def get(key: str) -> Any:
        return processor.get(key, HF_DEIT_PROCESSOR_DEFAULTS[key])

    if not get("do_resize"):
        notes.append("preprocessor_config.json does not resize (do_resize=false): its preprocessing is not used")
        return None
    mode, resize_h, resize_w = _size(get("size"), "size")
    crop_h, crop_w = (_size(get("crop_size"), "crop_size")[1:] if get("do_center_crop") else (resize_h, resize_w))
    if resize_h != resize_w or crop_h != crop_w:
        notes.append(f"preprocessor_config.json resizes to {resize_h}x{resize_w} and crops {crop_h}x{crop_w}: "
                     "non-square preprocessing is not used")
        return None
    resample = get("resample")
    interpolation = PIL_RESAMPLE.get(int(resample)) if isinstance(resample, (int, float)) else str(resample).lower()
    if interpolation not in PIL_RESAMPLE.values():
        raise CheckpointError(f"preprocessor_config.json resample={resample!r} is not a PIL resampling code 0-5")
    scale = float(get("rescale_factor")) * 255 if get("do_rescale") else 255.0
    mean = _per_channel(get("image_mean"), in_channels, "image_mean") if get("do_normalize") else [0.0] * in_channels
    std = _per_channel(get("image_std"), in_channels, "image_std") if get("do_normalize") else [1.0] * in_channels
    return {"image_size": crop_h, "in_channels": in_channels,
            "mean": [m / scale for m in mean], "std": [s / scale for s in std],
            "crop_pct": crop_h / resize_h, "interpolation": interpolation, "crop_mode": mode}


def hf_info(metadata: Mapping[str, str]) -> dict[str, Any]:
    """``hf_config``, ``classes``, ``data_config`` and ``load_notes`` of an HF folder's
    metadata (see :func:`read_hf_folder`)."""
    config = json.loads(metadata["hf_config"])
    check_hf_config(config)
    info: dict[str, Any] = {"hf_config": config, "load_notes": [f"HF transformers folder {metadata['hf_folder']}: "
                                                                "config.json applied"]}
    classes = hf_classes(config)
    if classes is not None:
        info["classes"] = classes
    if metadata.get("hf_preprocessor_config"):
        processor = json.loads(metadata["hf_preprocessor_config"])
        in_channels = int(hf_config_value(config, "num_channels"))
        data_config = hf_data_config(processor, in_channels, info["load_notes"])
        if data_config is not None:
            info["data_config"] = data_config
            info["load_notes"].append(f"preprocessing from preprocessor_config.json: {data_config['crop_mode']} "
                                      f"resize, crop_pct={data_config['crop_pct']:.4g}, "
                                      f"{data_config['interpolation']}")
    return info
