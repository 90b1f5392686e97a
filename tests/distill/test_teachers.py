"""Any model as a teacher: one helper turns what a teacher returns into logits (model, loss
and evaluation), a teacher trained with other input statistics is fed its own normalisation
(as timm's distillation task), ``timm:<name>`` teachers work from the command line, and
every hint is a command that works."""
from __future__ import annotations

import csv
import json
import logging
import shlex
from pathlib import Path

import pytest
import torch
from torch import nn

from deit import DeiT, MissingCheckpointError, create_model, save_model
from deit.distill.losses import DistillationLoss, hard_distillation
from deit.distill.teachers import load_teacher
from deit.models.teacher_output import TeacherInputNorm, teacher_logits
from deit.train.engine import evaluate
from tests.helpers import perturb_

SMALL = dict(num_classes=6, d_model=32, image_size=16, patch_size=4, encoder_mlp_d=64, encoder_num_heads=4,
             num_encoder_blocks=2)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # the statistics a typical MNIST CNN was trained with


def timm_deit(model: DeiT) -> nn.Module:
    """timm's VisionTransformerDistilled holding ``model``'s weights (the reference DeiT)."""
    from timm.models.deit import VisionTransformerDistilled

    reference = VisionTransformerDistilled(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                                           mlp_ratio=2, num_classes=6)
    reference.load_state_dict(model.state_dict())
    return reference.eval()


# --- (c) teacher_logits: whatever the teacher returns ------------------------------------------

def test_tensor_teacher_gives_a_loss_target_without_gradient_in_eval_mode():
    teacher = perturb_(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6), nn.Dropout(0.9))).train()
    x = torch.randn(4, 3, 16, 16)
    out = teacher_logits(teacher, x, 6)
    assert not teacher.training  # dropout off: the teacher's deterministic prediction
    torch.testing.assert_close(out, teacher.eval()(x))
    assert not out.requires_grad and not out.is_inference()  # usable by autograd as a target
    student = torch.randn(4, 6, requires_grad=True)
    nn.functional.cross_entropy(student, out.softmax(-1)).backward()
    assert student.grad is not None


def test_tuple_and_hf_style_outputs_give_the_logits():
    class PairTeacher(nn.Module):  # e.g. a model returning (logits, features)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 6)

        def forward(self, x):
            return self.fc(x), x

    teacher = PairTeacher()
    x = torch.randn(3, 5)
    torch.testing.assert_close(teacher_logits(teacher, x, 6), teacher.fc(x))


def test_hf_transformers_deit_teacher_gives_its_logits():
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    config = DeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=6, layer_norm_eps=1e-6)
    teacher = perturb_(DeiTForImageClassificationWithTeacher(config))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = teacher.eval()(pixel_values=x).logits  # HF's fusion of both heads
    torch.testing.assert_close(teacher_logits(teacher.train(), x, 6), reference)


@pytest.mark.parametrize("return_logits_type", ["fusion", "classification", "distillation"])
def test_deit_teacher_in_train_mode_gives_its_eval_output(return_logits_type):
    teacher = perturb_(DeiT(**SMALL, return_logits_type=return_logits_type)).train()
    x = torch.randn(3, 3, 16, 16)
    assert isinstance(teacher(x)[0], tuple)  # in train mode a DeiT returns ((cls, dist), None)
    reference = timm_deit(teacher)
    with torch.no_grad():
        tokens = reference.forward_head(reference.forward_features(x), pre_logits=False)  # timm eval: fusion
        cls_logits = reference.head(reference.forward_features(x)[:, 0])
        dist_logits = reference.head_dist(reference.forward_features(x)[:, 1])
    want = {"fusion": tokens, "classification": cls_logits, "distillation": dist_logits}[return_logits_type]
    out = teacher_logits(teacher, x, 6)
    assert not teacher.training
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_deit_teacher_holding_its_own_teacher_does_not_run_it():
    calls = []
    grand_teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 6))
    grand_teacher.register_forward_hook(lambda *args: calls.append(1))
    teacher = perturb_(DeiT(**SMALL, teacher_model_name=grand_teacher, teacher_inputs="student"))
    x = torch.randn(2, 3, 16, 16)
    out = teacher_logits(teacher, x, 6)
    assert calls == []
    with torch.no_grad():
        torch.testing.assert_close(out, timm_deit(teacher)(x))


def test_wrong_output_size_names_the_shapes():
    with pytest.raises(ValueError, match=r"teacher returned logits of shape \(2, 4\); expected \(batch, 6\)"):
        teacher_logits(nn.Linear(5, 4), torch.randn(2, 5), 6)
    with pytest.raises(ValueError, match="returned a str"):
        teacher_logits(type("Odd", (nn.Module,), {"forward": lambda self, x: "logits"})(), torch.randn(2, 5))


def test_student_loss_and_evaluation_use_one_helper_with_a_distilled_deit_teacher():
    """A DeiT teacher returns (student, teacher) from forward: the DeiT student, the loss of a
    ViT student and evaluation's teacher agreement all take its eval (fusion) logits."""
    teacher = perturb_(DeiT(**SMALL))
    reference = timm_deit(teacher)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 6, (8,))
    with torch.no_grad():
        want = reference(x)  # (B, K), timm's eval output

    student = DeiT(**SMALL, teacher_model_name=teacher, teacher_inputs="student").train()
    (_, _), got = student(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    vit = perturb_(create_model("deit_pico_patch4_32", num_classes=6, image_size=16)).train()
    loss = DistillationLoss(nn.CrossEntropyLoss(), teacher=teacher, distillation_type="hard")
    outputs = vit(x)
    terms = loss.compute(x, outputs, y)
    expected = 0.5 * nn.functional.cross_entropy(outputs, y) + 0.5 * hard_distillation(outputs, want)
    torch.testing.assert_close(terms.total, expected)
    terms.total.backward()  # the teacher's logits are an ordinary target

    loader = [(x, y)]
    metrics = evaluate(vit, loader, device=torch.device("cpu"), teacher=teacher)
    with torch.no_grad():
        agreement = 100.0 * (vit.eval()(x).argmax(1) == want.argmax(1)).float().mean().item()
    assert metrics["teacher_agreement"] == pytest.approx(agreement)
    metrics = evaluate(student, loader, device=torch.device("cpu"), teacher=teacher)
    assert {"cls_teacher_agreement", "dist_teacher_agreement", "teacher_agreement"} <= set(metrics)


# --- input statistics: converted as timm's distillation task ---------------------------------

def test_renormalisation_equals_timm_distillation_teacher():
    """Our per-channel conversion against timm's DistillationTeacher.normalize_input
    (timm/task/distillation.py) for a timm teacher with its pretrained_cfg statistics."""
    import timm
    from timm.task.distillation import DistillationTeacher

    model = perturb_(timm.create_model("test_resnet", num_classes=6))
    reference = DistillationTeacher(model)  # mean/std from model.pretrained_cfg
    student_mean, student_std = (0.2, 0.3, 0.4), (0.25, 0.2, 0.3)
    ours = TeacherInputNorm(model, student_mean=student_mean, student_std=student_std,
                            teacher_mean=model.pretrained_cfg["mean"], teacher_std=model.pretrained_cfg["std"])
    x = torch.randn(4, 3, 16, 16)
    want = reference.normalize_input(x, torch.tensor(student_mean).view(1, 3, 1, 1),
                                     torch.tensor(student_std).view(1, 3, 1, 1))
    torch.testing.assert_close(ours.renormalise(x), want)
    torch.testing.assert_close(teacher_logits(ours, x, 6), reference.eval()(want))


def test_grey_student_data_feeds_an_rgb_teacher_and_rgb_a_grey_one():
    pixels = torch.rand(2, 1, 16, 16)  # [0, 1]
    rgb_mean, rgb_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    net = nn.Identity()
    grey_to_rgb = TeacherInputNorm(net, student_mean=(0.5,), student_std=(0.5,), teacher_mean=rgb_mean,
                                   teacher_std=rgb_std)
    want = (pixels.expand(-1, 3, -1, -1) - torch.tensor(rgb_mean).view(1, 3, 1, 1)) / torch.tensor(rgb_std).view(
        1, 3, 1, 1)
    torch.testing.assert_close(grey_to_rgb.renormalise((pixels - 0.5) / 0.5), want)

    import numpy as np
    from PIL import Image

    rgb = (torch.rand(16, 16, 3) * 255).round()
    grey = np.asarray(Image.fromarray(rgb.numpy().astype("uint8")).convert("L"))  # Pillow's RGB -> L
    grey_pil = torch.from_numpy(grey.astype("float32")).view(1, 1, 16, 16) / 255
    rgb_to_grey = TeacherInputNorm(net, student_mean=rgb_mean, student_std=rgb_std, teacher_mean=(0.0,),
                                   teacher_std=(1.0,))
    x = (rgb.permute(2, 0, 1)[None] / 255 - torch.tensor(rgb_mean).view(1, 3, 1, 1)) / torch.tensor(
        rgb_std).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_grey.renormalise(x), grey_pil, atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="cannot feed 3-channel student inputs to a 2-channel teacher"):
        TeacherInputNorm(net, student_mean=rgb_mean, student_std=rgb_std, teacher_mean=(0.5, 0.5),
                         teacher_std=(0.5, 0.5))


@pytest.fixture(scope="module")
def mnist_style_teacher(tmp_path_factory):
    """A BatchNorm CNN (timm's test_resnet) trained on digits normalised with MNIST's
    statistics, saved as deit train saves a run: weights plus data_config."""
    import timm

    from deit.data import build_transform, load_dataset

    def tensors(split, mean, std):
        data = load_dataset("digits", split)
        data.transform = build_transform(is_train=False, image_size=8, in_channels=1, mean=mean, std=std)
        images, labels = zip(*[data[i] for i in range(len(data))])
        return torch.stack(images), torch.tensor(labels)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small kernels: one thread is faster and immune to a busy machine
    try:
        torch.manual_seed(0)
        x, y = tensors("train", MNIST_MEAN, MNIST_STD)
        model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(3):
            model.train()
            for idx in torch.randperm(len(x)).split(64):
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("mnist_teacher") / "teacher.pth"
    torch.save({"model": model.state_dict(), "data_config": {"dataset": "digits", "image_size": 8, "in_channels": 1,
                                                             "mean": list(MNIST_MEAN), "std": list(MNIST_STD)}}, path)
    return model.eval(), path, tensors


def test_teacher_trained_with_other_statistics_keeps_its_accuracy(mnist_style_teacher, caplog):
    """The student's pipeline normalises with 0.5/0.5; the teacher was trained with MNIST's
    0.1307/0.3081 (recorded in its checkpoint). Re-normalised, the teacher is as accurate on
    the student's batches as on its own pipeline; fed them as they are, it is not."""
    reference, path, tensors = mnist_style_teacher
    own_x, labels = tensors("val", MNIST_MEAN, MNIST_STD)
    student_x, _ = tensors("val", (0.5,), (0.5,))

    def accuracy(logits):
        return 100.0 * (logits.argmax(1) == labels).float().mean().item()

    with torch.no_grad():
        own = accuracy(reference(own_x))
        unconverted = accuracy(reference(student_x))
    with caplog.at_level(logging.INFO, logger="deit"):
        teacher = load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=8, checkpoint=path,
                               input_mean=(0.5,), input_std=(0.5,))
    assert "teacher normalisation mean [0.1307] std [0.3081] (the teacher checkpoint's data_config" in caplog.text
    assert "differs from the student's mean [0.5] std [0.5]" in caplog.text
    converted = accuracy(teacher_logits(teacher, student_x, 10))
    print(f"teacher top-1 on digits val: own pipeline {own:.2f}%, student's batches re-normalised {converted:.2f}%, "
          f"unconverted {unconverted:.2f}%")
    assert own > 90.0, own
    assert converted == pytest.approx(own, abs=0.3), (own, converted)
    assert unconverted < own - 20, (own, unconverted)


def test_teacher_statistics_order_flags_checkpoint_published(mnist_style_teacher, tmp_path, caplog):
    _, path, tensors = mnist_style_teacher
    x, _ = tensors("val", (0.5,), (0.5,))
    x = x[:16]
    # the student's own statistics: nothing to convert, the bare teacher is returned
    same = load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=8, checkpoint=path,
                        input_mean=MNIST_MEAN, input_std=MNIST_STD)
    assert not isinstance(same, TeacherInputNorm)
    # flags win over the checkpoint's data_config
    flagged = load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=8, checkpoint=path,
                           input_mean=(0.5,), input_std=(0.5,), teacher_mean=[0.2], teacher_std=[0.4])
    torch.testing.assert_close(flagged.renormalise(x), (x * 0.5 + 0.5 - 0.2) / 0.4)
    with pytest.raises(ValueError, match=r"has 3 values but the teacher has 1 input channel.*--teacher-mean"):
        load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=8, checkpoint=path,
                     input_mean=(0.5,), input_std=(0.5,), teacher_mean=[0.2, 0.3, 0.4], teacher_std=[0.4] * 3)

    # a registered variant with published weights, from a file without data_config: its
    # pretrained configuration (ImageNet mean/std, 3 channels) for a grey student
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    rgb = perturb_(create_model("deit_tiny_patch16_224", num_classes=10, image_size=16))
    save_model(rgb, tmp_path / "tiny.safetensors")
    grey_x = torch.randn(2, 1, 16, 16)
    with caplog.at_level(logging.INFO, logger="deit"):
        teacher = load_teacher("deit_tiny_patch16_224", num_classes=10, in_channels=1, image_size=16,
                               checkpoint=tmp_path / "tiny.safetensors", input_mean=(0.5,), input_std=(0.5,))
    assert "the pretrained configuration of deit_tiny_patch16_224, 3 channel(s)" in caplog.text
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    want_input = ((grey_x * 0.5 + 0.5).expand(-1, 3, -1, -1) - mean) / std
    with torch.no_grad():
        torch.testing.assert_close(teacher_logits(teacher, grey_x, 10), rgb.eval()(want_input), rtol=1e-4, atol=1e-4)

    # a small-image variant has no published statistics: the student's are assumed
    pico = create_model("deit_pico_distilled_patch4_32", num_classes=10, image_size=16, in_channels=1)
    save_model(pico, tmp_path / "pico.safetensors")
    bare = load_teacher("deit_pico_distilled_patch4_32", num_classes=10, in_channels=1, image_size=16,
                        checkpoint=tmp_path / "pico.safetensors", input_mean=(0.3,), input_std=(0.4,))
    assert not isinstance(bare, TeacherInputNorm)


# --- a registered ResNet as the teacher ---------------------------------------------------------

GREY_28 = {"image_size": 28, "in_channels": 1, "mean": [0.5], "std": [0.5]}  # the student's data


def _teacher_of_train_command(argv: list[str]) -> nn.Module:
    """The teacher ``deit train ARGV`` runs with (flags -> config -> deit.train.run.build_teacher),
    built without training, for 10 classes of grey 28 px data."""
    from deit.cli import build_parser
    from deit.train.run import build_teacher
    from deit.train.settings import load_config, overrides_from_args

    config = load_config(None, overrides_from_args(build_parser().parse_args(["train", *argv])))
    return build_teacher(config, 10, dict(GREY_28))


def test_resnet_teacher_saved_by_the_library_loads_as_the_cli_loads_it(tmp_path):
    reference = perturb_(create_model("resnet14_32", num_classes=10, in_channels=1)).eval()
    path = save_model(reference, tmp_path / "resnet14_32.safetensors", data_config=GREY_28)
    teacher = _teacher_of_train_command(["--dataset", "digits", "--teacher-model", "resnet14_32",
                                         "--teacher-checkpoint", str(path), "--distillation-type", "hard"])
    assert not isinstance(teacher, TeacherInputNorm)  # recorded statistics = the student's: nothing to convert
    assert teacher.teacher_name == "resnet14_32" and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(teacher_logits(teacher, x, 10), reference(x))
    # the seed API resolves the same name from a checkpoint directory
    student = DeiT(**{**SMALL, "num_classes": 10, "image_size": 28}, in_channels=1,
                   teacher_model_name="resnet14_32", checkpoint_dir=tmp_path)
    assert type(student.teacher).__name__ == "ResNet" and student.teacher.teacher_name == "resnet14_32"
    assert not any(k.startswith("teacher") for k in student.state_dict())


def test_convnext_file_for_a_resnet_teacher_is_refused_naming_the_path(tmp_path):
    from deit import CheckpointError

    wrong = save_model(create_model("convnext_atto_32", num_classes=10, in_channels=1), tmp_path / "teacher.pth")
    with pytest.raises(CheckpointError) as info:
        _teacher_of_train_command(["--dataset", "digits", "--teacher-model", "resnet14_32", "--teacher-checkpoint",
                                   str(wrong), "--distillation-type", "hard"])
    message = str(info.value)
    assert f"checkpoint {wrong} (the file says it holds convnext_atto_32) does not fit the expected architecture " \
           "teacher resnet14_32 with num_classes=10, in_channels=1" in message
    assert "missing: conv1.weight" in message and "deit train --model resnet14_32" in message


# --- hints are commands that work --------------------------------------------------------------

def _commands(message: str) -> list[list[str]]:
    """Every ``deit train …`` command a message suggests, as argument lists."""
    out = []
    for part in message.split("deit train ")[1:]:
        out.append(["train", *shlex.split(part.split(",")[0].split(" then ")[0])])
    return out


def test_missing_teacher_hints_are_commands_that_work(tmp_path):
    from deit.cli import build_parser
    from deit.train.settings import load_config, overrides_from_args

    for name in ("convnext_atto_32", "resnet14_32", "timm:resnet10t"):
        with pytest.raises(MissingCheckpointError) as info:
            load_teacher(name, num_classes=10, in_channels=1, image_size=16)
        message = str(info.value)
        assert "--checkpoint-dir" not in message and "--teacher-checkpoint" in message
        assert "deit train --model timm:" not in message
        for argv in _commands(message):
            args = build_parser().parse_args(argv)  # argparse exits on an unknown flag
            load_config(None, overrides_from_args(args))  # and the settings are valid
    assert _commands(str(info.value)) == []  # timm: a timm command, not a deit train one
    assert "torch.save(model.state_dict(), 'timm-resnet10t.pth')" in str(info.value)


def test_config_teacher_statistics_flags():
    from deit.cli import build_parser
    from deit.train.settings import load_config, overrides_from_args

    args = build_parser().parse_args(["train", "--teacher-model", "timm:resnet10t", "--teacher-mean", "0.485", "0.456",
                                      "0.406", "--teacher-std", "0.229", "0.224", "0.225"])
    config = load_config(None, overrides_from_args(args))
    assert config.teacher_mean == [0.485, 0.456, 0.406] and config.teacher_std == [0.229, 0.224, 0.225]
    with pytest.raises(ValueError, match="give both.*--teacher-std"):
        load_config(None, {"teacher_model": "resnet20_32", "teacher_mean": [0.5]})
    with pytest.raises(ValueError, match=r"teacher_std=\[0.0\] is invalid.*> 0"):
        load_config(None, {"teacher_model": "resnet20_32", "teacher_mean": [0.5], "teacher_std": [0.0]})
    with pytest.raises(ValueError, match="timm has no architecture 'no_such_net'"):
        load_teacher("timm:no_such_net", num_classes=10, in_channels=1, image_size=16)


# --- through the command line ------------------------------------------------------------------

DIGITS_FLAGS = ["--dataset", "digits", "--image-size", "16", "--epochs", "1", "--warmup-epochs", "0", "--batch-size",
                "64", "--train-subset", "128", "--val-subset", "64", "--no-model-ema", "--mixup", "0", "--cutmix", "0",
                "--reprob", "0", "--auto-augment", "none", "--repeated-aug", "1", "--no-progress"]


def _last_metrics(run: Path) -> dict[str, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {k: float(v) for k, v in list(csv.DictReader(f))[-1].items() if v != ""}


@pytest.mark.slow
@pytest.mark.parametrize("student", ["deit_pico_distilled_patch4_32", "deit_pico_patch4_32"])
def test_distilled_deit_teacher_trains_a_deit_and_a_vit_student(student, tmp_path, capsys):
    from deit.cli import main
    from deit.data import load_dataset

    teacher = perturb_(create_model("deit_pico_distilled_patch4_32", num_classes=10, in_channels=1, image_size=16))
    save_model(teacher, tmp_path / "T.pth")
    run = tmp_path / "run"
    assert main(["train", *DIGITS_FLAGS, "--model", student, "--teacher-model", "deit_pico_distilled_patch4_32",
                 "--teacher-checkpoint", str(tmp_path / "T.pth"), "--distillation-type", "hard",
                 "--output", str(run)]) == 0
    metrics = _last_metrics(run)
    assert 0.0 <= metrics["val_teacher_agreement"] <= 100.0
    if student.startswith("deit_pico_distilled"):
        assert {"val_cls_teacher_agreement", "val_dist_teacher_agreement"} <= set(metrics)
    assert metrics["train_distillation_loss"] > 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.pth"), "--output", str(tmp_path / "eval")]) == 0
    assert "top-1" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "best-eval.json").read_text())["metrics"]
    assert saved["count"] == len(load_dataset("digits", "val")) and 0.0 <= saved["acc1"] <= 100.0


def test_timm_teacher_from_the_command_line(tmp_path, caplog):
    """``--teacher-model timm:resnet10t`` with a timm-format file (a plain state dict)."""
    import timm

    from deit.cli import main

    reference = perturb_(timm.create_model("resnet10t", num_classes=10, in_chans=1))
    torch.save(reference.state_dict(), tmp_path / "resnet10t.pth")
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="deit"):
        assert main(["train", *DIGITS_FLAGS, "--model", "deit_pico_distilled_patch4_32", "--teacher-model",
                     "timm:resnet10t", "--teacher-checkpoint", str(tmp_path / "resnet10t.pth"),
                     "--distillation-type", "soft", "--output", str(run)]) == 0
    # a 1-channel timm model: timm's (RGB) statistics do not describe it, the student's are kept
    assert "re-normalised" not in caplog.text
    metrics = _last_metrics(run)
    assert 0.0 <= metrics["val_dist_teacher_agreement"] <= 100.0 and metrics["train_distillation_loss"] > 0


# --- a teacher's inputs are declared, never assumed -------------------------------------------

def test_a_module_teacher_must_say_which_inputs_it_takes(mnist_style_teacher):
    """Given as it is, a CNN trained on MNIST's statistics would be fed the student's [-1, 1]
    batches without a word; the module is refused until its inputs are declared: converted
    (``TeacherInputNorm``) or confirmed to be the student's (``inputs="student"``)."""
    reference, _, tensors = mnist_style_teacher
    student_x, labels = tensors("val", (0.5,), (0.5,))
    grey = dict(num_classes=10, d_model=32, image_size=8, patch_size=4, in_channels=1, encoder_mlp_d=64,
                encoder_num_heads=4, num_encoder_blocks=1)
    with pytest.raises(ValueError, match=r"inputs='student'.*TeacherInputNorm"):
        DeiT(**grey, teacher_model_name=reference)
    with pytest.raises(ValueError, match=r"inputs='student'.*TeacherInputNorm"):
        DeiT(**grey).set_teacher(reference)
    with pytest.raises(ValueError, match="inputs='rgb' is invalid"):
        DeiT(**grey).set_teacher(reference, inputs="rgb")

    def accuracy(model):
        _, teacher_out = model.eval()(student_x)
        return 100.0 * (teacher_out.argmax(1) == labels).float().mean().item()

    from deit import TeacherInputNorm as PublicTeacherInputNorm

    converted = DeiT(**grey, teacher_model_name=PublicTeacherInputNorm(
        reference, student_mean=(0.5,), student_std=(0.5,), teacher_mean=MNIST_MEAN, teacher_std=MNIST_STD))
    confirmed = DeiT(**grey, teacher_model_name=reference, teacher_inputs="student")  # the user's word, wrong here
    own_x, _ = tensors("val", MNIST_MEAN, MNIST_STD)
    with torch.no_grad():
        own = 100.0 * (reference(own_x).argmax(1) == labels).float().mean().item()
    assert accuracy(converted) == pytest.approx(own, abs=0.3)
    assert accuracy(confirmed) < own - 20


def test_a_teacher_trained_at_another_size_is_fed_batches_of_its_size(mnist_style_teacher, tmp_path, caplog):
    """The teacher's checkpoint records the side it was trained at (8 px here); a student
    trained at 12 px gets its batches resized back to 8 px for the teacher, with a line saying
    so, and the teacher keeps its accuracy."""
    reference, path, tensors = mnist_style_teacher
    own_x, labels = tensors("val", MNIST_MEAN, MNIST_STD)
    student_x = nn.functional.interpolate(own_x, size=(12, 12), mode="bicubic", align_corners=False,
                                          antialias=True)  # (B, 1, 12, 12): the same images at 12 px

    def accuracy(logits):
        return 100.0 * (logits.argmax(1) == labels).float().mean().item()

    seen = []
    with caplog.at_level(logging.INFO, logger="deit"):
        teacher = load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=12, checkpoint=path,
                               input_mean=MNIST_MEAN, input_std=MNIST_STD)
    assert f"trained on 8 px images ({path} records it); the student's 12 px batches are resized to 8 px" \
        in caplog.text
    assert isinstance(teacher, TeacherInputNorm) and teacher.input_size == 8
    teacher.teacher.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    resized = accuracy(teacher_logits(teacher, student_x, 10))
    with torch.no_grad():
        own, unresized = accuracy(reference(own_x)), accuracy(reference(student_x))
    print(f"teacher top-1: own 8 px {own:.2f}%, 12 px batches resized {resized:.2f}%, fed as they are "
          f"{unresized:.2f}%")
    assert seen == [(8, 8)]
    assert resized == pytest.approx(own, abs=1.5)
    # the seed API's loader (no statistics given) resizes as well
    bare = load_teacher("timm:test_resnet", num_classes=10, in_channels=1, image_size=12, checkpoint=path)
    assert isinstance(bare, TeacherInputNorm) and bare.input_size == 8
    torch.testing.assert_close(bare.renormalise(student_x), nn.functional.interpolate(
        student_x, size=(8, 8), mode="bicubic", align_corners=False, antialias=True))
