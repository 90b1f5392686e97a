"""Data and a student the user already has, given to the training system in Python:
``train(config, train_data=..., val_data=..., student=...)`` with torch Datasets of raw images
(torchvision's kind) and any ``nn.Module`` classifier, through the whole run and its resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

import deit
from deit.core.errors import CheckpointError, ConfigError
from deit.data import TorchImageDataset, dataset_mean_std, load_dataset
from deit.data.datasets import dataset_fingerprint, typical_image_side
from deit.train.run import train
from deit.train.settings import load_config
from tests.train.test_module_teacher import MNIST_MEAN, MNIST_STD, digits_cnn  # noqa: F401 (the teacher fixture)

# tests/train/test_run.py's light recipe for digits, at their native 8 px, with a module teacher
RUN = dict(dataset="python:digits", image_size=8, batch_size=64, progress=False, model_ema=False, mixup=0.0,
           cutmix=0.0, reprob=0.0, auto_augment=None, scale=(1.0, 1.0), hflip=0.0, warmup_epochs=1, repeated_aug=1,
           drop_path=0.0, recipe="paper", epochs=2, lr=5e-3, distillation_type="hard",
           teacher_model="module:digits-cnn", teacher_mean=list(MNIST_MEAN), teacher_std=list(MNIST_STD))


class DigitsItems(Dataset):
    """scikit-learn's digits as a user's Dataset of raw images, item ``i`` a PIL image, a
    (H, W, 1) uint8 array or a (1, H, W) uint8 tensor by turns, and an int label."""

    def __init__(self, split: str) -> None:
        digits = load_dataset("digits", split)
        self.images, self.labels = digits.images.copy(), digits.targets  # (N, 8, 8) uint8, N ints

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        pixels = self.images[index]  # (8, 8) uint8
        image = (Image.fromarray(pixels), pixels[..., None], torch.from_numpy(pixels)[None])[index % 3]
        return image, self.labels[index]


class SmallCNN(nn.Module):
    """A plain PyTorch student: one head, (B, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 10)


def pico() -> nn.Module:
    return deit.create_model("deit_pico_distilled_patch4_32", num_classes=10, in_channels=1, image_size=8)


def test_torch_datasets_and_a_deit_module_student_distil_and_resume_only_with_the_same(digits_cnn, tmp_path):
    out = tmp_path / "run"
    settings = {**RUN, "model": "module:pico", "output": str(out)}
    student, data = pico(), dict(train_data=DigitsItems("train"), val_data=DigitsItems("val"))
    first = train(load_config(None, {**settings, "stop_after_epochs": 1}), teacher=digits_cnn, student=student,
                  **data)
    assert first.epochs_run == 1 and first.final["train_distillation_loss"] > 0
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["config"]["dataset"] == "python:digits" and saved["config"]["model"] == "module:pico"
    assert saved["student_module"] == "deit.models.deit.DeiT" and saved["model_name"] is None
    # statistics of data read in full are exact, as the built-in digits' are
    assert saved["data_config"]["mean"] == pytest.approx(dataset_mean_std("digits", load_dataset("digits", "train"))[0])
    with pytest.raises(CheckpointError, match=r"the run's student was a Python module \(deit.models.deit.DeiT\)"):
        deit.build_from_checkpoint(out / "last.pth")  # what deit eval / predict rebuild the model with

    resume = load_config(None, {**settings, "resume": True})
    changed = DigitsItems("train")
    changed.images[5] = 255 - changed.images[5]  # one image differs
    with pytest.raises(ConfigError, match=r"the training data are not those this run trained on \(fingerprint"):
        train(resume, teacher=digits_cnn, student=student, train_data=changed, val_data=data["val_data"])
    with pytest.raises(ConfigError, match=r"^cannot resume: this run trained on torch Datasets given in Python "
                                          r"\(python:digits\); give them again, train\(config, train_data="):
        train(resume, teacher=digits_cnn, student=student)
    with pytest.raises(ConfigError, match=r"student was a module given in Python \(module:pico\); give it again"):
        train(resume, teacher=digits_cnn, **data)
    with pytest.raises(ConfigError, match=r"the student is not the module this run trained \(a tests.train."
                                          r"test_torch_datasets.SmallCNN, the run trained a deit.models.deit.DeiT\)"):
        train(resume, teacher=digits_cnn, student=SmallCNN(), **data)
    done = train(resume, teacher=digits_cnn, student=student, **data)
    assert done.epochs_run == 1
    final = done.final
    assert final["val_acc1"] >= 50.0 and final["val_cls_acc1"] >= 40.0, final  # 10 classes: chance is 10 %
    assert final["val_dist_teacher_agreement"] > 40.0, final  # both heads reported, the distillation one too
    assert student.teacher is None  # the user's module leaves without the run's teacher


def test_a_plain_cnn_student_is_distilled_on_its_own_head(digits_cnn, tmp_path):
    settings = {**RUN, "dataset": "digits", "model": "module:small-cnn", "lr": 4e-2, "epochs": 3,
                "output": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="two students: model='deit_tiny_patch16_224'"):
        train(load_config(None, {**settings, "model": "deit_tiny_patch16_224"}), student=SmallCNN())
    torch.manual_seed(0)
    result = train(load_config(None, settings), teacher=digits_cnn, student=SmallCNN())
    final = result.final
    assert final["train_distillation_loss"] > 0 and "val_cls_acc1" not in final  # one head
    assert final["val_acc1"] >= 50.0 and final["val_teacher_agreement"] >= 50.0, final  # chance: 10 %
    from deit.deploy.predict import load_for_inference

    with pytest.raises(CheckpointError, match=r"SmallCNN\), which a file cannot rebuild; build the module in Python"):
        load_for_inference(tmp_path / "run" / "best.pth")


class Items(Dataset):
    def __init__(self, items, **attributes) -> None:
        self.items = items
        self.__dict__.update(attributes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


GREY = np.zeros((8, 8), dtype=np.uint8)


@pytest.mark.parametrize("items, message", [
    ([(GREY, 0), (GREY.astype(np.float32), 1)], r"train_data item 1: the image is a float32 array of shape \(8, 8\); "
                                                r"expected raw images, as torchvision's data sets return them"),
    ([(torch.rand(1, 8, 8), 0)], r"train_data item 0: the image is a float32 tensor of shape \(1, 8, 8\); .*give it "
                                 r"with transform=None, the run applies its own"),
    ([(GREY, 0), (GREY, "seven")], r"train_data item 1: the label is 'seven' \(str\); expected an int class index"),
    ([(GREY, 0), GREY], r"train_data item 1 is a ndarray; expected an \(image, label\) pair"),
    ([("digit.png", 0)], r"train_data item 0: the image is a str; expected raw images"),
])
def test_bad_items_are_named_by_index_with_what_was_expected(items, message, tmp_path):
    config = load_config(None, {**RUN, "model": "deit_pico_patch4_32", "distillation_type": "none",
                                "teacher_model": None, "teacher_mean": None, "teacher_std": None,
                                "output": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=message):
        train(config, train_data=Items(items), val_data=Items([(GREY, 0)]))
    assert not (tmp_path / "run").exists()


def test_data_given_in_python_are_checked_against_each_other_and_the_config(tmp_path):
    base = {**RUN, "model": "deit_pico_patch4_32", "distillation_type": "none", "teacher_model": None,
            "teacher_mean": None, "teacher_std": None, "output": str(tmp_path / "run")}
    train_data = Items([(GREY, 0), (GREY, 1)], classes=["zero", "one"])
    with pytest.raises(ConfigError, match="train_data= and val_data= go together"):
        train(load_config(None, base), train_data=train_data)
    with pytest.raises(ConfigError, match=r"two data sets: dataset='digits' \(--dataset\) and the one given as "
                                          r"train_data="):
        train(load_config(None, {**base, "dataset": "digits"}), train_data=train_data, val_data=train_data)
    with pytest.raises(ConfigError, match=r"val_data item 1: the label is 2; expected a class index in 0..1"):
        train(load_config(None, base), train_data=train_data, val_data=Items([(GREY, 1), (GREY, 2)]))
    with pytest.raises(ConfigError, match="val_data names other classes than train_data"):
        train(load_config(None, base), train_data=train_data, val_data=Items([(GREY, 1)], classes=["a", "b"]))
    with pytest.raises(ConfigError, match=r"data set 'python:digits' was given in Python .*give them again"):
        train(load_config(None, base))  # the label alone: nothing to load
    assert not (tmp_path / "run").exists()


def test_a_torchvision_dataset_is_read_in_full_or_probed_as_a_folder(monkeypatch):
    fake = torchvision.datasets.FakeData(size=40, image_size=(3, 12, 10), num_classes=4, transform=None)
    small = TorchImageDataset(fake)
    pixels = np.stack([np.asarray(fake[i][0]) for i in range(len(fake))])  # (40, 12, 10, 3) uint8
    mean, std = dataset_mean_std("python:fake", small)
    assert mean == pytest.approx(tuple(pixels.mean(axis=(0, 1, 2)) / 255)) and len(std) == 3
    assert small.channels == 3 and small.native_size is None and typical_image_side(small) == 12
    assert small.targets == [fake[i][1] for i in range(len(fake))] and small.classes == ["0", "1", "2", "3"]
    assert small.read_in_full and dataset_fingerprint(small) == dataset_fingerprint(TorchImageDataset(fake))
    image, label = small[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and label == fake[3][1]

    monkeypatch.setattr(TorchImageDataset, "FULL_READ_ITEMS", 20)
    monkeypatch.setattr(TorchImageDataset, "PROBE_ITEMS", 5)
    large = TorchImageDataset(fake)  # as an image folder: probed, ImageNet's statistics, labels in a pass
    assert not large.read_in_full and large.mean_std is None and large.targets == small.targets
    assert dataset_mean_std("python:fake", large)[0] == pytest.approx((0.485, 0.456, 0.406))
    assert dataset_fingerprint(large) != dataset_fingerprint(small)
