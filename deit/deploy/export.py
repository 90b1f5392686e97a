"""Export a trained model to ONNX or TorchScript, verified against PyTorch.

The exported graph is the *student* only (the teacher is a training-time companion) and
returns, for a DeiT, the head chosen with ``head``: by default the model's own eval output
(its ``return_logits_type``: ``"fusion"`` for our distilled variants, the class head for a
plain HF ``DeiTForImageClassification``), else ``"fusion"`` (mean of the two heads'
logits, the paper's DeiT⚗ prediction), ``"cls"``, ``"dist"`` or ``"all"`` (three outputs
``cls``, ``dist``, ``fusion``); a ViT, ConvNeXt or ResNet has one output, ``logits``. The
batch axis is dynamic.

``quantize="int8"`` writes an ONNX file whose matrix products run in int8
(:mod:`deit.deploy.quantize`), verified by top-1 agreement with the fp32 model and a stated logit
bound instead of the fp32 tolerance.

Everything needed to use the file without this library travels inside it (ONNX
``metadata_props`` / TorchScript ``_extra_files["deit.json"]``): model name, image size,
channels, mean/std, resize/crop rule (``crop_pct``, ``interpolation``), class names and output names — see
:func:`export_metadata`. :mod:`deit.deploy.onnx_predict` reads them to classify images with
onnxruntime alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.fileio import atomic_write
from deit.core.validation import check_choice
from deit.data import build_transform, load_dataset
from deit.data.datasets import DatasetNotFoundError
from deit.deploy.onnx_predict import OnnxPredictor, read_onnx_metadata
from deit.deploy.predict import load_for_inference
from deit.deploy.preprocessing import PREPROCESSING_KEYS, resolve_labels, resolve_preprocessing
from deit.deploy.quantize import INT8_LOGIT_BOUND, INT8_MIN_AGREEMENT, QUANTIZATIONS, compare_int8, quantize_onnx_int8
from deit.models.outputs import classifier_heads

__all__ = ["EXPORT_FORMATS", "HEADS", "ExportHead", "export_metadata", "export_model", "int8_predictor",
           "verify_export"]

EXPORT_FORMATS = ("onnx", "torchscript")
HEADS = ("fusion", "cls", "dist", "all")
METADATA_KEY = "deit.json"
RETURN_TYPE_HEADS = {"classification": "cls", "distillation": "dist", "fusion": "fusion"}  # DeiT.return_logits_type


class ExportHead(nn.Module):
    """The student with a fixed output: images (B, C, H, W) -> logits (B, K) or a tuple."""

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        super().__init__()
        self.distilled = hasattr(model, "forward_heads")
        if head is None:  # the model's own eval output (a plain HF DeiT: its class head only)
            head = RETURN_TYPE_HEADS.get(getattr(model, "return_logits_type", "fusion"), "fusion")
        check_choice("head", head, HEADS)
        if not self.distilled and head != "fusion":
            raise ConfigError(f"head={head!r} needs a distilled model (cls and dist heads); "
                              f"{getattr(model, 'model_name', type(model).__name__)} has a single head: "
                              "export it with head='fusion' (the default)")
        self.model = model
        self.head = head
        self.eval()  # exporters restore the wrapper's own mode afterwards: it must be eval too

    @property
    def output_names(self) -> list[str]:
        if not self.distilled:
            return ["logits"]
        return ["cls", "dist", "fusion"] if self.head == "all" else [self.head]

    def forward(self, x: torch.Tensor):
        if not self.distilled:
            return self.model(x)  # (B, K)
        heads = classifier_heads(self.model, x)  # (B, K) each
        if self.head == "all":
            return heads.cls, heads.dist, heads.fused
        return {"cls": heads.cls, "dist": heads.dist, "fusion": heads.fused}[self.head]


def export_metadata(model: nn.Module, data_config: Mapping[str, Any], classes: Sequence[str] | None,
                    outputs: Sequence[str], overrides: Mapping[str, Any] | None = None,
                    class_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """What a consumer of the exported file needs: preprocessing (resolved by
    :func:`deit.deploy.preprocessing.resolve_preprocessing`, as ``deit predict`` does), class names
    (and ids where the label set has them), outputs."""

    preprocessing = resolve_preprocessing(model, data_config, overrides)
    names, ids = resolve_labels(model, classes, class_ids)
    in_channels = preprocessing["in_channels"]
    metadata = {
        "format": "deit-export", "format_version": 2,
        "model_name": getattr(model, "model_name", None) or type(model).__name__,
        "image_size": preprocessing["image_size"], "in_channels": in_channels,
        "color_mode": "L" if in_channels == 1 else "RGB",
        "mean": [float(v) for v in preprocessing["mean"]], "std": [float(v) for v in preprocessing["std"]],
        # the evaluation transform (deit.data.build_transform, timm's): shorter side to
        # floor(image_size / crop_pct) with `interpolation`, centre crop image_size x image_size
        # (crop_mode "squash": both sides resized), /255, (x - mean) / std, NCHW float32
        "resize": "shorter_side", "interpolation": preprocessing["interpolation"], "crop": "center",
        "crop_pct": preprocessing["crop_pct"], "crop_mode": preprocessing["crop_mode"],
        "classes": names,
        "outputs": list(outputs), "input": "images",
    }
    if any(i is not None for i in ids):
        metadata["class_ids"] = ids
    return metadata


def export_model(model: nn.Module, path: str | os.PathLike, *, fmt: str | None = None, head: str | None = None,
                 data_config: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None,
                 opset: int = 18, batch_size: int = 2, overrides: Mapping[str, Any] | None = None,
                 class_ids: Sequence[str] | None = None, quantize: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``model`` as ONNX (``.onnx``) or TorchScript (``.pt``/``.ts``/``.torchscript``).

    Args:
        fmt: ``"onnx"`` or ``"torchscript"``; default from the suffix.
        head: see the module docstring.
        data_config / classes: what :func:`deit.deploy.predict.load_for_inference` returns for a
            checkpoint; recorded as metadata (``classes=None``: the variant's labels).
        overrides: preprocessing settings given by the user (``--mean`` ...).
        batch_size: batch of the example input used to trace (the batch axis stays dynamic).
        quantize: ``"int8"`` (ONNX only): dynamic int8 quantisation (:mod:`deit.deploy.quantize`).

    Returns ``(path, metadata)``. The file is written atomically.
    """
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript" if path.suffix in (".pt", ".ts", ".torchscript")
                  else None)
    if fmt is None:
        raise ConfigError(f"cannot tell the export format from {path.name}: expected a .onnx file (ONNX) or "
                          ".pt / .ts / .torchscript (TorchScript), or pass fmt=")
    check_choice("fmt", fmt, EXPORT_FORMATS)
    if quantize is not None:
        check_choice("quantize", quantize, QUANTIZATIONS)
        if fmt != "onnx":
            raise ConfigError(f"--quantize {quantize} writes ONNX (ONNX Runtime runs the int8 kernels); got "
                              f"{path.name}: use a .onnx output")
    wrapper = ExportHead(model, head)
    data_config = dict(data_config or {})
    metadata = export_metadata(model, data_config, classes, wrapper.output_names, overrides, class_ids)
    if quantize is not None:
        metadata["quantization"] = f"{quantize} dynamic (onnxruntime)"
    example = torch.randn(batch_size, metadata["in_channels"], metadata["image_size"], metadata["image_size"])
    if quantize is not None:
        atomic_write(path, lambda tmp: _write_onnx_int8(wrapper, example, tmp, metadata, opset))
    elif fmt == "onnx":
        atomic_write(path, lambda tmp: _write_onnx(wrapper, example, tmp, metadata, opset))
    else:
        atomic_write(path, lambda tmp: _write_torchscript(wrapper, example, tmp, metadata))
    return path, metadata


@contextlib.contextmanager
def _quiet_tracing():
    """The tracer warns about our input checks (shape comparisons become constants: correct,
    since only the batch axis varies) and torch deprecates jit.trace in favour of export."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        # the TorchScript-based ONNX exporter (dynamo=False): deprecated in favour of the
        # torch.export-based one, but still supported and exact for these models
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        yield


def _write_onnx(wrapper: ExportHead, example: torch.Tensor, tmp: Path, metadata: dict[str, Any],
                opset: int) -> None:
    import onnx

    batch = {0: "batch"}
    with torch.no_grad(), _quiet_tracing():
        torch.onnx.export(wrapper, (example,), str(tmp), input_names=["images"], output_names=wrapper.output_names,
                          dynamic_axes={"images": batch, **{name: batch for name in wrapper.output_names}},
                          opset_version=opset, dynamo=False)
    graph = onnx.load(str(tmp))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=json.dumps(value))
    graph.producer_name = "deit"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))


def _write_onnx_int8(wrapper: ExportHead, example: torch.Tensor, tmp: Path, metadata: dict[str, Any],
                     opset: int) -> None:
    fp32 = tmp.with_name(tmp.name + ".fp32.onnx")
    try:
        _write_onnx(wrapper, example, fp32, metadata, opset)
        quantize_onnx_int8(fp32, tmp)
    finally:
        fp32.unlink(missing_ok=True)


def _write_torchscript(wrapper: ExportHead, example: torch.Tensor, tmp: Path, metadata: dict[str, Any]) -> None:
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    traced.save(str(tmp), _extra_files={METADATA_KEY: json.dumps(metadata)})


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata recorded by :func:`export_model` in an ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        return read_onnx_metadata(path)
    files = {METADATA_KEY: ""}
    with _quiet_tracing():
        torch.jit.load(str(path), _extra_files=files, map_location="cpu")
    if not files[METADATA_KEY]:
        raise ConfigError(f"{path} holds no deit metadata ({METADATA_KEY}); was it written by deit export?")
    return json.loads(files[METADATA_KEY])


def run_exported(path: str | os.PathLike, images: torch.Tensor) -> list[np.ndarray]:
    """Outputs of an exported file on ``images`` (B, C, H, W): onnxruntime for ONNX, the
    TorchScript interpreter otherwise."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy().astype(np.float32)})
    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = module(images)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def verify_export(path: str | os.PathLike, model: nn.Module, images: torch.Tensor, *, head: str | None = None,
                  atol: float = 1e-4, int8_min_agreement: float | None = None) -> dict[str, float]:
    """Max |exported - PyTorch| per output on ``images``; raises ``AssertionError`` above ``atol``.

    ``int8_min_agreement`` (an int8 file): ``atol`` is then the logit bound, and each
    output's top-1 must also equal PyTorch's on that share of the images (``None``: the
    bound alone, e.g. on random inputs whose top classes nearly tie)."""
    wrapper = ExportHead(model, head)
    with torch.no_grad():
        expected = wrapper(images)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    got = run_exported(path, images)
    if len(got) != len(expected):
        raise AssertionError(f"{path} returned {len(got)} outputs; expected {len(expected)}")
    errors = {name: float(np.abs(g - e).max()) for name, g, e in zip(wrapper.output_names, got, expected)}
    if int8_min_agreement is not None or load_metadata(path).get("quantization"):
        for name, g, e in zip(wrapper.output_names, got, expected):
            agreement = compare_int8(e.reshape(len(e), -1), g.reshape(len(g), -1))
            agreement.check(logit_bound=atol, min_agreement=int8_min_agreement, what=f"{path} ({name})")
            errors[f"{name}_top1_agreement"] = agreement.top1_agreement
        return errors
    worst = max(errors.values())
    if not worst <= atol:
        raise AssertionError(f"{path} differs from the PyTorch model by {worst:.3g} (> {atol}) on "
                             f"{tuple(images.shape)} inputs: {errors}")
    return errors



def real_images(data_config: Mapping[str, Any], metadata: Mapping[str, Any], count: int = 8,
                data_dir: str | None = None) -> torch.Tensor | None:
    """``count`` validation images of the checkpoint's data set (the image folder's recorded
    absolute path, else the name or path given to training), preprocessed as the export's
    ``metadata`` says (B, C, H, W); ``None`` when the data set is not available here."""

    folder = data_config.get("dataset_path")
    dataset = folder if folder and os.path.isdir(folder) else data_config.get("dataset")
    if not dataset:
        return None
    transform = build_transform(is_train=False, **{k: metadata[k] for k in PREPROCESSING_KEYS})
    try:
        val = load_dataset(dataset, "val", data_dir, transform=transform)
    except (DatasetNotFoundError, ValueError):
        return None
    step = max(1, len(val) // count)
    return torch.stack([val[i * step][0] for i in range(min(count, len(val)))])  # (B, C, H, W)


def export_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike, *, head: str | None = None,
                      fmt: str | None = None, use_ema: bool = False, opset: int = 18, atol: float | None = None,
                      data_dir: str | None = None, verify: bool = True,
                      overrides: Mapping[str, Any] | None = None, quantize: str | None = None) -> dict[str, Any]:
    """``deit export``: checkpoint -> ONNX/TorchScript file, verified on random images (a batch
    size other than the traced one, so the dynamic axis is exercised) and on real images of
    the checkpoint's data set when it is available. Returns a report dict.

    ``quantize="int8"``: ``atol`` is the logit bound (None: :data:`deit.deploy.quantize.INT8_LOGIT_BOUND`)
    and on real images the top-1 must agree with fp32 on :data:`~deit.deploy.quantize.INT8_MIN_AGREEMENT`
    of them."""

    model, meta = load_for_inference(checkpoint, use_ema=use_ema)
    path, metadata = export_model(model, output, fmt=fmt, head=head, data_config=meta["data_config"],
                                  classes=meta["classes"], opset=opset, overrides=overrides,
                                  class_ids=meta["class_ids"], quantize=quantize)
    if quantize is not None and atol is None:
        atol = INT8_LOGIT_BOUND
    atol = 1e-4 if atol is None else atol
    report: dict[str, Any] = {"path": str(path), "metadata": metadata, "max_abs_diff": {}, "atol": atol}
    if verify:
        generator = torch.Generator().manual_seed(0)
        size, channels = metadata["image_size"], metadata["in_channels"]
        random = torch.randn(5, channels, size, size, generator=generator)  # (5, C, H, W)
        try:
            report["max_abs_diff"]["random"] = verify_export(path, model, random, head=head, atol=atol)
            real = real_images(meta["data_config"], metadata, data_dir=data_dir, count=32 if quantize else 8)
            if real is not None:
                report["max_abs_diff"]["real"] = verify_export(
                    path, model, real, head=head, atol=atol,
                    int8_min_agreement=INT8_MIN_AGREEMENT if quantize else None)
        except AssertionError as err:
            raise ConfigError(f"export verification failed: {err}. The file is kept for inspection.") from None
    return report


def int8_predictor(checkpoint: str | os.PathLike, *, use_ema: bool = False, model_name: str | None = None,
                   overrides: Mapping[str, Any] | None = None):
    """``deit predict --quantize int8``: the checkpoint exported to an int8 ONNX model in a
    temporary folder and loaded into ONNX Runtime (which keeps the graph in memory), with
    the checkpoint's preprocessing and class names. Returns an
    :class:`~deit.deploy.onnx_predict.OnnxPredictor`."""
    import tempfile

    model, meta = load_for_inference(checkpoint, model_name=model_name, use_ema=use_ema)
    with tempfile.TemporaryDirectory(prefix="deit-int8-") as folder:
        path, _ = export_model(model, Path(folder) / "model.onnx", data_config=meta["data_config"],
                               classes=meta["classes"], overrides=overrides, class_ids=meta["class_ids"],
                               quantize="int8")
        return OnnxPredictor(path)
