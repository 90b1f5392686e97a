"""Image decoding (``deit.data.decode.load_image``) against torchvision's decoders and
Pillow's own ``ImageOps.exif_transpose``, on generated files of each kind cameras and
tools write: 16-bit grey and colour PNGs, 32-bit int and float TIFFs, JPEGs with an EXIF
Orientation tag, RGBA, palette (with and without transparency), CMYK JPEG, grey + alpha."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from deit.data.decode import load_image, stored_channels

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def write_png16(path: Path, array: np.ndarray) -> Path:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): colour type
    0 (grey), 2 (RGB), 4 (grey + alpha) or 6 (RGBA) from the array's channel count."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def torchvision_uint8(path: Path, mode: ImageReadMode = ImageReadMode.UNCHANGED, exif: bool = False) -> np.ndarray:
    """torchvision's decode, scaled to uint8 by its own ``to_dtype(scale=True)``: (H, W, C)."""
    image = decode_image(str(path), mode=mode, apply_exif_orientation=exif)      # (C, H, W) uint8 / uint16
    return to_dtype(image, torch.uint8, scale=True).permute(1, 2, 0).numpy()      # (H, W, C) uint8


def pixels(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array                         # (H, W, C)


# --- high bit depth ------------------------------------------------------------------------

def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)           # 0 .. 64491
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    grey = load_image(path, 1)
    assert grey.mode == "L" and grey.size == (64, 48)
    expected_mean = float((ramp >> 8).mean())                                      # ~125, not 255
    assert abs(np.asarray(grey).mean() - expected_mean) < 1e-9 and expected_mean < 130
    assert np.asarray(Image.open(path).convert("L")).mean() > 250                  # what Pillow alone gives
    np.testing.assert_array_equal(pixels(grey), torchvision_uint8(path))
    rgb = load_image(path, 3)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb), np.repeat(pixels(grey), 3, axis=2))


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_16bit_colour_and_alpha_pngs_match_torchvision(tmp_path, channels):
    rng = np.random.default_rng(channels)
    array = rng.integers(0, 65536, size=(20, 30, channels), dtype=np.uint16)
    path = write_png16(tmp_path / f"c{channels}.png", array)
    image = load_image(path, 3)
    reference = torchvision_uint8(path, ImageReadMode.RGB)
    np.testing.assert_array_equal(np.asarray(image), reference)
    if channels in (3, 4):  # the high byte of each colour channel, alpha dropped
        np.testing.assert_array_equal(np.asarray(image), (array[..., :3] >> 8).astype(np.uint8))
    else:  # grey + alpha: the grey value replicated
        np.testing.assert_array_equal(np.asarray(image)[..., 0], (array[..., 0] >> 8).astype(np.uint8))


def test_32bit_int_and_float_tiffs_use_fixed_scaling(tmp_path):
    values = np.array([[0, 255, 256, 32768], [65535, 70000, -5, 1000]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "int.tif")
    assert Image.open(tmp_path / "int.tif").mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "int.tif", 1)),
                                  [[0, 0, 1, 128], [255, 255, 0, 3]])
    floats = np.array([[0.0, 0.5, 1.0, 2.0], [-1.0, 0.25, 0.999, 0.002]], dtype=np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "float.tif", 1)),
                                  [[0, 128, 255, 255], [0, 64, 255, 1]])


# --- EXIF orientation ------------------------------------------------------------------------

def camera_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 24x40 JPEG with a red top-left block and a blue bottom-right block, tagged with
    ``orientation``; returns the stored pixels."""
    array = np.full((24, 40, 3), 128, np.uint8)
    array[:8, :10] = (255, 0, 0)
    array[16:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif, quality=95)
    return array


def test_exif_orientation_6_turns_the_image_as_the_camera_meant(tmp_path):
    path = tmp_path / "portrait.jpg"
    camera_jpeg(path, 6)                                 # 6: stored rotated 90° anticlockwise; show turned clockwise
    image = load_image(path, 3)
    assert image.size == (24, 40)                        # (width, height): portrait, as shown by a viewer
    array = np.asarray(image).astype(int)
    # turned 90° clockwise: the stored top-left (red) lands top-right, bottom-right (blue) bottom-left
    assert array[2, 20].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert array[37, 3].tolist() == pytest.approx([0, 0, 255], abs=12)
    by_hand = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(array, by_hand)
    torchvision = torchvision_uint8(path, ImageReadMode.RGB, exif=True)
    assert np.abs(array - torchvision.astype(int)).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_torchvision(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    camera_jpeg(path, orientation)
    array = np.asarray(load_image(path, 3)).astype(int)
    torchvision = torchvision_uint8(path, ImageReadMode.RGB, exif=True).astype(int)
    assert array.shape == torchvision.shape
    assert np.abs(array - torchvision).max() <= 1
    grey = np.asarray(load_image(path, 1))
    assert grey.shape == array.shape[:2]                 # the grey image is turned the same way


# --- colour modes --------------------------------------------------------------------------

def test_rgba_png_drops_alpha_like_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    array[..., 3] = 0                                    # fully transparent: colour values are still used
    path = tmp_path / "rgba.png"
    Image.fromarray(array, mode="RGBA").save(path)
    image = load_image(path, 3)
    np.testing.assert_array_equal(np.asarray(image), array[..., :3])
    np.testing.assert_array_equal(np.asarray(image), torchvision_uint8(path, ImageReadMode.RGB))
    assert load_image(path, 1).mode == "L"


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_gives_its_palette_colours(tmp_path, transparency):
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9)
    index = np.array([[0, 1, 2, 1], [2, 2, 0, 1]], np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette)
    path = tmp_path / "palette.png"
    image.save(path, **({"transparency": 1} if transparency else {}))
    decoded = np.asarray(load_image(path, 3))
    np.testing.assert_array_equal(decoded, np.array(palette[:9], np.uint8).reshape(3, 3)[index])
    np.testing.assert_array_equal(decoded, torchvision_uint8(path, ImageReadMode.RGB))
    assert stored_channels(path) == 3


def test_grey_palette_counts_as_grey(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="P")
    image.putpalette([v for g in (0, 80, 160, 255) for v in (g, g, g)])
    image.save(tmp_path / "grey-palette.png")
    assert stored_channels(tmp_path / "grey-palette.png") == 1


def test_cmyk_jpeg_matches_torchvision(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image = load_image(path, 3)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), torchvision_uint8(path, ImageReadMode.RGB))
    assert np.abs(np.asarray(image).astype(int) - rgb).mean() < 3      # the colours survive the round trip


def test_grey_with_alpha_and_bilevel(tmp_path):
    la = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, np.full((4, 4), 7, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "la.png", 1)), la[..., 0])
    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "bits.png", 1)), np.eye(4) * 255)
    assert stored_channels(tmp_path / "la.png") == 1 and stored_channels(tmp_path / "bits.png") == 1


# --- errors and entry points ------------------------------------------------------------------

def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 3)
    with pytest.raises(ValueError, match="is a directory"):
        load_image(tmp_path, 3)
    bad = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read .*truncated.png"):
        load_image(bad, 1)
    with pytest.raises(ValueError, match="in_channels=2"):
        load_image(bad, 2)
    assert stored_channels(tmp_path / "missing.png") is None


def test_every_import_path_is_the_same_decoder():
    from deit.data import load_image as from_package
    from deit.data.transforms import load_image as from_transforms

    assert from_package is load_image and from_transforms is load_image
