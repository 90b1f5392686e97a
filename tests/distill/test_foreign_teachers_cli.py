"""A teacher the user already has, through ``deit train --teacher-model``: a torchvision
architecture with its state-dict file, an HF ``save_pretrained`` folder, a user's module in a
file (``file.py:factory``) and an ONNX file run by ONNX Runtime. Each teacher is made with its
own library's API and trained on digits with statistics other than the student's; the run
converts the student's batches to them and the distillation head learns the teacher's
decisions (its agreement with the teacher is reported)."""
from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from deit.cli import main

TEACHER_MEAN, TEACHER_STD = (0.2, 0.2, 0.2), (0.3, 0.3, 0.3)  # what every teacher below was trained with
FLAGS = ["--dataset", "digits", "--image-size", "8", "--model", "deit_pico_distilled_patch4_32", "--epochs", "3",
         "--warmup-epochs", "0", "--batch-size", "64", "--lr", "5e-3", "--no-model-ema", "--mixup", "0", "--cutmix",
         "0", "--reprob", "0", "--auto-augment", "none", "--repeated-aug", "1", "--scale", "1", "1",
         "--distillation-type", "hard", "--recipe", "paper", "--no-progress"]

CNN_FILE = textwrap.dedent('''
    from torch import nn


    class DigitsCNN(nn.Module):
        """A user's own RGB classifier; its pretrained_cfg says how it was trained (timm's convention)."""

        pretrained_cfg = {"mean": (0.2, 0.2, 0.2), "std": (0.3, 0.3, 0.3), "input_size": (3, 8, 8)}

        def __init__(self, num_classes=10):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                     nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(64, num_classes))

        def forward(self, x):
            return self.net(x)


    def make(num_classes=10):
        return DigitsCNN(num_classes)
''')


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from deit.data import build_transform, load_dataset

    data = load_dataset("digits", split)
    data.transform = build_transform(is_train=False, image_size=8, in_channels=3, mean=TEACHER_MEAN, std=TEACHER_STD)
    images, labels = zip(*[data[i] for i in range(len(data))])
    return torch.stack(images), torch.tensor(labels)  # (N, 3, 8, 8), (N,)


def _fit(model: nn.Module, epochs: int, lr: float, logits=lambda out: out) -> float:
    """A few epochs of plain AdamW on digits; the model's validation top-1."""
    x, y = _digits("train")
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(logits(model(x[idx])), y[idx]).backward()
            optimizer.step()
    vx, vy = _digits("val")
    with torch.no_grad():
        return 100.0 * (logits(model.eval()(vx)).argmax(1) == vy).float().mean().item()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, tuple[list[str], float]]:
    """``--teacher-model`` / ``--teacher-checkpoint`` flags of each source, and the teacher's own
    top-1 on digits' validation split."""
    import importlib.util

    import torchvision
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("teachers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small kernels: one thread is faster and immune to a busy machine
    try:
        flags: dict[str, tuple[list[str], float]] = {}
        resnet = torchvision.models.get_model("resnet18", num_classes=10)
        accuracy = _fit(resnet, epochs=3, lr=2e-3)
        torch.save(resnet.state_dict(), root / "resnet18.pth")
        flags["torchvision"] = (["--teacher-model", "torchvision:resnet18", "--teacher-checkpoint",
                                 str(root / "resnet18.pth"), "--teacher-mean", "0.2", "--teacher-std", "0.3"], accuracy)

        hf_resnet = ResNetForImageClassification(ResNetConfig(
            num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic",
            downsample_in_first_stage=False, num_labels=10))
        accuracy = _fit(hf_resnet, epochs=4, lr=3e-3, logits=lambda out: out.logits)
        hf_resnet.save_pretrained(root / "hf")
        ViTImageProcessor(image_mean=list(TEACHER_MEAN), image_std=list(TEACHER_STD),
                          size={"height": 8, "width": 8}).save_pretrained(root / "hf")
        flags["hf"] = (["--teacher-model", str(root / "hf")], accuracy)

        (root / "digits_cnn.py").write_text(CNN_FILE)
        spec = importlib.util.spec_from_file_location("digits_cnn_for_the_test", root / "digits_cnn.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cnn = module.make()
        accuracy = _fit(cnn, epochs=15, lr=1e-2)
        torch.save(cnn.state_dict(), root / "cnn.pth")
        flags["file"] = (["--teacher-model", f"{root / 'digits_cnn.py'}:make", "--teacher-checkpoint",
                          str(root / "cnn.pth")], accuracy)

        import onnx

        torch.onnx.export(cnn.eval(), (torch.zeros(1, 3, 8, 8),), str(root / "cnn.onnx"), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
        graph = onnx.load(str(root / "cnn.onnx"))
        for key, value in (("mean", TEACHER_MEAN), ("std", TEACHER_STD)):  # as deit export records them
            graph.metadata_props.add(key=key, value=json.dumps(list(value)))
        onnx.save(graph, str(root / "cnn.onnx"))
        flags["onnx"] = (["--teacher-model", str(root / "cnn.onnx")], accuracy)
    finally:
        torch.set_num_threads(threads)
    return flags


def _last_metrics(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if v != ""}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["torchvision", "hf", "file", "onnx"])
def test_distillation_from_each_foreign_teacher(source, teachers, tmp_path, caplog, capsys):
    flags, teacher_top1 = teachers[source]
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="deit"):
        assert main(["train", *FLAGS, *flags, "--output", str(run)]) == 0, capsys.readouterr().err
    assert "teacher normalisation mean [0.2, 0.2, 0.2] std [0.3, 0.3, 0.3]" in caplog.text  # converted for it
    metrics = _last_metrics(run)
    print(f"{source}: teacher top-1 {teacher_top1:.2f}%, student {metrics['val_acc1']:.2f}%, distillation head "
          f"agrees with the teacher on {metrics['val_dist_teacher_agreement']:.2f}% "
          f"(class head {metrics['val_cls_teacher_agreement']:.2f}%)")
    assert teacher_top1 > 80.0
    assert metrics["train_distillation_loss"] > 0 and metrics["val_dist_teacher_agreement"] > 50.0


def test_a_teacher_without_recorded_statistics_asks_for_them(tmp_path, capsys):
    """A torchvision state dict does not say how its inputs were normalised: one line asks."""
    import torchvision

    torch.save(torchvision.models.get_model("resnet18", num_classes=10).state_dict(), tmp_path / "r.pth")
    code = main(["train", *FLAGS, "--epochs", "1", "--teacher-model", "torchvision:resnet18", "--teacher-checkpoint",
                 str(tmp_path / "r.pth"), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "does not record the normalisation it was trained with: give it with " \
        "--teacher-mean/--teacher-std" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
