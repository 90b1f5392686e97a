"""Image files to ``PIL.Image``: the one place where the library decodes a file.

Training folders, ``deit predict``, ``deit eval`` and ``deit visualize`` all read images
through :func:`load_image`, so a photo means the same pixels everywhere. The steps:

1. **Decode in full** (``Image.load``): a truncated file fails here, naming the file.
2. **EXIF orientation** (``PIL.ImageOps.exif_transpose``): a camera stores a portrait shot
   as a landscape sensor image plus an Orientation tag; the pixels are turned the way the
   camera meant, as ``torchvision.io.decode_image(..., apply_exif_orientation=True)`` does.
   A file whose EXIF block cannot be parsed keeps its stored orientation.
3. **Bit depth to 8 bits**, with fixed scaling (never the image's own min/max, so the same
   value maps to the same pixel in every file):

   * ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit grey PNG or TIFF): ``value >> 8``,
     the high byte, as torchvision's ``to_dtype(uint16 -> uint8, scale=True)``. Pillow's
     own ``convert("L")`` clips instead, turning everything above 255 white.
   * ``I`` (32-bit integers; some 16-bit files open in this mode): read as 16-bit values,
     ``clip(value, 0, 65535) >> 8``.
   * ``F`` (32-bit floats): read in [0, 1], torchvision's convention for float images,
     ``round(clip(value, 0, 1) * 255)``.
   * 16-bit ``RGB`` / ``RGBA`` PNGs: Pillow already keeps the high byte of each channel
     when it opens them (the same ``>> 8``); nothing more to do.

4. **Channels**: the result is ``L`` for ``in_channels=1`` and ``RGB`` for
   ``in_channels=3``. Alpha (``RGBA``, ``LA``, ``PA``, palette transparency) is DROPPED, not
   composited: the colour values are kept as stored, exactly what torchvision's
   ``pil_loader`` and timm's ``ImageDataset`` (``img.convert("RGB")``) feed a model, so
   predictions match those pipelines. Palette images take their palette colours; ``CMYK``
   JPEGs use Pillow's conversion (equal to libjpeg's in ``torchvision.io.decode_image``);
   grey to ``RGB`` replicates the grey value; colour to ``L`` is ITU-R 601-2 luma.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    from deit.core.errors import ConfigError
except ImportError:  # loaded by its path beside an exported model, where torch (and so deit) is absent
    ConfigError = ValueError


__all__ = ["GREY_MODES", "decoded_batches", "load_image", "to_8bit", "stored_channels"]

logger = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB"}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
GREY_MODES = frozenset(("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT))
"""Pillow modes that hold one grey channel (plus alpha for ``LA``/``La``)."""


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with a high-bit-depth grey mode (``I;16*``, ``I``, ``F``) scaled to ``L`` by
    the fixed rules of the module docstring; any other mode is returned unchanged."""
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image).astype(np.uint16)                     # (H, W) 0..65535
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode == "I":
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)    # (H, W) int32 read as 16-bit
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)  # (H, W) in [0, 1]
        return Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L")
    return image


def _orient(image: Image.Image, path: str) -> Image.Image:
    """EXIF orientation applied; an unparsable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:  # Pillow raises assorted errors (struct, KeyError, SyntaxError) on broken EXIF
        logger.warning("%s: EXIF block unreadable (%s: %s); using the image as stored", path, type(err).__name__,
                       err)
        return image


def load_image(path: str | os.PathLike, in_channels: int) -> Image.Image:
    """Decode an image file into ``L`` (``in_channels=1``) or ``RGB`` (``in_channels=3``):
    EXIF orientation applied, high bit depths scaled, alpha dropped (module docstring).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file for a
    directory or a file Pillow cannot decode (truncated, not an image).
    """
    # spelled out rather than deit.core.validation.check_choice: onnx_predict may load this module alone
    if in_channels not in _MODES:
        raise ConfigError(f"in_channels={in_channels!r} is not supported; expected one of: 1, 3")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory; expected an image file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now so a truncated file fails here, not in a transform
            image = to_8bit(_orient(image, path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ConfigError(f"cannot read {path} as an image: it is not a format Pillow can decode or it "
                          f"is truncated ({type(err).__name__}: {err})") from None
    stored = image.mode
    try:
        if image.mode == "P":  # palette colours (transparency dropped, as convert("RGB") does)
            image = image.convert("RGB")
        return image if image.mode == _MODES[in_channels] else image.convert(_MODES[in_channels])
    except ValueError as err:  # e.g. LAB, which Pillow cannot convert
        raise ConfigError(f"cannot use {path}: its pixel mode {stored!r} cannot be converted to "
                          f"{_MODES[in_channels]!r} ({err}); save it as RGB or greyscale") from None


def stored_channels(path: str | os.PathLike) -> int | None:
    """1 if the file stores grey pixels (a mode of :data:`GREY_MODES`, or a palette of grey
    entries only), 3 for colour, ``None`` if it cannot be opened. Reads the header (and
    palette) only, not the pixels."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode in GREY_MODES:
                return 1
            if mode in ("P", "PA"):
                palette = np.asarray(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)  # (K, 3)
                return 1 if len(palette) and bool((palette == palette[:, :1]).all()) else 3
            return 3
    except Exception:  # unreadable files are the bad-image policy's business, not the probe's
        return None


def decoded_batches(paths, decode, batch_size: int):
    """Decode ``paths`` ``batch_size`` at a time with ``decode(path)``; yields ``(entries,
    images)``: one entry per path of the batch, in order (``{"image": path}``, or
    ``{"image": path, "error": message}`` for a file that cannot be read), and the decoded
    images of the readable ones, in order. One bad file never stops the others (used by the
    PyTorch and the ONNX predictors)."""
    for start in range(0, len(paths), batch_size):
        entries, images = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(decode(path))
            except (OSError, ValueError) as err:
                entries.append({"image": str(path), "error": str(err)})
                continue
            entries.append({"image": str(path)})
        yield entries, images
