"""What int8 costs in accuracy: a trained checkpoint, fp32 PyTorch against its int8 ONNX export.

The checkpoint's own validation set (its ``data_config``: Fashion-MNIST's 10,000 test
images for a model trained by ``deit demo`` or ``scripts/fashion_results.py``) goes through
the fp32 model in PyTorch and through the file ``deit export --quantize int8`` writes
(ONNX Runtime, :mod:`deit.deploy.quantize`), with the same preprocessing. Printed: top-1 of
each, the change, how often the two top-1s agree and the largest logit difference.

    .venv/bin/python benchmarks/int8_accuracy.py runs/fashion/student_hard/seed0/best.pth
    .venv/bin/python benchmarks/int8_accuracy.py CKPT --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def measure(checkpoint: str | Path, *, data_dir: str | None = None, batch_size: int = 256,
            limit: int | None = None) -> dict[str, Any]:
    """Top-1 (percent) of fp32 PyTorch and of the int8 export on the checkpoint's validation set."""
    import onnxruntime as ort

    from deit.data import build_transform, load_dataset
    from deit.deploy.export import ExportHead, export_model
    from deit.deploy.predict import load_for_inference
    from deit.deploy.preprocessing import PREPROCESSING_KEYS
    from deit.deploy.quantize import compare_int8

    model, meta = load_for_inference(checkpoint)
    head = ExportHead(model).eval()
    with tempfile.TemporaryDirectory(prefix="deit-int8-") as folder:
        path, metadata = export_model(model, Path(folder) / "model.onnx", data_config=meta["data_config"],
                                      classes=meta["classes"], class_ids=meta["class_ids"], quantize="int8")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    transform = build_transform(is_train=False, **{k: metadata[k] for k in PREPROCESSING_KEYS})
    val = load_dataset(meta["data_config"]["dataset"], "val", data_dir, transform=transform)
    if limit is not None:
        val = torch.utils.data.Subset(val, range(min(limit, len(val))))
    fp32_logits, int8_logits, labels = [], [], []
    with torch.inference_mode():
        for images, targets in torch.utils.data.DataLoader(val, batch_size=batch_size):
            out = head(images)
            fp32_logits.append((out[0] if isinstance(out, tuple) else out).numpy())
            int8_logits.append(session.run(None, {"images": images.numpy()})[0])
            labels.append(targets.numpy())
    fp32, int8, y = np.concatenate(fp32_logits), np.concatenate(int8_logits), np.concatenate(labels)
    agreement = compare_int8(fp32, int8)
    top1_fp32 = 100.0 * float((fp32.argmax(1) == y).mean())
    top1_int8 = 100.0 * float((int8.argmax(1) == y).mean())
    return {"checkpoint": str(checkpoint), "model": metadata["model_name"], "dataset": meta["data_config"]["dataset"],
            "images": int(len(y)), "top1_fp32": top1_fp32, "top1_int8": top1_int8,
            "top1_change": top1_int8 - top1_fp32, "top1_agreement": 100.0 * agreement.top1_agreement,
            "max_abs_logit_diff": agreement.max_abs_logit_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by deit train")
    parser.add_argument("--data-dir", help="folder of the data set's IDX files, when not the default")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(args.checkpoint, data_dir=args.data_dir)
    print(f"{result['model']} on {result['dataset']} ({result['images']} images): top-1 fp32 {result['top1_fp32']:.2f}%, "
          f"int8 {result['top1_int8']:.2f}% (change {result['top1_change']:+.2f} points); top-1 equal on "
          f"{result['top1_agreement']:.2f}%; max |Δlogit| {result['max_abs_logit_diff']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
