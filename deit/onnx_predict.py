"""Classify images with an exported ONNX file and onnxruntime alone (issue 6, item 1).

No torch and none of this library's model code: only numpy, Pillow and onnxruntime, so the
file can be copied to a machine without PyTorch. The preprocessing is the one recorded in
the file by :func:`deit.export.export_model` and reproduces the library's evaluation
transform (shorter side resized to ``image_size`` with bicubic filtering, centre crop,
``/255``, per-channel ``(x - mean) / std``, NCHW float32); a test checks it against
:func:`deit.data.build_transform` to 1e-6.

    deit predict --onnx model.onnx IMAGE...
    python deit/onnx_predict.py model.onnx IMAGE...     # the same, without importing torch
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["OnnxPredictor", "preprocess", "read_onnx_metadata"]

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
        raise ValueError(f"{path} is not a readable ONNX file ({type(err).__name__}: {err})") from None
    metadata = {p.key: json.loads(p.value) for p in model.metadata_props}
    missing = [k for k in _REQUIRED if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks the preprocessing metadata {missing}; expected a file written by "
                         "`deit export` (it records image size, mean/std and class names)")
    return metadata


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return image.resize((new_w, new_h), Image.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(path: str | os.PathLike, metadata: dict[str, Any]) -> np.ndarray:
    """One image file -> (C, H, W) float32, as the model was evaluated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert(metadata.get("color_mode") or ("L" if metadata["in_channels"] == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from None
    size = int(metadata["image_size"])
    image = _center_crop(_resize_shorter_side(image, size), size)
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

    def predict_files(self, paths: Sequence[str | os.PathLike], topk: int = 5) -> list[dict[str, Any]]:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk <= 0:
            raise ValueError(f"topk={topk!r} is invalid; expected a positive integer")
        batch = np.stack([preprocess(p, self.metadata) for p in paths])  # (B, C, H, W)
        logits = self.session.run(None, {self.metadata.get("input", "images"): batch})[self.output_index]
        probabilities = _softmax(logits.astype(np.float64))  # (B, K)
        classes = self.metadata["classes"]
        k = min(topk, probabilities.shape[1])
        results = []
        for path, row in zip(paths, probabilities):
            order = np.argsort(-row, kind="stable")[:k]
            results.append({"image": str(path), "top": [{"class": classes[i], "index": int(i),
                                                         "probability": float(row[i])} for i in order]})
        return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python onnx_predict.py MODEL.onnx IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    try:
        for item in OnnxPredictor(args[0]).predict_files(args[1:]):
            print(f"{item['image']}: " + ", ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in item["top"]))
    except (ValueError, OSError) as err:
        print(f"onnx_predict: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
