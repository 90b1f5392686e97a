"""int8 inference on CPU: dynamic quantisation of an exported ONNX model by ONNX Runtime.

Dynamic quantisation stores the weights of the matrix products (every linear layer of the
transformer: qkv, projection, MLP, heads) as int8 and quantises activations on the fly per
batch, so nothing has to be calibrated. Of the three implementations available with
torch 2.14 — ``torch.ao.quantization.quantize_dynamic`` (deprecated in 2.14), its
successor ``torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())``
and ONNX Runtime's ``onnxruntime.quantization.quantize_dynamic`` — ONNX Runtime's was the
fastest on CPU in eager execution (the comparison is in ``benchmarks/README.md``), and
it also gives an int8 file to deploy. ``deit export --quantize int8`` writes that file and
``deit predict --quantize int8`` runs a checkpoint through it.

An int8 model is not the fp32 model: it is verified by how often its top-1 equals the
fp32 model's and by a stated bound on the logits' difference (:func:`compare_int8`), not by
the fp32 export tolerance.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deit.core.errors import ConfigError

QUANTIZATIONS = ("int8",)
INT8_LOGIT_BOUND = 0.5
"""Largest |int8 − fp32| logit accepted when an int8 export is verified (``--int8-atol``)."""
INT8_MIN_AGREEMENT = 0.9
"""Smallest share of images on which the int8 top-1 must equal the fp32 top-1 (real images)."""


def quantize_onnx_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write ``target``: ``source`` (an fp32 ONNX file) with int8 weights for its MatMul and
    Gemm nodes, activations quantised per batch (ONNX Runtime ``quantize_dynamic``, signed
    int8 weights, per output channel). The metadata of ``source`` is carried over."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to run ONNX Runtime's pre-processing first: shape inference we don't need
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    model = onnx.load(str(target))
    del model.metadata_props[:]  # the quantiser's own marker is not JSON; the file carries deit's metadata only
    model.metadata_props.extend(onnx.load(str(source), load_external_data=False).metadata_props)
    onnx.save(model, str(target))
    return target


@dataclass
class Int8Agreement:
    """int8 against fp32 on the same images: top-1 agreement and the largest logit change."""

    images: int
    top1_agreement: float  # share in [0, 1]
    max_abs_logit_diff: float

    def check(self, *, logit_bound: float = INT8_LOGIT_BOUND, min_agreement: float | None = INT8_MIN_AGREEMENT,
              what: str = "the int8 model") -> "Int8Agreement":
        """Raise ``AssertionError`` when the logits moved more than ``logit_bound`` or the
        top-1 agreement is below ``min_agreement`` (``None``: not checked, e.g. on noise)."""
        if not self.max_abs_logit_diff <= logit_bound:
            raise AssertionError(f"{what} moves the logits by up to {self.max_abs_logit_diff:.3g} against fp32 on "
                                 f"{self.images} images; the bound is {logit_bound}")
        if min_agreement is not None and self.top1_agreement < min_agreement:
            raise AssertionError(f"{what} agrees with fp32 on the top-1 of {100 * self.top1_agreement:.1f}% of "
                                 f"{self.images} images; at least {100 * min_agreement:.0f}% expected")
        return self


def compare_int8(fp32_logits: np.ndarray, int8_logits: np.ndarray) -> Int8Agreement:
    """:class:`Int8Agreement` of two (B, K) logit arrays."""
    fp32_logits, int8_logits = np.asarray(fp32_logits, np.float32), np.asarray(int8_logits, np.float32)
    if fp32_logits.shape != int8_logits.shape or fp32_logits.ndim != 2:
        raise ConfigError(f"cannot compare logits of shapes {fp32_logits.shape} and {int8_logits.shape}; expected "
                          "two (batch, classes) arrays")
    agree = float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean()) if len(fp32_logits) else 1.0
    return Int8Agreement(images=len(fp32_logits), top1_agreement=agree,
                         max_abs_logit_diff=float(np.abs(fp32_logits - int8_logits).max(initial=0.0)))


__all__ = ["INT8_LOGIT_BOUND", "INT8_MIN_AGREEMENT", "Int8Agreement", "QUANTIZATIONS", "compare_int8",
           "quantize_onnx_int8"]
