"""Data sets: built-in splits, the IDX reader, image folders, statistics."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from deit.data.datasets import (
    BUILTIN_DATASETS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    ArrayImageDataset,
    CorruptDatasetError,
    DatasetNotFoundError,
    FolderDataset,
    dataset_info,
    dataset_mean_std,
    load_dataset,
    read_idx,
    stratified_indices,
)


def write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = False):
    """Write ``array`` as an IDX file (big-endian dims), optionally gzipped."""
    dtype = {0x08: np.uint8, 0x0C: np.dtype(">i4")}[code]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=dtype).tobytes()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist_dir(directory, n_train=12, n_val=5, compress=True):
    """Four small IDX files in the MNIST layout; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {}
    suffix = ".gz" if compress else ""
    for split, prefix, n in (("train", "train", n_train), ("val", "t10k", n_val)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        arrays[split] = (images, labels)
    return arrays


# --- digits -------------------------------------------------------------------------------

def test_digits_fixed_stratified_split():
    from sklearn.datasets import load_digits

    train, val = load_dataset("digits", "train"), load_dataset("digits", "val")
    assert (len(train), len(val)) == (1437, 360)
    assert train.classes == [str(i) for i in range(10)] and train.channels == 1 and train.native_size == 8
    assert train.hflip_ok is False  # a mirrored digit is no digit
    assert train.images.dtype == np.uint8 and train.images.shape == (1437, 8, 8)
    assert train.images.max() == 255 and train.images.min() == 0   # 0..16 scaled to 0..255
    full = np.bincount(load_digits().target, minlength=10)
    counts_train = np.bincount(train.targets_array, minlength=10)
    counts_val = np.bincount(val.targets_array, minlength=10)
    np.testing.assert_array_equal(counts_train + counts_val, full)
    # stratified: every class keeps its 80/20 share to within one image
    assert np.all(np.abs(counts_val - 0.2 * full) <= 1)
    assert counts_val.min() >= 35 and counts_train.min() >= 139
    # fixed: the same split every time
    np.testing.assert_array_equal(load_dataset("digits", "val").images, val.images)


def test_digits_items_without_transform_are_unit_float_tensors():
    train = load_dataset("digits", "train")
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert isinstance(label, int) and label == train.targets[0]
    assert all(isinstance(t, int) for t in train.targets[:5]) and len(train.targets) == 1437


# --- ArrayImageDataset --------------------------------------------------------------------

def test_array_dataset_grey_and_rgb():
    grey = ArrayImageDataset(np.full((4, 5, 5), 51, np.uint8), np.array([0, 1, 1, 0]), ["a", "b"],
                             transform=lambda im: im)
    image, label = grey[2]
    assert isinstance(image, Image.Image) and image.mode == "L" and image.size == (5, 5) and label == 1
    assert grey.channels == 1 and grey.native_size == 5 and grey.class_to_idx == {"a": 0, "b": 1}

    rgb_array = np.zeros((2, 6, 6, 3), np.uint8)
    rgb_array[..., 0] = 255
    rgb = ArrayImageDataset(rgb_array, np.array([1, 0]), ["a", "b"])
    tensor, label = rgb[0]
    assert rgb.channels == 3 and tensor.shape == (3, 6, 6) and label == 1
    torch.testing.assert_close(tensor[0], torch.ones(6, 6))
    torch.testing.assert_close(tensor[1:], torch.zeros(2, 6, 6))
    rgb.transform = lambda im: im
    assert rgb[1][0].mode == "RGB"


@pytest.mark.parametrize("images, targets, message", [
    (np.zeros((2, 4, 4), np.float32), [0, 1], "dtype float32; expected uint8"),
    (np.zeros((2, 4, 4, 4), np.uint8), [0, 1], "expected (N, H, W) for grey or (N, H, W, 3)"),
    (np.zeros((2, 4, 4), np.uint8), [0, 1, 1], "expected (2,), one label per image"),
    (np.zeros((2, 4, 4), np.uint8), [0, 2], "expected labels in 0..1 for 2 classes"),
])
def test_array_dataset_rejects_bad_input(images, targets, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        ArrayImageDataset(images, np.array(targets), ["a", "b"])


# --- IDX files ----------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("x.gz" if compress else "x"), images, compress=compress)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    ints = np.array([1, -2, 70000], dtype=np.int64)
    out = read_idx(write_idx(tmp_path / "ints", ints, code=0x0C))
    assert out.shape == (3,)
    np.testing.assert_array_equal(out, ints)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDatasetError, match=r"images is truncated or corrupt: its header declares "
                                                  r"shape \(10, 28, 28\)") as info:
        read_idx(path)
    assert str(path) in str(info.value)

    png = tmp_path / "not-idx"
    png.write_bytes(b"\x89PNG\r\n\x1a\nrest")
    with pytest.raises(CorruptDatasetError, match="not-idx is not an IDX file"):
        read_idx(png)

    gz = write_idx(tmp_path / "cut.gz", np.zeros((50, 28, 28), np.uint8), compress=True)
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(CorruptDatasetError, match="cannot decompress .*cut.gz"):
        read_idx(gz)


# --- fashion-mnist and mnist --------------------------------------------------------------

def test_fashion_mnist_missing_files_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "train-images-idx3-ubyte") in message
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "--data-dir" in message


def test_fashion_mnist_from_data_dir(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    train = load_dataset("fashion-mnist", "train", data_dir=tmp_path)
    val = load_dataset("fashion-mnist", "val", data_dir=str(tmp_path))
    assert (len(train), len(val)) == (12, 5)
    assert train.classes == list(FASHION_MNIST_CLASSES) and train.native_size == 28 and train.hflip_ok
    np.testing.assert_array_equal(val.images, arrays["val"][0])
    assert val.targets == arrays["val"][1].tolist()


def test_fashion_mnist_labels_must_match_images(tmp_path):
    write_mnist_dir(tmp_path, compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(CorruptDatasetError, match=r"t10k-labels-idx1-ubyte holds labels of shape \(4,\); "
                                                  r"expected \(5,\)"):
        load_dataset("fashion-mnist", "val", data_dir=tmp_path)


def test_mnist_needs_data_dir(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="mnist is not bundled.*--data-dir"):
        load_dataset("mnist", "train")
    write_mnist_dir(tmp_path)
    train = load_dataset("mnist", "train", data_dir=tmp_path)
    assert len(train) == 12 and train.classes == [str(i) for i in range(10)] and not train.hflip_ok


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} absent (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_debian_package():
    train = load_dataset("fashion-mnist", "train")
    val = load_dataset("fashion-mnist", "val")
    assert (len(train), len(val)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28) and train.channels == 1
    assert train.targets[0] == 9 and train.classes[train.targets[0]] == "Ankle boot"
    assert np.bincount(train.targets_array).tolist() == [6000] * 10   # balanced classes
    mean, std = dataset_mean_std("fashion-mnist", train)
    assert mean == pytest.approx((0.2860,), abs=1e-3) and std == pytest.approx((0.3530,), abs=1e-3)


# --- image folders ------------------------------------------------------------------------

def make_folder(root, splits=("train", "val"), classes=("cat", "dog"), per_class=2):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                image = Image.fromarray(array)
                image = image.convert("L") if i == 0 else image.convert("RGBA")  # mixed modes on disk
                image.save(root / split / name / f"{i}.png")
    return root


def test_image_folder_loads_rgb(tmp_path):
    root = make_folder(tmp_path / "pets")
    train = load_dataset(str(root), "train", transform=lambda im: im)
    assert isinstance(train, FolderDataset) and train.classes == ["cat", "dog"]
    assert train.channels == 3 and train.native_size is None and train.hflip_ok and len(train) == 4
    assert train.targets == [0, 0, 1, 1]
    image, label = train[0]
    assert image.mode == "RGB" and image.size == (12, 10) and label == 0
    info = dataset_info(str(root), train)
    assert (info.num_classes, info.channels, info.native_size) == (2, 3, None)
    mean, std = dataset_mean_std(str(root), train)
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


def grey_folder(root, writer, classes=("a", "b", "c"), per_class=3):
    """root/{train,val}/<class>/<i>.<ext>, every file written by ``writer(path, array)``."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                writer(root / split / name / f"{i}", rng.integers(0, 256, (9, 11), dtype=np.uint8))
    return root


GREY_WRITERS = {
    "8-bit PNG": lambda path, a: Image.fromarray(a).save(f"{path}.png"),
    "16-bit PNG": lambda path, a: Image.fromarray(a.astype(np.uint16) * 257).save(f"{path}.png"),
    "grey JPEG": lambda path, a: Image.fromarray(a).save(f"{path}.jpg"),
    "bilevel PNG": lambda path, a: Image.fromarray(a > 127).save(f"{path}.png"),
}


@pytest.mark.parametrize("kind", list(GREY_WRITERS))
def test_grey_image_folder_has_one_channel(tmp_path, kind):
    root = grey_folder(tmp_path / "grey", GREY_WRITERS[kind])
    train = load_dataset(str(root), "train", transform=lambda im: im)
    assert train.channels == 1 and dataset_info(str(root), train).channels == 1
    image, _ = train[4]
    assert image.mode == "L" and image.size == (11, 9)
    if kind == "16-bit PNG":  # scaled to 8 bits: the values written, not white
        written = np.asarray(Image.open(train.samples[4][0]), dtype=np.uint16) >> 8
        np.testing.assert_array_equal(np.asarray(image), written)


def test_kept_decoded_images_are_decoded_once_and_serve_the_same_pixels(tmp_path, monkeypatch):
    root = grey_folder(tmp_path / "grey", GREY_WRITERS["8-bit PNG"], per_class=4)  # 12 files of 9 x 11
    fresh = load_dataset(str(root), "train", transform=np.asarray)
    kept = load_dataset(str(root), "train", transform=np.asarray)
    kept.keep_decoded(5 * 9 * 11)  # room for five of the twelve
    decoded = []
    loader = kept.loader
    monkeypatch.setattr(kept, "loader", lambda path: decoded.append(path) or loader(path))
    for _ in range(3):  # three epochs
        for index in range(len(kept)):
            assert np.array_equal(kept[index][0], fresh[index][0])
    assert kept.decoded_bytes == 5 * 9 * 11
    assert len(decoded) == 5 + 3 * 7  # the first five once, the seven beyond the limit every epoch
    kept.keep_decoded(0)
    assert kept.decoded_bytes == 0
    with pytest.raises(ValueError, match="limit_bytes"):
        kept.keep_decoded(-1)


def test_a_skipped_unreadable_file_is_not_kept(tmp_path):
    root = grey_folder(tmp_path / "grey", GREY_WRITERS["8-bit PNG"])
    (root / "train" / "a" / "0.png").write_bytes(b"not a png")
    data = load_dataset(str(root), "train", transform=np.asarray, bad_images="skip")
    data.keep_decoded(1 << 20)
    first = [data[i][1] for i in range(len(data))]
    assert [data[i][1] for i in range(len(data))] == first and data.skipped == 1  # known bad: not retried
    assert data.decoded_bytes == 8 * 9 * 11


def test_an_unreadable_file_serves_none_without_filling_its_position(tmp_path):
    """fill_skipped=False (evaluation): the unreadable file's position serves None, which
    collate_readable drops, so each readable file comes once; the default (training) serves the
    next readable sample there."""
    from deit.data.loader import collate_readable

    root = grey_folder(tmp_path / "grey", GREY_WRITERS["8-bit PNG"])
    bad = root / "val" / "a" / "1.png"
    bad.write_bytes(b"not a png")
    evaluated = load_dataset(str(root), "val", transform=np.array, bad_images="skip", fill_skipped=False)
    samples = [evaluated[i] for i in range(len(evaluated))]
    assert samples[1] is None and sum(s is None for s in samples) == 1
    assert evaluated.skipped == 1 and evaluated.skipped_paths == [str(bad)]
    batch = collate_readable(samples[:3])
    assert batch[1].tolist() == [0, 0] and collate_readable([None, None]) is None
    trained = load_dataset(str(root), "val", transform=np.asarray, bad_images="skip")
    assert [trained[i][1] for i in range(3)] == [0, 0, 0]  # the next readable file fills position 1


def test_one_colour_file_makes_a_folder_rgb(tmp_path):
    root = grey_folder(tmp_path / "mixed", GREY_WRITERS["8-bit PNG"])
    Image.fromarray(np.zeros((9, 11, 3), np.uint8)).save(root / "train" / "b" / "colour.png")
    train = load_dataset(str(root), "train", transform=lambda im: im)
    assert train.channels == 3 and train[0][0].mode == "RGB"
    forced = FolderDataset(str(root / "train"), channels=1)
    assert forced.channels == 1 and forced[0][0].mode == "L"


def test_image_folder_missing_split(tmp_path):
    root = make_folder(tmp_path / "pets", splits=("train",))
    with pytest.raises(DatasetNotFoundError, match="split folder .*pets/val does not exist"):
        load_dataset(root, "val")


def test_image_folder_class_mismatch(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "val" / "bird").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "bird" / "0.png")
    with pytest.raises(ValueError, match=r"only in train/: \[\], only in val/: \['bird'\]"):
        load_dataset(root, "train")


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'cifar' \\(--dataset\\): expected one of digits, "
                                         "fashion-mnist, mnist, or an existing directory holding train/ and val/"):
        load_dataset("cifar", "train")
    with pytest.raises(ValueError, match="split='test' is not supported"):
        load_dataset("digits", "test")


# --- statistics and defaults --------------------------------------------------------------

def test_mean_std_is_exact_per_channel():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
    dataset = ArrayImageDataset(images, np.zeros(7, np.int64), ["only"])
    mean, std = dataset_mean_std("custom", dataset)
    values = images.reshape(-1, 3) / 255.0
    assert mean == pytest.approx(tuple(values.mean(0)), abs=1e-12)
    assert std == pytest.approx(tuple(values.std(0)), abs=1e-12)
    with pytest.raises(TypeError, match="expected the ArrayImageDataset"):
        dataset_mean_std("digits", [1, 2, 3])


def test_dataset_info_defaults():
    assert BUILTIN_DATASETS == ("digits", "fashion-mnist", "mnist")
    assert dataset_info("digits").hflip_ok is False and dataset_info("digits").native_size == 8
    assert dataset_info("fashion-mnist").hflip_ok is True and dataset_info("fashion-mnist").num_classes == 10
    with pytest.raises(ValueError, match="not a built-in data set"):
        dataset_info("/some/folder")


# --- class-stratified subsets ----------------------------------------------------------------

def test_stratified_subset_keeps_class_proportions_like_sklearn():
    from sklearn.model_selection import train_test_split

    targets = np.repeat(np.arange(7), [300, 150, 90, 60, 200, 17, 183])  # sorted by class, as an image folder
    for size in (7, 50, 512, 900):
        chosen = stratified_indices(targets, size, seed=0)
        assert len(chosen) == size == len(set(chosen)) and chosen == sorted(chosen)
        ours = np.bincount(targets[chosen], minlength=7)
        reference, _ = train_test_split(targets, train_size=size, stratify=targets, random_state=0)
        assert np.abs(ours - np.bincount(reference, minlength=7)).max() <= 1, size
        assert np.abs(ours - size * np.bincount(targets) / len(targets)).max() < 1  # largest-remainder quotas
    assert np.bincount(targets[stratified_indices(targets, 512)]).min() > 0       # not the first class only


def test_stratified_subset_is_seeded():
    targets = np.repeat(np.arange(3), 40)
    assert stratified_indices(targets, 30, seed=5) == stratified_indices(targets, 30, seed=5)
    assert stratified_indices(targets, 30, seed=5) != stratified_indices(targets, 30, seed=6)
    assert stratified_indices(targets, 500) == list(range(120))
    with pytest.raises(ValueError, match="subset size 0"):
        stratified_indices(targets, 0)
