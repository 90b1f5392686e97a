"""Classify images with an exported ONNX file and onnxruntime alone.

No torch and none of this library's model code: only numpy, Pillow and onnxruntime, so the
file can be copied to a machine without PyTorch together with ``data/decode.py`` beside it
(the library's one image decoder: EXIF orientation, 16-bit scaling), which it loads by path
when the ``deit`` package cannot be imported. The preprocessing is the one recorded in
the file by :func:`deit.deploy.export.export_model` and reproduces the library's evaluation
transform, timm's (shorter side resized to ``floor(image_size / crop_pct)`` with the
recorded ``interpolation``, centre crop, ``/255``, per-channel ``(x - mean) / std``, NCHW
float32); tests check it against :func:`deit.data.build_transform`.

    deit predict --onnx model.onnx IMAGE...
    python deit/deploy/onnx_predict.py model.onnx IMAGE...     # the same, without importing torch
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

try:
    from deit.core.errors import ConfigError
except ImportError:  # run without torch (and so without the deit package): plain ValueErrors
    ConfigError = ValueError

__all__ = ["OnnxPredictor", "preprocess", "read_onnx_metadata"]


@functools.lru_cache(maxsize=1)
def _decoder():
    """The module ``deit/data/decode.py``: from the package when it imports, else the file
    beside this one, loaded alone (it needs only numpy and Pillow)."""
    try:
        from deit.data import decode as module
    except ImportError:  # no torch here: load the decoder module by its path
        import importlib.util

        decode = Path(__file__).parents[1] / "data" / "decode.py"
        spec = importlib.util.spec_from_file_location("deit_image_decode", decode)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


_REQUIRED = ("image_size", "in_channels", "mean", "std", "classes", "outputs")


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata_props`` written by ``deit export``, JSON-decoded."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError and friends
        raise ConfigError(f"{path} is not a readable ONNX file ({type(err).__name__}: {err})") from None
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise ConfigError(f"{path} lacks the preprocessing metadata {missing}; expected a file written by "
                          "`deit export` (it records image size, mean/std and class names)")
    return metadata


_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
            "hamming": Image.Resampling.HAMMING}


def _resize_and_crop(image: Image.Image, size: int, crop_pct: float, interpolation: str, crop_mode: str
                     ) -> Image.Image:
    """timm's evaluation resize and crop on a PIL image (``transforms_imagenet_eval``, with
    torchvision's ``Resize`` / ``CenterCrop`` arithmetic for PIL input): the shorter side
    (``crop_mode`` ``center``) or both sides (``squash``) to ``floor(size / crop_pct)``, then
    the centred ``size`` x ``size`` square."""
    if interpolation not in _FILTERS:
        raise ConfigError(f"interpolation {interpolation!r} in the file's metadata is not supported; expected one "
                          f"of {', '.join(_FILTERS)}")
    scale = int(math.floor(size / crop_pct))
    w, h = image.size
    if crop_mode == "squash":
        new_w, new_h = scale, scale
    elif crop_mode == "center":
        new_w, new_h = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    else:
        raise ConfigError(f"crop_mode {crop_mode!r} in the file's metadata is not supported here; expected center "
                          "or squash (export again with deit export)")
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), _FILTERS[interpolation])
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(path: str | os.PathLike, metadata: dict[str, Any]) -> np.ndarray:
    """One image file -> (C, H, W) float32, as the model was evaluated: decoded by the
    library's decoder (EXIF orientation, high bit depths scaled), then resized and cropped."""
    image = _decoder().load_image(path, int(metadata["in_channels"]))  # L or RGB, oriented, 8-bit
    image = _resize_and_crop(image, int(metadata["image_size"]), float(metadata.get("crop_pct", 1.0)),
                             metadata.get("interpolation", "bicubic"), metadata.get("crop_mode", "center"))
    array = np.asarray(image, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    mean = np.asarray(metadata["mean"], dtype=np.float32)[:, None, None]  # (C, 1, 1)
    std = np.asarray(metadata["std"], dtype=np.float32)[:, None, None]  # (C, 1, 1)
    return (array - mean) / std


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (B, K)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class OnnxPredictor:
    """Top-k classes for image files from an exported ONNX file."""

    def __init__(self, path: str | os.PathLike) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        outputs = self.metadata["outputs"]
        # the prediction: the fused DeiT⚗ output when all three heads were exported
        self.output_index = outputs.index("fusion") if "fusion" in outputs else 0

    def predict_files(self, paths: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 32
                      ) -> list[dict[str, Any]]:
        """As :meth:`deit.deploy.predict.Predictor.predict_files`: one result per path, in order,
        ``{"image", "top"}`` or ``{"image", "error"}``; ``batch_size`` images per run."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
            raise ConfigError(f"topk={topk!r} is invalid; expected a positive integer")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size!r} is invalid; expected a positive integer")
        classes, ids = self.metadata["classes"], self.metadata.get("class_ids")
        results: list[dict[str, Any]] = []
        for entries, arrays in _decoder().decoded_batches(paths, lambda p: preprocess(p, self.metadata), batch_size):
            results.extend(entries)  # arrays: (C, H, W) each, for the readable files
            good = [entry for entry in entries if "error" not in entry]
            if not arrays:
                continue
            batch = np.stack(arrays)  # (B, C, H, W)
            logits = self.session.run(None, {self.metadata.get("input", "images"): batch})[self.output_index]
            probabilities = _softmax(logits.astype(np.float64))  # (B, K)
            k = min(topk, probabilities.shape[1])
            for item, row in zip(good, probabilities):
                order = np.argsort(-row, kind="stable")[:k]
                item["top"] = [{"class": classes[i], **({"id": ids[i]} if ids and ids[i] else {}), "index": int(i),
                                "probability": float(row[i])} for i in order]
        return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python onnx_predict.py MODEL.onnx IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    try:
        results = OnnxPredictor(args[0]).predict_files(args[1:])
    except (ValueError, OSError) as err:
        print(f"onnx_predict: error: {err}", file=sys.stderr)
        return 2
    for item in results:
        if "error" in item:
            print(f"onnx_predict: error: {item['error']}", file=sys.stderr)
        else:
            print(f"{item['image']}: " + "; ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in item["top"]))
    return 1 if any("error" in item for item in results) else 0


if __name__ == "__main__":
    sys.exit(main())
