"""torch Datasets given in Python as a run's data (``train(config, train_data=..., val_data=...)``).

:class:`TorchImageDataset` wraps a map-style ``torch.utils.data.Dataset`` of raw images so that
it serves a run as a built-in data set or an image folder does: ``classes``, ``targets``,
``channels``, ``native_size``, ``hflip_ok``, a settable ``transform`` applied to each decoded
image, its statistics (:func:`deit.data.datasets.dataset_mean_std`) and a fingerprint
(:func:`deit.data.datasets.dataset_fingerprint`).

Items are ``(image, label)``, what torchvision's data sets return with ``transform=None``:

* ``image``: a ``PIL.Image`` (any mode: high bit depths are scaled as in
  :func:`deit.data.decode.to_8bit`, palettes and alpha as :func:`~deit.data.decode.load_image`
  treats them), a uint8 numpy array (H, W) or (H, W, C) with C 1 or 3, or a uint8 tensor
  (C, H, W) with C 1 or 3: pixels, never normalised tensors (the run applies its own
  transforms);
* ``label``: an int class index (a numpy integer or a 0-d integer tensor too).

Class names come from the data set's ``classes`` attribute when it has one, else they are
``"0"`` .. ``"K-1"``, K one more than the largest label.

A data set of at most :attr:`TorchImageDataset.FULL_READ_ITEMS` items (MNIST, CIFAR, any set
that fits in memory) is read once in full when it is wrapped: every item is checked (a bad one
is named by its index), and its labels, channels, sizes, per-channel statistics (exact, from
the pixel histograms, as for a built-in data set) and fingerprint (a SHA-256 of every image's
pixels and label) come from that pass. A larger one is treated as an image folder is: its
channels and sizes are probed on :attr:`~TorchImageDataset.PROBE_ITEMS` items spread over
it, its statistics are ImageNet's, its fingerprint hashes its length and those items, and its
labels come from its ``targets`` attribute (or, without one, a pass over its items).
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deit.core.errors import ConfigError
from deit.data.decode import GREY_MODES, to_8bit

__all__ = ["PYTHON_DATASET_PREFIX", "TorchImageDataset", "raw_image"]

logger = logging.getLogger(__name__)

PYTHON_DATASET_PREFIX = "python:"
"""How ``config.dataset`` names data sets given in Python (``python:<label>``)."""

_MODES = {1: "L", 3: "RGB"}
_EXPECTED = ("expected raw images, as torchvision's data sets return them with transform=None: a PIL image, a uint8 "
             "numpy array (H, W) or (H, W, C) with C 1 or 3, or a uint8 tensor (C, H, W) with C 1 or 3")


def raw_image(value: Any, where: str) -> Image.Image:
    """An item's image as a ``PIL.Image`` in mode ``L`` or ``RGB``; ``where`` names the item in
    the :class:`~deit.core.errors.ConfigError` raised for anything else."""
    if isinstance(value, Image.Image):
        image = to_8bit(value)  # I;16 / I / F -> L
        if image.mode in ("L", "RGB"):
            return image
        try:
            return image.convert("L" if image.mode in GREY_MODES else "RGB")  # 1, LA -> L; P, RGBA, CMYK -> RGB
        except ValueError as err:
            raise ConfigError(f"{where}: a PIL image of mode {image.mode!r} cannot be converted to L or RGB "
                              f"({err})") from None
    if isinstance(value, torch.Tensor):
        if value.dtype != torch.uint8 or value.ndim != 3 or value.shape[0] not in (1, 3):
            hint = " (a data set with a transform such as ToTensor: give it with transform=None, the run applies " \
                   "its own)" if value.is_floating_point() else ""
            raise ConfigError(f"{where}: the image is a {str(value.dtype).replace('torch.', '')} tensor of shape "
                              f"{tuple(value.shape)}; {_EXPECTED}{hint}")
        array = value.detach().cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or not (value.ndim == 2 or (value.ndim == 3 and value.shape[-1] in (1, 3))):
            raise ConfigError(f"{where}: the image is a {value.dtype} array of shape {value.shape}; {_EXPECTED}")
        array = value
    else:
        raise ConfigError(f"{where}: the image is a {type(value).__name__}; {_EXPECTED}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]  # (H, W)
    return Image.fromarray(np.ascontiguousarray(array))  # L for (H, W), RGB for (H, W, 3)


def _label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{where}: the label is {value!r} ({type(value).__name__}); expected an int class index")
    if value < 0:
        raise ConfigError(f"{where}: the label is {int(value)}; expected a class index >= 0")
    return int(value)


def _mean_std(counts: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units from pixel histograms ``counts`` (C, 256)."""
    values = np.arange(256, dtype=np.float64) / 255.0                      # (256,)
    total = counts.sum(axis=1, keepdims=True)                               # (C, 1)
    mean = (counts * values).sum(axis=1, keepdims=True) / total             # (C, 1)
    var = (counts * (values - mean) ** 2).sum(axis=1) / total[:, 0]         # (C,)
    return tuple(float(m) for m in mean[:, 0]), tuple(float(max(v, 0.0)) ** 0.5 for v in var)


class TorchImageDataset(Dataset):
    """A torch Dataset of raw images (module docstring) as a run's data set.

    Args:
        data: a map-style data set (``__len__`` and ``__getitem__``) of ``(image, label)`` items.
        split: ``"train"`` or ``"val"``, to name the data set in errors (``train_data`` / ``val_data``).
        classes: the class names its labels must index (the training set's, for ``val``); by
            default the data set's ``classes`` attribute, else ``"0"`` .. ``"K-1"``.

    ``dataset[i]`` is ``(transform(image), label)``, the image in mode ``L`` when the data set
    holds grey images only (``channels`` 1) and ``RGB`` otherwise (``channels`` 3), as an image
    folder serves them; ``transform=None`` returns the ``PIL.Image``. ``hflip_ok`` is the data
    set's attribute of that name, else True.
    """

    FULL_READ_ITEMS = 100_000
    PROBE_ITEMS = 64

    def __init__(self, data: Dataset, split: str = "train", classes: Sequence[str] | None = None) -> None:
        self.name = f"{split}_data"
        if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise ConfigError(f"{self.name}={type(data).__name__} is invalid; expected a map-style torch Dataset "
                              "(__len__ and __getitem__) of (image, label) items")
        count = len(data)
        if count == 0:
            raise ConfigError(f"{self.name} is empty; expected at least one (image, label) item")
        self.data = data
        self.transform: Callable[[Image.Image], Any] | None = None
        self.hflip_ok = bool(getattr(data, "hflip_ok", True))
        self.read_in_full = count <= self.FULL_READ_ITEMS
        positions = range(count) if self.read_in_full else \
            sorted(set(np.linspace(0, count - 1, self.PROBE_ITEMS).round().astype(int).tolist()))
        digest = hashlib.sha256(f"{count}\n".encode())
        labels, sizes, sides = [], set(), []
        counts = {1: np.zeros((1, 256)), 3: np.zeros((3, 256))}  # pixel histograms of grey and colour images
        for index in positions:
            image, label = self._read(index)
            digest.update(f"{index}\0{image.mode}\0{image.size}\0{label}\n".encode())
            digest.update(image.tobytes())
            labels.append(label)
            sizes.add(image.size)
            sides.append(max(image.size))
            counts[len(image.getbands())] += np.asarray(image.histogram(), dtype=np.float64).reshape(-1, 256)
        self.fingerprint = digest.hexdigest()
        self.channels = 1 if not counts[3].any() else 3
        width, height = next(iter(sizes))
        self.native_size = width if len(sizes) == 1 and width == height else None  # None: sizes vary
        self.median_side = int(np.median(sides))  # the typical longer side (deit.data.datasets.typical_image_side)
        # exact statistics of a set read in full (grey images count in each colour channel); None: ImageNet's
        self.mean_std = (_mean_std(counts[1] if self.channels == 1 else counts[3] + counts[1])
                         if self.read_in_full else None)
        self.targets: list[int] = labels if self.read_in_full else self._all_labels()
        self.classes = self._class_names(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    def _read(self, index: int) -> tuple[Image.Image, int]:
        where = f"{self.name} item {index}"
        item = self.data[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            shown = f"{type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
            raise ConfigError(f"{where} is a {shown}; expected an (image, label) pair")
        return raw_image(item[0], where), _label(item[1], where)

    def _all_labels(self) -> list[int]:
        """A large data set's labels: its ``targets`` attribute, else one pass over its items."""
        targets = getattr(self.data, "targets", None)
        if targets is not None and len(targets) == len(self.data):
            return [_label(t, f"{self.name}.targets[{i}]") for i, t in enumerate(
                targets.tolist() if isinstance(targets, (torch.Tensor, np.ndarray)) else targets)]
        logger.info("%s: %d items and no targets attribute: reading every item once for its label", self.name,
                    len(self.data))
        return [self._read(index)[1] for index in range(len(self.data))]

    def _class_names(self, given: Sequence[str] | None) -> list[str]:
        own = getattr(self.data, "classes", None)
        own = None if own is None else [str(c) for c in own]
        if given is not None and own is not None and own != list(given):
            raise ConfigError(f"{self.name} names other classes than train_data ({own[:5]} ... vs {list(given)[:5]} "
                              "...); both data sets need the same classes in the same order")
        names = list(given) if given is not None else own
        largest = max(self.targets)
        if names is None:
            return [str(k) for k in range(largest + 1)]
        if largest >= len(names):
            index = self.targets.index(largest)
            raise ConfigError(f"{self.name} item {index}: the label is {largest}; expected a class index in "
                              f"0..{len(names) - 1} for its {len(names)} classes")
        return names

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self._read(index)
        image = image if image.mode == _MODES[self.channels] else image.convert(_MODES[self.channels])
        return (self.transform(image) if self.transform is not None else image), label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.data).__name__}, n={len(self)}, channels={self.channels}, "
                f"classes={len(self.classes)}, transform={self.transform!r})")
