"""Data sets for distillation training.

Built-in data sets are small and decoded ONCE into memory as a uint8 array
(:class:`ArrayImageDataset`); anything larger is an ImageFolder tree on disk.

=================  ===============================================================
name               source
=================  ===============================================================
``digits``         scikit-learn's bundled 8x8 digits (1797 images), fixed stratified
                   80/20 split: 1437 train / 360 val. Nothing is downloaded.
``fashion-mnist``  the four IDX files from ``data_dir`` or, by default,
                   ``/usr/share/datasets/fashion-mnist`` (Debian package
                   ``dataset-fashion-mnist``): 60000 train / 10000 val (the test set).
``mnist``          the same IDX layout; ``data_dir`` is required.
a directory        an ImageFolder root holding ``train/`` and ``val/`` class folders.
python:<label>     torch Datasets given in Python (``train(config, train_data=...,
                   val_data=...)``, :mod:`deit.data.torch_datasets`); nothing to load.
=================  ===============================================================

Built-in names take priority over a directory of the same name (use ``./digits``).
"""
from __future__ import annotations

import functools
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from deit.core.errors import ConfigError, DeitError
from deit.core.validation import check_choice, check_non_negative_int
from deit.data.decode import load_image, stored_channels
from deit.data.torch_datasets import PYTHON_DATASET_PREFIX, TorchImageDataset

BAD_IMAGE_POLICIES = ("fail", "skip")  # an image file that cannot be decoded: stop, or leave it out (logged)

__all__ = [
    "BAD_IMAGE_POLICIES", "BUILTIN_DATASETS", "DATASET_INFO", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "SPLITS",
    "ArrayImageDataset", "CorruptDatasetError", "DatasetInfo", "DatasetNotFoundError", "FolderDataset",
    "dataset_fingerprint", "dataset_info", "dataset_mean_std", "dataset_record", "load_dataset", "read_idx",
    "stratified_indices", "typical_image_side",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
IDX_FILES = {  # split -> (images stem, labels stem); each file may also end in .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(DeitError, FileNotFoundError):
    """The files of a data set are not where they were looked for; the message names the
    paths tried and how to get the data."""


class CorruptDatasetError(DeitError, ValueError):
    """A data file exists but cannot be decoded (truncated, wrong format); the message
    names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """Per-data-set defaults for the training recipe.

    ``native_size`` is the stored image side in pixels (``None``: images vary, as in an
    ImageFolder). ``hflip_ok`` is False where a mirrored image is a different or an
    invalid sample (digits: a mirrored 2 is no digit), so random flips must be off.
    """

    name: str
    num_classes: int
    channels: int
    native_size: int | None
    hflip_ok: bool


DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", num_classes=10, channels=1, native_size=8, hflip_ok=False),
    "fashion-mnist": DatasetInfo("fashion-mnist", num_classes=10, channels=1, native_size=28, hflip_ok=True),
    "mnist": DatasetInfo("mnist", num_classes=10, channels=1, native_size=28, hflip_ok=False),
}
BUILTIN_DATASETS: tuple[str, ...] = tuple(DATASET_INFO)


# --- in-memory data sets ----------------------------------------------------------------

class ArrayImageDataset(Dataset):
    """A small image data set held in memory as one uint8 array.

    Args:
        images: uint8 array, (N, H, W) for grey or (N, H, W, 3) for RGB.
        targets: integer class indices, shape (N,), each in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` names label ``k``.
        transform: callable mapping a ``PIL.Image`` (mode ``L`` or ``RGB``) to a tensor;
            ``None`` returns the image as a float tensor (C, H, W) in [0, 1].
        hflip_ok: whether a mirrored image is still a valid sample (see :class:`DatasetInfo`).

    ``dataset[i]`` is ``(transform(image), label)`` with ``label`` a Python int.
    ``targets`` is a list of Python ints and ``class_to_idx`` a dict, as in torchvision's
    data sets; the arrays themselves stay available as ``images`` / ``targets_array``.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray | Sequence[int], classes: Sequence[str],
                 transform: Callable[[Image.Image], Any] | None = None, hflip_ok: bool = True):
        images = np.asarray(images)
        targets_array = np.asarray(targets)
        if images.dtype != np.uint8:
            raise ConfigError(f"images has dtype {images.dtype}; expected uint8 (values 0..255)")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ConfigError(f"images has shape {images.shape}; expected (N, H, W) for grey "
                              "or (N, H, W, 3) for RGB")
        if targets_array.ndim != 1 or len(targets_array) != len(images):
            raise ConfigError(f"targets has shape {targets_array.shape}; expected ({len(images)},), "
                              "one label per image")
        if len(targets_array) and not np.issubdtype(targets_array.dtype, np.integer):
            raise ConfigError(f"targets has dtype {targets_array.dtype}; expected integer class indices")
        classes = [str(c) for c in classes]
        if len(targets_array) and (targets_array.min() < 0 or targets_array.max() >= len(classes)):
            raise ConfigError(f"targets span {int(targets_array.min())}..{int(targets_array.max())}; "
                              f"expected labels in 0..{len(classes) - 1} for {len(classes)} classes")
        self.images = images                                    # (N, H, W) or (N, H, W, 3) uint8
        self.targets_array = targets_array.astype(np.int64)     # (N,) int64
        self.targets: list[int] = self.targets_array.tolist()
        self.classes = classes
        self.class_to_idx = {name: index for index, name in enumerate(classes)}
        self.transform = transform
        self.hflip_ok = bool(hflip_ok)

    @property
    def channels(self) -> int:
        """1 for grey images, 3 for RGB."""
        return 1 if self.images.ndim == 3 else 3

    @property
    def native_size(self) -> int:
        """Stored image side in pixels (images are assumed square)."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        array = self.images[index]                                  # (H, W) or (H, W, 3) uint8
        label = int(self.targets_array[index])
        if self.transform is None:
            image = torch.tensor(array, dtype=torch.float32) / 255.0  # (H, W) or (H, W, 3)
            image = image.unsqueeze(0) if array.ndim == 2 else image.permute(2, 0, 1)  # (C, H, W)
            return image, label
        return self.transform(Image.fromarray(array)), label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n={len(self)}, size={self.native_size}, channels={self.channels}, "
                f"classes={len(self.classes)}, transform={self.transform!r})")




class FolderDataset(ImageFolder):
    """torchvision's ImageFolder, every file decoded by :func:`deit.data.decode.load_image`
    (EXIF orientation, 16-bit scaling) into ``L`` or ``RGB``.

    ``channels`` is 1 when the folder holds grey images and 3 otherwise. Unless given, it
    is detected from the headers of up to :attr:`PROBE_FILES` files spread evenly over the
    sorted file list (so over the classes): 1 if every probed file stores grey pixels
    (modes ``1``, ``L``, ``LA``, ``I;16``, ``I``, ``F``, or a palette of greys), else 3.
    Images are then served in that mode; a model asking for the other channel count gets
    them converted by its transform (grey replicated to RGB, or RGB to luma).

    :meth:`keep_decoded` keeps each decoded image in memory, up to a byte limit, so a small
    folder is decoded once rather than once per epoch (``deit train`` does it for its splits:
    a 4,000-file folder of 28 px PNGs is decoded 60 times under the ``small-data`` budget,
    at ~0.1-0.2 ms a file on this project's CPU). The kept image is the one
    :func:`~deit.data.decode.load_image` returned, so the pixels served do not change. The
    memory is the loading process's: with ``num_workers > 0`` each epoch's fresh workers start
    without it.

    A file that cannot be decoded (zero bytes, truncated, not an image) is handled by
    ``bad_images``: ``"fail"`` raises :class:`CorruptDatasetError` naming the file;
    ``"skip"`` logs a warning naming it, counts it in :attr:`skipped` (shared with
    data-loader worker processes) and lists it in :attr:`skipped_paths` (this process's). What
    its position then serves depends on ``fill_skipped``: the next readable sample (training:
    batch sizes and the epoch length do not change, one readable image is seen twice), or
    ``None`` (evaluation: :func:`~deit.data.loader.collate_readable` drops it, so each readable
    file is counted once and an unreadable one not at all).
    """

    PROBE_FILES = 64
    native_size = None
    hflip_ok = True

    def __init__(self, root: str, transform: Callable[[Image.Image], Any] | None = None, *,
                 bad_images: str = "fail", channels: int | None = None, fill_skipped: bool = True) -> None:
        import multiprocessing

        check_choice("bad_images", bad_images, BAD_IMAGE_POLICIES)
        if channels is not None:
            check_choice("channels", channels, (1, 3))
        try:
            super().__init__(root, transform=transform)
        except FileNotFoundError as err:  # torchvision: "Found no valid file for the classes ..."
            raise DatasetNotFoundError(f"image folder {root}: {err} Every class folder needs at least one "
                                       "image file.") from None
        self.channels = channels if channels is not None else self._probe_channels()
        # decoded in full by load_image: a truncated file fails here, not later in a transform
        self.loader = functools.partial(load_image, in_channels=self.channels)
        self.bad_images = bad_images
        self.fill_skipped = fill_skipped
        self._skipped = multiprocessing.Value("i", 0)  # inherited by DataLoader workers
        self._bad_paths: set[str] = set()
        self._decoded: dict[int, Image.Image] = {}
        self._decoded_bytes = 0
        self._decoded_limit = 0

    def keep_decoded(self, limit_bytes: int) -> None:
        """Keep decoded images in memory from now on, until their pixels fill ``limit_bytes``
        (later files are decoded each time); 0 stops keeping and frees them."""
        check_non_negative_int("limit_bytes", limit_bytes)
        self._decoded_limit = limit_bytes
        if limit_bytes == 0:
            self._decoded.clear()
            self._decoded_bytes = 0

    @property
    def decoded_bytes(self) -> int:
        """Pixel bytes of the decoded images kept in memory (:meth:`keep_decoded`)."""
        return self._decoded_bytes

    def _decode(self, position: int, path: str) -> Image.Image:
        image = self._decoded.get(position)
        if image is None:
            image = self.loader(path)
            size = image.width * image.height * len(image.getbands())
            if self._decoded_bytes + size <= self._decoded_limit:
                self._decoded[position] = image
                self._decoded_bytes += size
        return image

    def _probe_channels(self) -> int:
        count = min(len(self.samples), self.PROBE_FILES)
        positions = np.linspace(0, len(self.samples) - 1, count).round().astype(int)  # spread over classes
        found = {stored_channels(self.samples[i][0]) for i in sorted(set(positions.tolist()))} - {None}
        return 1 if found == {1} else 3

    @property
    def skipped(self) -> int:
        """How many unreadable files were skipped so far (all processes, repeats counted)."""
        return int(self._skipped.value)

    @property
    def skipped_paths(self) -> list[str]:
        """The unreadable files this process skipped so far, sorted (data-loader workers keep their own)."""
        return sorted(self._bad_paths)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        for offset in range(len(self.samples) if self.fill_skipped else 1):
            position = (index + offset) % len(self.samples)
            image = self._readable(position)
            if image is not None:
                image = self.transform(image) if self.transform is not None else image
                return image, self.samples[position][1]
        if not self.fill_skipped:
            return None  # an unreadable file, left out of the batch by collate_readable
        raise CorruptDatasetError(f"image folder {self.root}: none of its {len(self.samples)} files can be "
                                  "read as an image")


    def _readable(self, position: int) -> Image.Image | None:
        """The decoded image at ``position``, or ``None`` for an unreadable file under
        ``bad_images="skip"`` (warned about and counted the first time); ``"fail"`` raises."""
        path = self.samples[position][0]
        if path in self._bad_paths:
            return None
        try:
            return self._decode(position, path)
        except (OSError, ValueError) as err:  # load_image names the file and the decoder's reason
            if self.bad_images == "fail":
                raise CorruptDatasetError(
                    f"{err}. Remove or replace it, or train with --bad-images skip to skip unreadable files "
                    "(they are counted in the log)") from None
            self._bad_paths.add(path)
            with self._skipped.get_lock():
                self._skipped.value += 1
            logger.warning("skipping unreadable image %s (%s); --bad-images skip", path, err)
            return None


# --- IDX files (MNIST / Fashion-MNIST) --------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzip-compressed (``.gz``).

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions,
    one big-endian uint32 per dimension, then the values in C order. Raises
    :class:`CorruptDatasetError` naming the file when it does not match that layout.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"IDX file not found: {path}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise CorruptDatasetError(f"cannot decompress {path}: the gzip stream is corrupt or truncated "
                                  f"({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptDatasetError(f"{path} is not an IDX file: expected 2 zero bytes, a type code and a "
                                  f"dimension count at the start, found {data[:4]!r}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise CorruptDatasetError(f"{path}: unknown IDX type code 0x{code:02x}; expected one of "
                                  + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES))
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise CorruptDatasetError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise CorruptDatasetError(
            f"{path} is truncated or corrupt: its header declares shape {dims} of {dtype.name}, "
            f"{expected} bytes in all, but the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for path in (directory / stem, directory / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _load_idx_split(name: str, directory: Path, split: str, classes: Sequence[str], transform,
                    hint: str) -> ArrayImageDataset:
    stems = IDX_FILES[split]
    found = [_find_idx(directory, stem) for stem in stems]
    if None in found:
        tried = [str(directory / f"{stem}{suffix}") for stem, path in zip(stems, found) if path is None
                 for suffix in ("", ".gz")]
        raise DatasetNotFoundError(f"{name} {split} split not found; looked for: {', '.join(tried)}. {hint}")
    images, labels = (read_idx(path) for path in found)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CorruptDatasetError(f"{found[0]} holds a {images.dtype} array of shape {images.shape}; "
                                  "expected uint8 images (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDatasetError(f"{found[1]} holds labels of shape {labels.shape}; expected "
                                  f"({len(images)},) to match {found[0]}")
    if len(labels) and labels.max() >= len(classes):
        raise CorruptDatasetError(f"{found[1]} holds label {int(labels.max())}; expected labels in "
                                  f"0..{len(classes) - 1}")
    return ArrayImageDataset(images, labels.astype(np.int64), classes, transform,
                             hflip_ok=DATASET_INFO[name].hflip_ok)


def _load_digits(split: str, transform) -> ArrayImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)   # (1797, 8, 8), 0..16 -> 0..255
    targets = bunch.target.astype(np.int64)                              # (1797,)
    train_idx, val_idx = train_test_split(np.arange(len(targets)), test_size=0.2, random_state=0,
                                          stratify=targets)
    index = np.sort(train_idx if split == "train" else val_idx)
    return ArrayImageDataset(images[index], targets[index], DIGIT_CLASSES, transform,
                             hflip_ok=DATASET_INFO["digits"].hflip_ok)


def _load_folder(root: Path, split: str, transform, bad_images: str, fill_skipped: bool) -> FolderDataset:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root}: split folder {split_dir} does not exist; expected {root}/train/ and "
            f"{root}/val/, each holding one sub-folder of images per class")
    dataset = FolderDataset(str(split_dir), transform=transform, bad_images=bad_images, fill_skipped=fill_skipped)
    other_dir = root / ("val" if split == "train" else "train")
    if other_dir.is_dir():
        other_classes, _ = find_classes(str(other_dir))
        if other_classes != dataset.classes:
            mine, theirs = set(dataset.classes), set(other_classes)
            raise ConfigError(
                f"image folder {root}: train/ and val/ hold different classes; "
                f"only in {split_dir.name}/: {sorted(mine - theirs)}, only in {other_dir.name}/: "
                f"{sorted(theirs - mine)}. Both splits need the same class folders (labels are "
                "assigned by sorted folder name)")
    return dataset


def load_dataset(name: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None,
                 transform: Callable[[Image.Image], Any] | None = None, *, bad_images: str = "fail",
                 fill_skipped: bool = True) -> Dataset:
    """Load split ``"train"`` or ``"val"`` of a built-in data set or an ImageFolder root.

    Args:
        name: one of :data:`BUILTIN_DATASETS`, or a directory holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        data_dir: directory of the IDX files for ``fashion-mnist`` (optional) and
            ``mnist`` (required); ignored otherwise.
        transform: applied to each ``PIL.Image``; see :class:`ArrayImageDataset` for ``None``.
        bad_images: image folders only: ``"fail"`` on an unreadable file (naming it) or
            ``"skip"`` it with a warning and a count (:class:`FolderDataset`).
        fill_skipped: image folders only: a skipped file's position serves the next readable
            sample (training), or ``None`` for :func:`~deit.data.loader.collate_readable` to
            drop (evaluation: every readable file counted once).

    An image folder's ``channels`` is detected from its files (:class:`FolderDataset`):
    a folder of grey images gives 1, as the built-in grey data sets do.

    Returns:
        An :class:`ArrayImageDataset` or a :class:`FolderDataset`; both have ``classes``,
        ``targets``, ``channels``, ``native_size`` and ``hflip_ok``.
    """
    check_choice("split", split, SPLITS)
    key = os.fspath(name)
    if key == "digits":
        return _load_digits(split, transform)
    if key == "fashion-mnist":
        directory = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
        hint = ("Install the Debian package with `apt-get install -y dataset-fashion-mnist`, or pass "
                "--data-dir with the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz).")
        return _load_idx_split(key, directory, split, FASHION_MNIST_CLASSES, transform, hint)
    if key == "mnist":
        hint = ("Pass --data-dir (data_dir=) with the four MNIST IDX files: train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each optionally .gz).")
        if data_dir is None:
            raise DatasetNotFoundError(f"mnist is not bundled and has no default location. {hint}")
        return _load_idx_split(key, Path(data_dir), split, DIGIT_CLASSES, transform, hint)
    if os.path.isdir(key):
        return _load_folder(Path(key), split, transform, bad_images, fill_skipped)
    if key.startswith(PYTHON_DATASET_PREFIX):
        raise ConfigError(f"data set {key!r} was given in Python as torch Datasets, which no file holds: give them "
                          "again, train(config, train_data=..., val_data=...), or name a data set (--dataset)")
    raise ConfigError(f"unknown data set {key!r} (--dataset): expected one of {', '.join(BUILTIN_DATASETS)}, or an "
                      "existing directory holding train/ and val/ sub-folders of class folders (ImageFolder)")


def dataset_record(name: str | os.PathLike) -> dict[str, str]:
    """What a run records of its data set (in a checkpoint's ``data_config``): ``dataset``, the
    name or path as given, and for an image folder ``dataset_path``, its absolute path resolved
    against the current directory, so that the checkpoint finds its folder from any directory
    (``deit eval``). A built-in name wins over a folder of that name, as in :func:`load_dataset`."""
    key = os.fspath(name)
    if key in BUILTIN_DATASETS or not os.path.isdir(key):
        return {"dataset": key}
    return {"dataset": key, "dataset_path": os.path.abspath(key)}


# --- subsets -------------------------------------------------------------------------------

def stratified_indices(targets: Sequence[int], size: int, seed: int = 0) -> list[int]:
    """``size`` indices of ``targets`` keeping the class proportions, chosen at random but
    reproducibly (``seed``); returned sorted, i.e. in the data set's order.

    Each class gets ``size * count / len(targets)`` rounded down, and the ``size`` left over
    go to the classes with the largest remainders (ties: lower class index), the
    largest-remainder rule; inside a class the images are a seeded random choice. An image
    folder lists its files class by class, so the first ``size`` files would be one class.
    """
    targets_array = np.asarray(targets, dtype=np.int64)                       # (N,)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 < size:
        raise ConfigError(f"subset size {size!r} is invalid; expected a positive integer")
    if size >= len(targets_array):
        return list(range(len(targets_array)))
    classes, counts = np.unique(targets_array, return_counts=True)           # (K,), (K,)
    exact = size * counts / len(targets_array)                               # (K,) ideal share per class
    quota = np.floor(exact).astype(np.int64)                                 # (K,)
    order = np.lexsort((classes, -(exact - quota)))                          # largest remainder first
    quota[order[: size - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(targets_array == label))[:take]
              for label, take in zip(classes, quota)]
    return sorted(int(i) for i in np.concatenate(chosen))


# --- statistics and defaults ------------------------------------------------------------

def dataset_mean_std(name: str | os.PathLike, dataset: Dataset
                     ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel normalisation constants in [0, 1] units: ``(mean, std)``.

    For an :class:`ArrayImageDataset` they are computed exactly from its image array —
    pass the TRAINING split —, and so for a :class:`~deit.data.torch_datasets.TorchImageDataset`
    read in full, from its pixel histograms. For an image folder (and a torch Dataset too large
    to read in full) they are timm's ImageNet constants.
    """
    if isinstance(dataset, TorchImageDataset) and dataset.mean_std is not None:
        return dataset.mean_std
    if isinstance(dataset, ArrayImageDataset):
        pixels = dataset.images.reshape(-1, dataset.channels)            # (N*H*W, C) uint8
        values = np.arange(256, dtype=np.float64) / 255.0                # (256,)
        means, stds = [], []
        for c in range(dataset.channels):
            counts = np.bincount(pixels[:, c], minlength=256).astype(np.float64)  # (256,) histogram
            total = counts.sum()
            mean = float((counts * values).sum() / total)
            var = float((counts * (values - mean) ** 2).sum() / total)
            means.append(mean)
            stds.append(max(var, 0.0) ** 0.5)
        return tuple(means), tuple(stds)
    key = os.fspath(name)
    if key in BUILTIN_DATASETS:
        raise TypeError(f"dataset_mean_std({key!r}, ...) got a {type(dataset).__name__}; expected the "
                        "ArrayImageDataset returned by load_dataset")
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)


def typical_image_side(dataset: Dataset, probe: int = FolderDataset.PROBE_FILES) -> int | None:
    """The longer side in pixels of ``dataset``'s stored images: the array's side for an
    in-memory set; the median over the items read for a torch Dataset of varying sizes
    (:class:`~deit.data.torch_datasets.TorchImageDataset`); for an image folder the median over
    the headers of up to ``probe`` files spread evenly over the sorted file list (so over the
    classes), as :meth:`FolderDataset._probe_channels` reads them. ``None`` if no file can be read."""
    while hasattr(dataset, "dataset"):  # through a Subset and the replay wrapper
        dataset = dataset.dataset
    if getattr(dataset, "native_size", None) is not None:
        return int(dataset.native_size)
    if isinstance(dataset, TorchImageDataset):
        return dataset.median_side
    samples = getattr(dataset, "samples", None)
    if not samples:
        return None
    count = min(len(samples), probe)
    positions = sorted(set(np.linspace(0, len(samples) - 1, count).round().astype(int).tolist()))
    sides = []
    for i in positions:
        try:
            with Image.open(samples[i][0]) as image:  # the header only
                sides.append(max(image.size))
        except Exception:  # any unreadable header (Pillow raises many kinds): --bad-images decides in training
            continue
    return int(np.median(sides)) if sides else None


def dataset_info(name: str | os.PathLike, dataset: Dataset | None = None) -> DatasetInfo:
    """Defaults for ``name``: the built-in table, or (for a folder) read off ``dataset``."""
    key = os.fspath(name)
    if key in DATASET_INFO:
        return DATASET_INFO[key]
    if dataset is None or not hasattr(dataset, "classes"):
        raise ConfigError(f"{key!r} is not a built-in data set ({', '.join(BUILTIN_DATASETS)}); pass the "
                          "loaded image-folder dataset so its classes can be counted")
    return DatasetInfo(key, num_classes=len(dataset.classes), channels=getattr(dataset, "channels", 3),
                       native_size=getattr(dataset, "native_size", None),
                       hflip_ok=getattr(dataset, "hflip_ok", True))


# --- identity -------------------------------------------------------------------------------

def dataset_fingerprint(dataset: Dataset) -> str:
    """A SHA-256 naming the images and labels of ``dataset``, what a teacher-output cache
    records (:mod:`deit.distill.cache`): for an image folder the file list with each file's
    class, size and modification time (reading every file would cost as much as an epoch);
    for an in-memory set the content of its arrays; for a torch Dataset given in Python the
    digest of its items that :class:`~deit.data.torch_datasets.TorchImageDataset` takes when it
    wraps it (every image's pixels and label, or for a large set its length and a sample of
    items); through a ``Subset`` its indices too.
    """
    import hashlib

    digest = hashlib.sha256()
    while isinstance(dataset, torch.utils.data.Subset):
        digest.update(b"subset" + np.asarray(dataset.indices, dtype=np.int64).tobytes())
        dataset = dataset.dataset
    if isinstance(dataset, ArrayImageDataset):
        digest.update(b"array" + repr(dataset.images.shape).encode())
        digest.update(np.ascontiguousarray(dataset.images).tobytes())
        digest.update(dataset.targets_array.tobytes())
    elif isinstance(dataset, TorchImageDataset):
        digest.update(b"python" + dataset.fingerprint.encode())
    elif isinstance(dataset, ImageFolder):
        digest.update(b"folder")
        root = Path(dataset.root)
        for path, target in dataset.samples:
            stat = os.stat(path)
            digest.update(f"{Path(path).relative_to(root)}\0{target}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:
        raise ConfigError(f"cannot fingerprint a {type(dataset).__name__}; expected an ImageFolder, an "
                          "ArrayImageDataset, a TorchImageDataset or a Subset of one")
    digest.update(repr(list(getattr(dataset, "classes", []))).encode())
    return digest.hexdigest()
