"""The bad-input battery: every case ends in a clear error that names the
offending thing and what was expected — a ``ValueError``-family exception from the Python
API, or exit code 2 with a one-line ``deit <command>: error: ...`` from the CLI — never a
torch traceback, and never a corrupted file that was already written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from deit import create_model, save_model
from deit.cli import main
from deit.data import load_dataset
from deit.train.settings import TrainConfig
from deit.weights.layouts import CheckpointError
from tests.helpers import copy_run

# A seconds-long recipe on digits (8x8 upsampled to 16 px).
TINY = ["--dataset", "digits", "--image-size", "16", "--model", "deit_pico_patch4_32", "--epochs", "2",
        "--warmup-epochs", "0", "--batch-size", "64", "--train-subset", "128", "--no-progress", "--no-model-ema",
        "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--auto-augment", "none", "--repeated-aug", "1"]

TINY_YAML = dict(dataset="digits", image_size=16, model="deit_pico_patch4_32", epochs=2, warmup_epochs=0,
                 batch_size=64, train_subset=128, progress=False, model_ema=False, mixup=0.0, cutmix=0.0, reprob=0.0,
                 auto_augment=None, repeated_aug=1)


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert it failed cleanly; return its one-line message."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("deit ")]
    assert len(lines) == 1, err
    return lines[0]


# --- an image folder; the trained run comes from tests/conftest.py ----------------------------

def write_folder(root: Path, classes=("0", "1", "2"), per_class=(8, 3)) -> Path:
    """An ImageFolder of 16 px grey PNGs made from digits: root/{train,val}/<class>/*.png."""
    digits = load_dataset("digits", "train")
    for split, count in zip(("train", "val"), per_class):
        for name in classes if count else ():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = digits.images[digits.targets_array == int(name)][:count] if name.isdigit() else \
                digits.images[:count]
            for i, array in enumerate(images):
                Image.fromarray(array).resize((16, 16)).save(folder / f"{i}.png")
    return root


# --- 1. model inputs (Python API) -------------------------------------------------------

MODEL_INPUTS: dict[str, tuple[Callable[[], torch.Tensor], str]] = {
    "wrong channel count": (lambda: torch.zeros(2, 3, 32, 32), r"expected 1 input channel\(s\).*got 3"),
    "wrong spatial size": (lambda: torch.zeros(2, 1, 28, 28), r"expected images of 32x32 pixels.*got 28x28"),
    "non-float dtype": (lambda: torch.zeros(2, 1, 32, 32, dtype=torch.uint8),
                        r"expected a floating-point image tensor, got dtype torch.uint8"),
    "NaN pixels": (lambda: torch.zeros(2, 1, 32, 32).index_fill_(0, torch.tensor([1]), float("nan")),
                   r"1024 NaN or Inf value\(s\).*expected finite pixel values"),
    "Inf pixels": (lambda: torch.full((1, 1, 32, 32), float("inf")), r"NaN or Inf.*expected finite"),
    "empty batch": (lambda: torch.zeros(0, 1, 32, 32), r"empty batch.*expected at least one image"),
    "missing batch axis": (lambda: torch.zeros(1, 32, 32), r"expected a 4-D image batch of shape \(batch, 1, 32, 32\)"),
}


@pytest.mark.parametrize("model_name", ["deit_pico_distilled_patch4_32", "convnext_atto_32"])
@pytest.mark.parametrize("case", list(MODEL_INPUTS))
def test_model_input(case, model_name):
    make, pattern = MODEL_INPUTS[case]
    model = create_model(model_name, num_classes=10, in_channels=1).eval()
    if model_name.startswith("convnext"):  # no fixed image size; its own wording for the layout
        if case == "wrong spatial size":
            pytest.skip("a ConvNeXt takes any size above its minimum")
        pattern = {"wrong channel count": r"expected an image batch of shape \(batch, 1, H, W\), got \(2, 3",
                   "missing batch axis": r"expected an image batch of shape \(batch, 1, H, W\), got \(1, 32, 32\)",
                   }.get(case, pattern)
    with pytest.raises(ValueError, match=pattern):
        model(make())


# --- 2. files in an image folder ---------------------------------------------------------

def _truncated_png(path: Path) -> None:
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:40])


BAD_FILES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated PNG": ("bad.png", _truncated_png),
    "corrupt bytes": ("bad.jpg", lambda p: p.write_bytes(np.random.default_rng(0).bytes(600))),
    "not an image": ("bad.png", lambda p: p.write_text("this is a text file, not a picture\n")),
    "zero-byte file": ("bad.jpg", lambda p: p.write_bytes(b"")),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_file_in_image_folder_fails_naming_it(case, tmp_path, capsys):
    root = write_folder(tmp_path / "folder")
    name, make = BAD_FILES[case]
    make(root / "train" / "1" / name)
    message = cli_error(capsys, "train", *TINY, "--batch-size", "8", "--dataset", str(root), "--output", str(tmp_path / "run"))
    assert str(root / "train" / "1" / name) in message and "--bad-images skip" in message


def test_unreadable_files_are_skipped_and_counted_with_the_skip_policy(tmp_path, caplog):
    root = write_folder(tmp_path / "folder")
    bad = []
    for i, (name, make) in enumerate(BAD_FILES.values()):
        bad.append(root / "train" / str(i % 3) / f"{i}-{name}")
        make(bad[-1])
    with caplog.at_level(logging.WARNING):
        code = main(["train", *TINY, "--batch-size", "8", "--dataset", str(root), "--bad-images", "skip", "--output", str(tmp_path / "run")])
    assert code == 0
    assert "4 unreadable image file(s) skipped" in caplog.text
    for path in bad:
        assert f"skipping unreadable image {path}" in caplog.text
    assert (tmp_path / "run" / "last.pth").is_file()


def test_unreadable_validation_files_are_not_counted_by_the_runs_evaluation(tmp_path):
    """With --bad-images skip, the validation of a run counts each readable file once and a
    skipped one not at all (as deit eval), not a substitute in its place."""
    from deit.train import distributed
    from deit.train.run import build_data
    from deit.train.settings import load_config

    root = write_folder(tmp_path / "folder")  # 3 classes x 3 readable validation images
    for i, (name, make) in enumerate(BAD_FILES.values()):
        make(root / "val" / str(i % 3) / f"{i}-{name}")
    config = load_config(None, {"dataset": str(root), "bad_images": "skip", "batch_size": 8, "recipe": "paper",
                                "output": str(tmp_path / "run")})
    _, val_loader, _, _ = build_data(config, distributed.detect())
    counted = sum(len(batch[1]) for batch in val_loader if batch is not None)
    assert counted == 9


def test_empty_class_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "folder")
    (root / "train" / "3").mkdir()
    (root / "val" / "3").mkdir()
    message = cli_error(capsys, "train", *TINY, "--batch-size", "8", "--dataset", str(root), "--output", str(tmp_path / "run"))
    assert "3" in message and "Every class folder needs at least one image file" in message


def test_train_val_class_mismatch(tmp_path, capsys):
    root = write_folder(tmp_path / "folder")
    write_folder(root, classes=("7",), per_class=(0, 2))  # val/7 only
    message = cli_error(capsys, "train", *TINY, "--batch-size", "8", "--dataset", str(root), "--output", str(tmp_path / "run"))
    assert "different classes" in message and "only in val/: ['7']" in message


# --- 3. checkpoints ------------------------------------------------------------------------

def test_truncated_checkpoint(trained_run, tmp_path, capsys):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes((trained_run / "last.pth").read_bytes()[:5000])
    message = cli_error(capsys, "eval", "--checkpoint", str(bad))
    assert str(bad) in message


def test_random_bytes_checkpoint(tmp_path, capsys):
    bad = tmp_path / "random.pth"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    message = cli_error(capsys, "predict", "--checkpoint", str(bad), str(bad))
    assert str(bad) in message


def test_truncated_safetensors(tmp_path, capsys):
    good = save_model(create_model("deit_pico_patch4_32"), tmp_path / "m.safetensors")
    good.write_bytes(good.read_bytes()[:300])
    message = cli_error(capsys, "info", str(good))
    assert str(good) in message and "truncated" in message


def test_checkpoint_of_another_architecture(tmp_path):
    path = save_model(create_model("convnext_atto_32", num_classes=10), tmp_path / "convnext.pth")
    model = create_model("deit_pico_patch4_32", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from deit.weights.layouts import load_pretrained

    with pytest.raises(CheckpointError, match=r"holds convnext_atto_32\) does not fit .*deit_pico_patch4_32"):
        load_pretrained(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_wrong_num_classes_without_finetune(trained_run, tmp_path, capsys):
    """A 10-class checkpoint evaluated on a 3-class folder: an error pointing to --finetune,
    not accuracies over unrelated labels."""
    root = write_folder(tmp_path / "folder")
    message = cli_error(capsys, "eval", "--checkpoint", str(trained_run / "last.pth"), "--dataset", str(root),
                        "--output", str(tmp_path / "eval"))
    assert "predicts 10 classes" in message and "has 3" in message and "--finetune" in message
    assert not (tmp_path / "eval").exists()


def test_eval_finds_a_relative_training_folder_from_another_directory(tmp_path, monkeypatch, capsys):
    """A run trained on ``--dataset animals`` from the folder's parent records its absolute path:
    deit eval without --dataset finds it from anywhere; once it is gone, the message says the
    checkpoint's record does not exist and to pass --dataset, a flag the user did not pass. A
    checkpoint recording only the relative path still evaluates from where it was trained."""
    write_folder(tmp_path / "animals")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--batch-size", "8", "--dataset", "animals", "--output", "runs/a"]) == 0
    checkpoint = str(tmp_path / "runs" / "a" / "best.pth")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", checkpoint, "--output", "eval"]) == 0
    assert f"on {tmp_path / 'animals'} (9 images)" in capsys.readouterr().out
    (tmp_path / "animals").rename(tmp_path / "moved")
    message = cli_error(capsys, "eval", "--checkpoint", checkpoint, "--output", "eval")
    assert f"records its data set as the image folder {tmp_path / 'animals'}" in message
    assert "does not exist here; pass --dataset PATH" in message and "(--dataset)" not in message
    (tmp_path / "moved").rename(tmp_path / "animals")
    state = torch.load(checkpoint, weights_only=True)  # as runs wrote it before recording the absolute path
    del state["data_config"]["dataset_path"]
    torch.save(state, checkpoint)
    message = cli_error(capsys, "eval", "--checkpoint", checkpoint, "--output", "eval")
    assert "records its data set as 'animals'" in message and "pass --dataset PATH" in message
    assert str(tmp_path / "elsewhere") in message and "(--dataset)" not in message
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", checkpoint, "--output", "eval"]) == 0
    assert "on animals (9 images)" in capsys.readouterr().out


def test_missing_teacher_weights(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "teacher.pth"
    message = cli_error(capsys, "train", *TINY, "--model", "deit_pico_distilled_patch4_32", "--teacher-model",
                        "convnext_atto_32", "--teacher-checkpoint", str(missing), "--distillation-type", "hard",
                        "--output", str(tmp_path / "run"))
    assert str(missing) in message


def test_teacher_student_class_count_mismatch(tmp_path, capsys):
    teacher = save_model(create_model("convnext_atto_32", num_classes=3, in_channels=1), tmp_path / "t3.pth")
    message = cli_error(capsys, "train", *TINY, "--model", "deit_pico_distilled_patch4_32", "--teacher-model",
                        "convnext_atto_32", "--teacher-checkpoint", str(teacher), "--distillation-type", "hard",
                        "--output", str(tmp_path / "run"))
    assert str(teacher) in message and "num_classes=10" in message


# --- 4. configuration values, from the command line and from YAML -----------------------

CLI_CONFIGS = {
    "negative lr": (["--lr", "-0.1"], "lr=-0.1 is invalid"),
    "unknown model": (["--model", "deit_gigantic"], "deit_gigantic"),
    "unknown distillation type": (["--distillation-type", "fuzzy"], "distillation_type='fuzzy'"),
    "batch size 0": (["--batch-size", "0"], "batch_size=0 is invalid; expected a positive integer"),
    "mixup prob above 1": (["--mixup-prob", "1.5"], "mixup_prob=1.5 is invalid; expected a number in [0.0, 1.0]"),
    "odd batch with Mixup": (["--batch-size", "33", "--mixup", "0.8"],
                             "batch_size=33 (--batch-size) is odd, but Mixup/CutMix"),
}


@pytest.mark.parametrize("case", list(CLI_CONFIGS))
def test_invalid_config_on_the_command_line(case, tmp_path, capsys):
    flags, expected = CLI_CONFIGS[case]
    message = cli_error(capsys, "train", *TINY, *flags, "--output", str(tmp_path / "run"))
    assert expected in message
    assert not (tmp_path / "run" / "last.pth").exists()


YAML_CONFIGS = {
    "mixup prob above 1": ({"mixup_prob": 1.2}, "mixup_prob=1.2 is invalid"),
    "batch size 0": ({"batch_size": 0}, "batch_size=0 is invalid"),
    "negative lr": ({"lr": -1e-3}, "lr=-0.001 is invalid"),
    "unknown key": ({"learning_rate": 1e-3}, "learning_rate"),
    "wrong type": ({"epochs": "many"}, "epochs"),
    "unknown kl reduction": ({"kl_reduction": "sum"}, "kl_reduction='sum'"),
}


@pytest.mark.parametrize("case", list(YAML_CONFIGS))
def test_invalid_config_in_yaml(case, tmp_path, capsys):
    settings, expected = YAML_CONFIGS[case]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_YAML, **settings}))
    message = cli_error(capsys, "train", "--config", str(config), "--output", str(tmp_path / "run"))
    assert expected in message


TEACHER_ONLY = {  # a setting of the teacher, given without --teacher-model: its flags and its YAML values
    "teacher_checkpoint": (["--teacher-checkpoint", "t.pth"], {"teacher_checkpoint": "t.pth"}),
    "teacher_mean": (["--teacher-mean", "0.5", "--teacher-std", "0.2"], {"teacher_mean": [0.5], "teacher_std": [0.2]}),
}


@pytest.mark.parametrize("name", list(TEACHER_ONLY))
def test_a_teacher_setting_without_a_teacher_is_refused(name, tmp_path, capsys):
    """From flags, a --config file and Python alike: one line naming the setting's flag and key
    and --teacher-model, where it used to be ignored (no teacher, nothing to apply it to)."""
    flags, settings = TEACHER_ONLY[name]
    from_flags = cli_error(capsys, "train", *TINY, *flags, "--output", str(tmp_path / "run"))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_YAML, **settings}))
    from_yaml = cli_error(capsys, "train", "--config", str(config), "--output", str(tmp_path / "run"))
    with pytest.raises(ValueError) as raised:
        TrainConfig(**settings).validate()
    for message in (from_flags, from_yaml, str(raised.value)):
        assert f"{name}=" in message and "needs a teacher" in message and "--teacher-model" in message
        assert f"--{name.replace('_', '-')}" in message and f"{name}: in a --config file" in message
    assert not (tmp_path / "run").exists()


def test_yaml_that_is_not_a_mapping(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("- just\n- a list\n")
    message = cli_error(capsys, "train", "--config", str(config), "--output", str(tmp_path / "run"))
    assert str(config) in message


# --- 5. output directory and resuming -----------------------------------------------------

def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    message = cli_error(capsys, "train", *TINY, "--output", str(blocker / "run"))
    assert str(blocker / "run") in message and "not writable" in message
    assert blocker.read_text() == "not a directory"


def test_existing_run_is_not_overwritten(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    before = (run / "last.pth").read_bytes()
    message = cli_error(capsys, "train", *TINY, "--output", str(run))
    assert "already holds a run" in message and "--resume" in message
    assert (run / "last.pth").read_bytes() == before


def test_resume_with_a_changed_model_config(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    before = (run / "last.pth").read_bytes()
    metrics = (run / "metrics.csv").read_text()
    message = cli_error(capsys, "train", *TINY, "--model", "deit_nano_patch4_32", "--epochs", "3",
                        "--output", str(run), "--resume")
    assert "cannot resume with a changed model configuration" in message and "deit_nano_patch4_32" in message
    assert (run / "last.pth").read_bytes() == before
    assert (run / "metrics.csv").read_text() == metrics


# --- 6. prediction inputs --------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing file", "not an image", "a directory"])
def test_predict_on_bad_image_paths(case, trained_run, tmp_path, capsys):
    target = {"missing file": tmp_path / "missing.png", "not an image": tmp_path / "notes.png",
              "a directory": tmp_path}[case]
    if case == "not an image":
        target.write_text("hello")
    # a bad file is reported on its own line and the exit code is 1 (the others would still be predicted)
    assert main(["predict", "--checkpoint", str(trained_run / "last.pth"), str(target)]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("deit predict: error:")]
    assert len(lines) == 1 and str(target) in lines[0] and "Traceback" not in err, err
