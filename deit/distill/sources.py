"""Teachers from foreign sources: the network a user already has, as a distillation teacher.

Four forms of a ``--teacher-model`` value name a teacher outside this library's registry and timm
(:func:`foreign_source` tells which; registered names and ``timm:<name>`` are resolved by
:mod:`deit.distill.teachers`):

* ``torchvision:<name>`` — an architecture of ``torchvision.models``, built by torchvision's
  ``get_model``. Its weights are a state-dict file (``torch.save(model.state_dict(), …)``) or the
  name of one of the model's published weights (``IMAGENET1K_V1``, ``DEFAULT``,
  ``ResNet18_Weights.IMAGENET1K_V1``: an entry of ``get_model_weights(name)``), read through
  torchvision's own cache ``$TORCH_HOME/hub/checkpoints/``; the weights' ``transforms()`` give the
  teacher's mean, std and crop size.
* a folder written by HF transformers' ``save_pretrained`` holding any image classifier — loaded
  with ``AutoModelForImageClassification.from_pretrained``, its preprocessing read with
  ``AutoImageProcessor.from_pretrained`` when the folder has a ``preprocessor_config.json``.
* ``path/to/file.py:factory`` — a Python file imported by path whose ``factory()`` returns the
  module (called with ``num_classes=`` when it takes that keyword); a timm-style
  ``pretrained_cfg`` / ``default_cfg`` dict on the module gives its statistics.
* ``teacher.onnx`` — an ONNX model run by ONNX Runtime's ``InferenceSession`` on the CPU inside an
  ``nn.Module`` (:class:`OnnxTeacher`); the file's ``metadata_props`` ``mean`` / ``std`` (JSON
  lists, as ``deit export`` writes them) give its statistics.

Each is returned as a :class:`ForeignTeacher`: the module, frozen and in eval mode, returning
what :func:`deit.models.teacher_output.teacher_logits` reads (logits, an object with ``.logits``
or a tuple led by the logits), and what is known of its input. The optional peers (torchvision,
transformers, onnxruntime) are imported only by the branch that needs them.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from deit.core.errors import CheckpointError, ConfigError, MissingCheckpointError
from deit.core.validation import check_positive_int
from deit.weights.files import read_checkpoint_file
from deit.weights.layouts import extract_state_dict

__all__ = ["ForeignTeacher", "OnnxTeacher", "foreign_source", "load_foreign_teacher"]

logger = logging.getLogger("deit")

TORCHVISION_PREFIX = "torchvision:"
CHECKPOINT_FLAG = "--teacher-checkpoint"
_FILE_FACTORY = re.compile(r"^(?P<path>.+\.py):(?P<factory>[A-Za-z_][A-Za-z0-9_]*)$")
_FORMS = ("'torchvision:<name>', a path ending in .onnx, 'path/to/file.py:factory' or an HF save_pretrained "
          "folder (config.json)")


@dataclass(frozen=True)
class ForeignTeacher:
    """A teacher from a foreign source and what is known of its input."""

    module: nn.Module  # frozen (requires_grad False), eval mode
    in_channels: int
    mean: tuple[float, ...] | None  # the teacher's own input normalisation, None when unknown
    std: tuple[float, ...] | None
    input_size: int | None  # the square side the teacher expects / was trained at, None when unknown or any
    num_classes: int | None  # its output width when known without running it
    description: str


def foreign_source(name: str) -> str | None:
    """Which source a ``--teacher-model`` value names: ``'torchvision'`` for
    ``torchvision:<name>``, ``'file'`` for ``path/to/file.py:factory``, ``'onnx'`` for a path
    ending in ``.onnx``, ``'hf'`` for an existing directory holding a ``config.json``; ``None``
    otherwise (registered names and ``timm:<name>`` are resolved elsewhere). Only the form is
    read: a named file need not exist (loading it then says so)."""
    if not isinstance(name, str) or not name:
        return None
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if _FILE_FACTORY.match(name):
        return "file"
    if name.lower().endswith(".onnx"):
        return "onnx"
    if os.path.isdir(name) and os.path.isfile(os.path.join(name, "config.json")):
        return "hf"
    return None


def load_foreign_teacher(name: str, *, checkpoint: str | os.PathLike | None, num_classes: int,
                         threads: int | None = None) -> ForeignTeacher:
    """Load the teacher ``name`` names (see :func:`foreign_source`), frozen and in eval mode.

    Args:
        checkpoint: ``torchvision:<name>`` — a state-dict file or a weights name of the model
            (required); ``file.py:factory`` — an optional state-dict file; an HF folder or an
            ONNX file hold their weights: ``None``.
        num_classes: the classes of the student's data: the width a torchvision architecture
            (without published weights) or a factory taking ``num_classes`` is built with.
            Published torchvision weights keep their own class count (``ForeignTeacher.num_classes``).
        threads: ONNX Runtime's intra- and inter-op thread counts (default
            ``torch.get_num_threads()``); the other sources run in torch's own threads.

    Raises:
        ConfigError: an unknown architecture, weights name or factory, an argument that does not
            apply to the source.
        MissingCheckpointError: a file that does not exist, published weights neither cached nor
            downloadable (the message names the cache path and the URL).
        CheckpointError: weights that cannot be read or do not fit the architecture.
    """
    check_positive_int("num_classes", num_classes)
    if threads is not None:
        check_positive_int("threads", threads)
    source = foreign_source(name)
    if source == "torchvision":
        teacher = _torchvision_teacher(name[len(TORCHVISION_PREFIX):], checkpoint, num_classes)
    elif source == "file":
        match = _FILE_FACTORY.match(name)
        teacher = _file_teacher(Path(match["path"]), match["factory"], checkpoint, num_classes)
    elif source == "onnx":
        _no_checkpoint(checkpoint, f"the ONNX file {name}")
        teacher = _onnx_teacher(Path(name), threads if threads is not None else torch.get_num_threads())
    elif source == "hf":
        _no_checkpoint(checkpoint, f"the HF folder {name}")
        teacher = _hf_teacher(Path(name))
    else:
        raise ConfigError(f"teacher_model_name={name!r} is not a foreign teacher; expected {_FORMS}")
    teacher.module.eval().requires_grad_(False)
    return teacher


# --- shared helpers --------------------------------------------------------------------------


def _no_checkpoint(checkpoint: str | os.PathLike | None, what: str) -> None:
    if checkpoint is not None:
        raise ConfigError(f"{CHECKPOINT_FLAG} {checkpoint} does not apply to {what}, which holds its own weights; "
                          f"drop {CHECKPOINT_FLAG} (Python: teacher_checkpoint=None)")


def _floats(values: Any) -> tuple[float, ...] | None:
    """A per-channel statistic as a tuple of floats (a single number: one value), or None."""
    if values is None:
        return None
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return (float(values),)
    if isinstance(values, Sequence) and not isinstance(values, str) and values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return tuple(float(v) for v in values)
    return None


def _square_side(value: Any) -> int | None:
    """The side of a square input size given as an int, ``(H, W)``, ``(C, H, W)`` or a
    ``{'height', 'width'}`` / ``{'shortest_edge'}`` dict; None for anything else."""
    if isinstance(value, Mapping):
        if value.get("height") is not None and value.get("height") == value.get("width"):
            return int(value["height"])
        return int(value["shortest_edge"]) if value.get("shortest_edge") is not None else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(isinstance(v, int) for v in value):
        sides = value[-2:]
        return int(sides[-1]) if len(set(sides)) == 1 else None
    return None


def _read_state_dict(path: Path, expected: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``torch.load(weights_only=True)`` or safetensors, via
    :func:`deit.weights.files.read_checkpoint_file`; a ``model`` / ``state_dict`` entry and DDP /
    ``torch.compile`` prefixes are unwrapped)."""
    try:
        obj, metadata = read_checkpoint_file(path)
        return extract_state_dict(obj, metadata, source=str(path))[0]
    except CheckpointError as err:
        raise type(err)(f"{err} (needed for {expected})") from None


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, expected: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, with a one-line error naming the file,
    what it was expected to hold and the first differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label} ({len(items)}): {', '.join(items[:3])}{', …' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected),
                                      ("shape file vs model", shapes)) if items]
        raise CheckpointError(f"{path} does not fit {expected}: {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True)


# --- torchvision -----------------------------------------------------------------------------


def _torchvision_weights(model_name: str, value: str):
    """The member of ``torchvision.models.get_model_weights(model_name)`` that ``value`` names
    (``IMAGENET1K_V1``, ``DEFAULT`` or ``<Enum>.<member>``), or None when it names none."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model_name)
    except (KeyError, ValueError):  # an architecture without published weights
        return None
    prefix, _, member = value.rpartition(".")
    if prefix and prefix != enum.__name__:
        return None
    return enum.__members__.get(member)


def _torchvision_teacher(model_name: str, checkpoint: str | os.PathLike | None, num_classes: int) -> ForeignTeacher:
    """``torchvision.models.get_model(model_name, …)`` with weights from a file or a weights name."""
    from torchvision.models import get_model, list_models

    if not model_name:
        raise ConfigError("teacher_model_name='torchvision:' needs a torchvision model name after the colon, "
                          "e.g. torchvision:resnet18")
    known = list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        raise ConfigError(f"teacher_model_name='torchvision:{model_name}': torchvision has no model {model_name!r}"
                          + (f" (close: {', '.join(close)})" if close else "")
                          + "; see torchvision.models.list_models()")
    if checkpoint is None:
        raise MissingCheckpointError(
            f"torchvision:{model_name} needs weights: pass {CHECKPOINT_FLAG} with a state-dict file "
            f"(torch.save(model.state_dict(), FILE)) or a weights name like IMAGENET1K_V1 or DEFAULT")
    weights = _torchvision_weights(model_name, str(checkpoint)) if isinstance(checkpoint, str) else None
    if weights is not None:
        return _torchvision_published(model_name, weights)
    path = Path(checkpoint)
    expected = f"torchvision {model_name} with num_classes={num_classes}"
    if not path.exists():
        from torchvision.models import get_model_weights

        try:
            names = ", ".join(get_model_weights(model_name).__members__)
        except (KeyError, ValueError):
            names = "none published"
        raise MissingCheckpointError(f"{CHECKPOINT_FLAG} {checkpoint} is neither a file nor a weights name of "
                                     f"torchvision {model_name} (weights names: {names})")
    state_dict = _read_state_dict(path, expected)
    model = get_model(model_name, num_classes=num_classes)
    _load_strict(model, state_dict, path, expected)
    return ForeignTeacher(model, 3, None, None, None, num_classes, f"{expected} from {path}")


def _torchvision_published(model_name: str, weights) -> ForeignTeacher:
    """The model with published weights, built by ``get_model(name, weights=…)`` (the builder
    sets the class count and any architecture switch the weights need, and loads them through
    ``weights.get_state_dict``: ``$TORCH_HOME/hub/checkpoints/<file>`` when cached, else a
    download)."""
    from torchvision.models import get_model

    url = weights.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    origin = "from TORCH_HOME cache" if cached.is_file() else f"downloaded to {cached}"
    qualified = f"{type(weights).__name__}.{weights.name}"
    try:
        model = get_model(model_name, weights=weights, progress=False)
    except OSError as err:  # urllib's URLError and socket errors: no network, nothing cached
        if cached.is_file():
            raise CheckpointError(f"cannot read {cached}, the torchvision cache of {qualified} "
                                  f"({type(err).__name__}: {err})") from None
        raise MissingCheckpointError(
            f"torchvision {model_name} weights {qualified} are not in the cache {cached} and cannot be downloaded "
            f"({err}); fetch {url} to that path (or set TORCH_HOME), or pass {CHECKPOINT_FLAG} FILE") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if not cached.is_file():  # a download that failed its hash check
            raise CheckpointError(f"downloading {url} to {cached} failed ({reason})") from None
        raise CheckpointError(f"{cached} does not hold torchvision {qualified} ({reason}); delete it to download "
                              "it again") from None
    transforms = weights.transforms()
    crop = getattr(transforms, "crop_size", None)
    return ForeignTeacher(model, 3, _floats(getattr(transforms, "mean", None)),
                          _floats(getattr(transforms, "std", None)), _square_side(crop),
                          len(weights.meta["categories"]) if weights.meta.get("categories") else None,
                          f"torchvision {model_name} with {qualified} ({origin})")


# --- HF transformers folder ------------------------------------------------------------------


def _hf_preprocessing(processor: Mapping[str, Any], channels: int
                      ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, int | None]:
    """``(mean, std, side)`` of an HF image processor's settings (``to_dict()``), on pixels in
    [0, 1]: its resize/crop size (``crop_size`` when it centre-crops), and ``image_mean`` /
    ``image_std`` (0 and 1 without normalisation) with the processor's rescaling folded in — HF
    computes ``(p·r − m) / s`` on pixels ``p`` in [0, 255], which is ``(u − m') / s'`` on
    ``u = p/255`` with ``m' = m / (255 r)``, ``s' = s / (255 r)`` (``r = 1`` without rescaling)."""
    crop = processor.get("crop_size") if processor.get("do_center_crop") else None
    side = _square_side(crop if crop is not None else processor.get("size"))
    if processor.get("do_normalize", True):
        mean, std = _floats(processor.get("image_mean")), _floats(processor.get("image_std"))
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    if mean is None or std is None:
        return None, None, side
    scale = float(processor.get("rescale_factor") or 1 / 255) * 255 if processor.get("do_rescale", True) else 255.0
    return tuple(m / scale for m in mean), tuple(s / scale for s in std), side


def _hf_teacher(folder: Path) -> ForeignTeacher:
    """``transformers.AutoModelForImageClassification.from_pretrained(folder)``; the input from
    ``AutoImageProcessor.from_pretrained(folder)`` when the folder has a preprocessor config."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{folder} is not an HF image classifier that AutoModelForImageClassification can "
                              f"load ({type(err).__name__}: {str(err).splitlines()[0][:200]}); expected a "
                              "save_pretrained folder of an image classification model") from None
    config = model.config
    channels = int(getattr(config, "num_channels", None) or 3)
    mean = std = side = None
    source = "no preprocessor_config.json: statistics unknown"
    if (folder / "preprocessor_config.json").is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{folder / 'preprocessor_config.json'} cannot be read by AutoImageProcessor "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        mean, std, side = _hf_preprocessing(processor.to_dict(), channels)
        source = f"statistics from its {type(processor).__name__}"
    if side is None:
        side = _square_side(getattr(config, "image_size", None))
    num_labels = getattr(config, "num_labels", None)
    return ForeignTeacher(model, channels, mean, std, side, int(num_labels) if num_labels else None,
                          f"HF {type(model).__name__} from {folder} ({source})")


# --- Python file with a factory --------------------------------------------------------------


def _import_file(path: Path):
    """The module at ``path``, imported under a name of its own (``spec_from_file_location``)."""
    resolved = path.resolve()
    module_name = f"deit_teacher_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be imported as a Python file; expected a .py file defining the factory")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"importing {path} failed ({type(err).__name__}: {err})") from err
    return module


def _accepts_num_classes(factory) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "num_classes" and p.kind is not p.POSITIONAL_ONLY
                                           and p.kind is not p.VAR_POSITIONAL) for p in parameters)


def _first_conv_channels(module: nn.Module) -> int | None:
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else None


def _file_teacher(path: Path, factory_name: str, checkpoint: str | os.PathLike | None,
                  num_classes: int) -> ForeignTeacher:
    """``factory()`` of the file at ``path``; weights from ``checkpoint`` when given."""
    if not path.is_file():
        raise MissingCheckpointError(f"teacher file {path} not found; expected a Python file defining "
                                     f"{factory_name}() that returns an nn.Module")
    python_module = _import_file(path)
    factory = getattr(python_module, factory_name, None)
    if factory is None or not callable(factory):
        available = sorted(n for n, v in vars(python_module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == python_module.__name__)
        raise ConfigError(f"{path} defines no callable {factory_name!r}; expected a factory returning an nn.Module"
                          + (f" (callables defined there: {', '.join(available)})" if available else ""))
    takes_num_classes = _accepts_num_classes(factory)
    call = f"{path}:{factory_name}({'num_classes=' + str(num_classes) if takes_num_classes else ''})"
    try:
        model = factory(num_classes=num_classes) if takes_num_classes else factory()
    except Exception as err:  # the user's code: its own message, its traceback kept as the cause
        raise ConfigError(f"{call} failed ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})"
                          ) from err
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{call} returned a {type(model).__name__}; expected a torch.nn.Module")
    width = getattr(model, "num_classes", None)
    width = int(width) if isinstance(width, int) and not isinstance(width, bool) else (
        num_classes if takes_num_classes else None)
    origin = "with the factory's own weights"
    if checkpoint is not None:
        weights = Path(checkpoint)
        _load_strict(model, _read_state_dict(weights, f"the module of {call}"), weights, f"the module of {call}")
        origin = f"with weights from {weights}"
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    cfg = cfg if isinstance(cfg, Mapping) else {}
    input_size = cfg.get("input_size")
    cfg_channels = input_size[0] if isinstance(input_size, Sequence) and len(input_size) == 3 else None
    channels = _first_conv_channels(model) or (int(cfg_channels) if isinstance(cfg_channels, int) else 3)
    return ForeignTeacher(model, channels, _floats(cfg.get("mean")), _floats(cfg.get("std")),
                          _square_side(input_size), width, f"{type(model).__name__} from {call} {origin}")


# --- ONNX ------------------------------------------------------------------------------------

_ONNX_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64}


class OnnxTeacher(nn.Module):
    """An ONNX classifier run by ONNX Runtime (``onnxruntime.InferenceSession``, CPU provider)
    behind a torch forward: images (B, C, H, W) of any float dtype and device -> logits (B, K) on
    the input's device and dtype. ``intra_op_num_threads`` / ``inter_op_num_threads`` cap the
    session's threads (so it shares the machine with the data loader and the student); a file
    written by ``deit export`` with all three DeiT heads answers with its ``fusion`` output, any
    other file with its first. No parameters: nothing to train, move or save."""

    def __init__(self, path: str | os.PathLike, threads: int) -> None:
        super().__init__()
        check_positive_int("threads", threads)
        self.path = Path(path)
        self.intra_op_num_threads = self.inter_op_num_threads = int(threads)
        self._open()

    def _open(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf
            raise CheckpointError(f"{self.path} cannot be loaded by ONNX Runtime ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]}); expected an ONNX model file") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input = self.session.get_inputs()[0]
        if self.input.type not in _ONNX_DTYPES:
            raise CheckpointError(f"{self.path}: input {self.input.name!r} is a {self.input.type}; expected a "
                                  f"float image tensor ({', '.join(_ONNX_DTYPES)})")
        outputs = self.session.get_outputs()
        names = self._metadata_json("outputs")
        index = names.index("fusion") if isinstance(names, list) and "fusion" in names else 0
        self.output = outputs[min(index, len(outputs) - 1)]

    def _metadata_json(self, key: str) -> Any:
        try:
            return json.loads(self.metadata[key]) if key in self.metadata else None
        except json.JSONDecodeError:
            return None

    def input_shape(self) -> list[int | None]:
        """The first input's shape, dynamic dimensions (named or unknown) as None."""
        return [d if isinstance(d, int) else None for d in self.input.shape]

    def __getstate__(self) -> dict[str, Any]:  # deep copies and pickles reopen the file
        state = self.__dict__.copy()
        for key in ("session", "input", "output"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._open()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.input_shape()
        if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape[1:], x.shape[1:])):
            expected = ", ".join("?" if s is None else str(s) for s in shape)
            raise ConfigError(f"{self.path} takes input ({expected}); got {tuple(x.shape)}")
        array = x.detach().to("cpu", _ONNX_DTYPES[self.input.type]).contiguous().numpy()  # (B, C, H, W)
        if shape[0] is not None and shape[0] != array.shape[0]:
            if shape[0] != 1:
                raise ConfigError(f"{self.path} takes batches of exactly {shape[0]}; got {array.shape[0]}")
            rows = [self.session.run([self.output.name], {self.input.name: a[None]})[0] for a in array]  # (1, K)
            logits = torch.cat([torch.from_numpy(r) for r in rows])  # (B, K)
        else:
            logits = torch.from_numpy(self.session.run([self.output.name], {self.input.name: array})[0])  # (B, K)
        return logits.to(device=x.device, dtype=x.dtype)


def _onnx_teacher(path: Path, threads: int) -> ForeignTeacher:
    """An :class:`OnnxTeacher`; channels and size from the first input's shape (``deit export``'s
    ``in_channels`` / ``image_size`` metadata when those are dynamic), classes from the output's
    last dimension, mean/std from ``metadata_props`` (JSON lists, the keys ``deit export`` writes)."""
    if not path.is_file():
        raise MissingCheckpointError(f"ONNX teacher {path} not found; expected an ONNX model file")
    module = OnnxTeacher(path, threads)
    shape = module.input_shape()
    if len(shape) != 4:
        raise CheckpointError(f"{path}: input {module.input.name!r} has shape {module.input.shape}; expected "
                              "images (B, C, H, W)")
    channels = shape[1] or module._metadata_json("in_channels")
    if not isinstance(channels, int):
        logger.warning("%s: the input's channel count is dynamic and not recorded; 3 assumed", path)
        channels = 3
    side = shape[2] if shape[2] is not None and shape[2] == shape[3] else None
    if shape[2] is None and shape[3] is None and isinstance(module._metadata_json("image_size"), int):
        side = module._metadata_json("image_size")
    width = module.output.shape[-1] if module.output.shape else None
    mean, std = _floats(module._metadata_json("mean")), _floats(module._metadata_json("std"))
    if (mean is None) != (std is None):
        mean = std = None
    stats = "statistics from its metadata" if mean is not None else "statistics unknown"
    return ForeignTeacher(module, int(channels), mean, std, side, width if isinstance(width, int) else None,
                          f"ONNX model {path} run by ONNX Runtime on {threads} thread(s) ({stats})")
