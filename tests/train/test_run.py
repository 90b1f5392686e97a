"""The training system end to end on real data (scikit-learn's digits, seconds per run):
accuracy, distillation's effect, exact resume (also after kill -9), torchrun, finetune,
non-finite losses, eval and predict."""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deit.train.engine import NonFiniteLossError
from deit.train.run import train
from deit.train.settings import load_config, recipe_values

# A light recipe that learns digits (8x8 upsampled to 16 px) in seconds: the paper's heavy
# augmentation is meant for 300 ImageNet epochs, not 30 epochs of 1,437 images. Named on top
# of the paper's defaults (recipe paper), not the small-data recipe deit train would choose
# for digits, whose values are tuned elsewhere (benchmarks/small_data_sweep.md).
DIGITS = dict(dataset="digits", image_size=16, batch_size=64, progress=False, model_ema=False, mixup=0.0,
              cutmix=0.0, reprob=0.0, auto_augment=None, scale=(1.0, 1.0), warmup_epochs=1, repeated_aug=1,
              drop_path=0.0, recipe="paper")


def run(output: Path, **settings):
    return train(load_config(None, {**DIGITS, "output": str(output), **settings}))


def last_row(output: Path) -> dict[str, float]:
    with open(output / "metrics.csv", newline="") as f:
        row = list(csv.DictReader(f))[-1]
    return {k: float(v) for k, v in row.items()}


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    """A ConvNeXt teacher trained on digits (about 95 % after 4 epochs); its best checkpoint."""
    out = tmp_path_factory.mktemp("teacher")
    result = train(load_config(None, {**DIGITS, "model": "convnext_atto_32", "epochs": 4, "lr": 4e-3,
                                      "output": str(out / "run")}))
    assert result.best_acc1 >= 90.0, f"teacher reached only {result.best_acc1:.1f}%"
    return out / "run" / "best.pth"


@pytest.mark.slow
def test_distilled_student_on_digits_reaches_90_percent(digits_teacher, tmp_path):
    student = run(tmp_path / "student", model="deit_pico_distilled_patch4_32", teacher_model="convnext_atto_32",
                  teacher_checkpoint=str(digits_teacher), distillation_type="hard", epochs=20, lr=5e-3)
    s = student.final
    assert s["val_acc1"] >= 90.0 and s["val_cls_acc1"] >= 85.0 and s["val_dist_acc1"] >= 85.0, s
    assert s["train_distillation_loss"] > 0
    out = tmp_path / "student"
    for name in ("last.pth", "best.pth", "metrics.csv", "config.yaml", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    # the teacher never entered the student's checkpoint
    state = torch.load(out / "best.pth", weights_only=True)
    assert not any(k.startswith(("stem", "stages", "teacher")) for k in state["model"])


@pytest.mark.slow
def test_distillation_head_follows_the_teacher_not_the_labels(digits_teacher, tmp_path):
    """The distillation head learns the teacher's decisions (paper §4-5). To make them
    distinguishable from the labels, the teacher's outputs for classes 1 and 7 are swapped:
    the distilled student's dist head then agrees with the teacher far more often than the
    control (trained on labels alone) or than its own class head does."""
    from deit import save_model
    from deit.deploy.predict import load_for_inference

    teacher, _ = load_for_inference(digits_teacher)
    with torch.no_grad():
        for param in (teacher.head.fc.weight, teacher.head.fc.bias):
            param[[1, 7]] = param[[7, 1]].clone()
    save_model(teacher, tmp_path / "swapped.safetensors")
    common = dict(teacher_model="convnext_atto_32", teacher_checkpoint=str(tmp_path / "swapped.safetensors"),
                  epochs=20, lr=5e-3)
    s = run(tmp_path / "student", model="deit_pico_distilled_patch4_32", distillation_type="hard", **common).final
    c = run(tmp_path / "control", model="deit_pico_patch4_32", distillation_type="none", **common).final
    assert s["val_dist_teacher_agreement"] > c["val_teacher_agreement"] + 5, (s, c)
    assert s["val_dist_teacher_agreement"] > s["val_cls_teacher_agreement"] + 5, s
    assert s["val_cls_acc1"] > s["val_dist_acc1"]  # the class head keeps following the true labels


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


RESUME = dict(model="deit_pico_distilled_patch4_32", epochs=3, train_subset=640, lr=5e-3, mixup=0.8, cutmix=1.0,
              auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=3, drop_path=0.1, model_ema=True,
              warmup_epochs=1)


@pytest.mark.slow
def test_stop_and_resume_gives_identical_weights_and_metrics(tmp_path):
    run(tmp_path / "straight", **RESUME)
    run(tmp_path / "split", **RESUME, stop_after_epochs=1)
    assert last_row(tmp_path / "split")["epoch"] == 0
    run(tmp_path / "split", **RESUME, resume=True)
    straight, split = _weights(tmp_path / "straight" / "last.pth"), _weights(tmp_path / "split" / "last.pth")
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    a, b = last_row(tmp_path / "straight"), last_row(tmp_path / "split")
    for key in a:
        if not key.startswith("train_images_per_s") and not key.startswith("train_time") and key != "elapsed_s":
            assert a[key] == b[key], key
    ema_a = torch.load(tmp_path / "straight" / "last.pth", weights_only=True)["ema"]
    ema_b = torch.load(tmp_path / "split" / "last.pth", weights_only=True)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deit", "train", *args]


def _flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, tuple):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, "none" if value is None else str(value)]
    return flags


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    settings = {**DIGITS, **RESUME, "num_workers": 1}
    straight = subprocess.run(_cli(*_flags(settings), "--output", str(tmp_path / "straight")),
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*_flags(settings), "--output", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "last.pth").exists()
    assert not list(out.glob(".*.tmp")) or all(p.stat().st_size >= 0 for p in out.glob(".*.tmp"))
    torch.load(out / "last.pth", weights_only=True)  # never half-written
    resumed = subprocess.run(_cli(*_flags(settings), "--output", str(out), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(tmp_path / "straight" / "last.pth"), _weights(out / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert last_row(tmp_path / "straight")["val_acc1"] == last_row(out)["val_acc1"]


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    settings = {**DIGITS, "model": "deit_pico_patch4_32", "epochs": 2, "lr": 5e-3, "batch_size": 32}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531", "-m", "deit",
           "train", *_flags(settings), "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files.count("last.pth") == 1 and "metrics.csv" in files
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["batch_size"] == 32
    state = torch.load(out / "last.pth", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2  # one RNG state per rank
    assert result.stdout.count("done:") == 1  # only rank 0 reports
    # distributed evaluation covered the validation set exactly once: a single-process
    # evaluation of the saved weights gives the same accuracy
    from deit.deploy.predict import evaluate_checkpoint

    report = evaluate_checkpoint(out / "last.pth", output=tmp_path / "eval")
    assert report.metrics["count"] == 360
    assert report.metrics["acc1"] == pytest.approx(float(rows[-1]["val_acc1"]), abs=1e-9)


@pytest.mark.slow
def test_finetune_with_distillation_on_another_number_of_classes(digits_teacher, tmp_path):
    from PIL import Image

    from deit import create_model, save_model

    pretrained = tmp_path / "pretrained"
    run(pretrained, model="deit_pico_distilled_patch4_32", epochs=2, lr=5e-3)
    # a 3-class image folder made from digits 0, 1, 2
    from deit.data import load_dataset

    digits = {split: load_dataset("digits", split) for split in ("train", "val")}
    root = tmp_path / "folder"
    for split, ds in digits.items():
        for i in range(len(ds)):
            image, label = ds.images[i], int(ds.targets[i])
            if label < 3:
                target = root / split / f"class{label}"
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).resize((16, 16)).save(target / f"{i}.png")
    teacher = create_model("convnext_atto_32", num_classes=3, in_channels=1)
    save_model(teacher, tmp_path / "teacher3.safetensors")
    out = tmp_path / "finetuned"
    result = run(out, dataset=str(root), in_channels=1, model="deit_pico_distilled_patch4_32",
                 finetune=str(pretrained / "last.pth"), teacher_model="convnext_atto_32",
                 teacher_checkpoint=str(tmp_path / "teacher3.safetensors"), distillation_type="soft", epochs=2,
                 lr=1e-3)
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["model"]["head.weight"].shape == (3, 64) and state["model"]["head_dist.weight"].shape == (3, 64)
    assert state["classes"] == ["class0", "class1", "class2"]
    assert result.final["train_distillation_loss"] > 0  # the soft term was active
    before = _weights(pretrained / "last.pth")["blocks.0.attn.qkv.weight"]
    after = state["model"]["blocks.0.attn.qkv.weight"]
    assert (after - before).abs().mean() < 0.1 * before.abs().mean()  # started from the pretrained body


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    settings = dict(model="deit_pico_patch4_32", epochs=3, train_subset=256, lr=5e-3)
    run(out, **settings, stop_after_epochs=1)
    before = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("last.pth", "metrics.csv")}
    from deit.distill.losses import DistillationLoss, LossTerms

    original = DistillationLoss.compute

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        return LossTerms(terms.total * float("nan"), terms.base, terms.distillation)

    monkeypatch.setattr(DistillationLoss, "compute", poisoned)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1"):
        run(out, **settings, resume=True)
    after = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("last.pth", "metrics.csv")}
    assert before == after


def test_images_seen_and_elapsed_time_accumulate_across_a_resume(tmp_path):
    out = tmp_path / "run"
    settings = dict(model="deit_pico_patch4_32", epochs=3, train_subset=192, batch_size=32, lr=5e-3, repeated_aug=2)
    run(out, **settings, stop_after_epochs=2)
    run(out, **settings, resume=True)
    with open(out / "metrics.csv", newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    per_epoch = (192 // 32) * 32  # 6 full batches; repeated augmentation trades images for copies, same count
    assert [r["images_seen"] for r in rows] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert [r["train_images"] for r in rows] == [per_epoch] * 3
    elapsed = [r["elapsed_s"] for r in rows]
    assert 0 < elapsed[0] < elapsed[1] < elapsed[2]
    # the resumed epoch starts from the checkpoint's clock, not from zero
    assert elapsed[2] >= elapsed[1] + rows[2]["train_time_s"]
    saved = torch.load(out / "last.pth", weights_only=True)["metrics"]
    assert saved["images_seen"] == 3 * per_epoch and saved["elapsed_s"] == pytest.approx(elapsed[2])


def test_config_file_plus_overrides_round_trip(tmp_path):
    from deit.train.settings import TrainConfig

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": "deit_nano_patch4_32", "epochs": 7, "lr": 1e-3, "scale": [0.5, 1.0]}))
    config = load_config(path, {"epochs": 9, "amp": True})
    assert (config.model, config.epochs, config.lr, config.scale, config.amp) == ("deit_nano_patch4_32", 9, 1e-3,
                                                                                  (0.5, 1.0), True)
    config.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert TrainConfig() == load_config(None)


# --- recipes (deit/train/recipes/*.yaml): defaults < recipe < --config < flags ----------------------

def test_small_data_recipe_gives_its_values_and_every_recipe_validates():
    from deit.train.settings import (
        FIELD_NAMES,
        RECIPE_TEACHER_KEYS,
        TrainConfig,
        available_recipes,
        recipe_summary,
        recipe_values,
    )

    assert "small-data" in available_recipes()
    config = load_config(None, {"recipe": "small-data"})
    shipped = recipe_values("small-data")
    assert (config.recipe, config.budget_images, config.batch_size, config.lr, config.warmup_fraction,
            config.auto_augment, config.mixup, config.repeated_aug, config.model_ema) == \
        ("small-data", shipped["budget_images"], shipped["batch_size"], shipped["lr"], shipped["warmup_fraction"],
         None, 0.0, 1, False)  # the light end of the paper's augmentations: no RandAugment, Mixup, repeats or EMA
    # a length stated above the recipe replaces the recipe's budget
    assert load_config(None, {"recipe": "small-data", "epochs": 3}).budget_images is None
    assert load_config(None, {"recipe": "small-data", "budget_minutes": 2.0}).budget_images is None
    for name in available_recipes():
        values = recipe_values(name)
        assert values and set(values) <= set(FIELD_NAMES) - {"recipe"}, name
        assert recipe_summary(name), f"{name}: the file's header comment says what the recipe is for"
        plain = load_config(None, {"recipe": name})
        distilled = load_config(None, {"recipe": name, "teacher_model": "convnext_atto_32"})
        for key, value in values.items():
            assert getattr(distilled, key) == value, (name, key)
            assert getattr(plain, key) == (getattr(TrainConfig(), key) if key in RECIPE_TEACHER_KEYS else value)


def test_recipe_precedence_recipe_then_config_file_then_flags(tmp_path):
    from deit.train.settings import TrainConfig

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"recipe": "small-data", "epochs": 20, "mixup": 0.2, "lr": 2e-3}))
    config = load_config(path, {"epochs": 30, "drop_path": 0.05})
    assert config.recipe == "small-data"  # chosen by the file's recipe: key
    assert config.epochs == 30  # flag > file > recipe (10)
    assert config.lr == 2e-3 and config.mixup == 0.2  # file > recipe (its lr, 0.0)
    assert config.drop_path == 0.05  # flag > recipe (0.0)
    assert config.batch_size == 128 and config.model_ema is False  # recipe > defaults (64, True)
    assert config.warmup_lr == 1e-6 and config.hflip is None and config.clip_grad is None  # defaults the recipe does not set
    by_flag = load_config(None, {"recipe": "small-data", "epochs": 30})
    assert (by_flag.epochs, by_flag.lr, by_flag.batch_size) == (30, recipe_values("small-data")["lr"], 128)
    path.write_text(yaml.safe_dump({"recipe": "small-data"}))
    assert load_config(path, {"recipe": None}) == load_config(None, {"recipe": "paper"})  # --recipe none: the paper's
    assert load_config(path, {"recipe": "paper"}) == TrainConfig(recipe="paper")


def test_recipe_distillation_settings_need_a_teacher(tmp_path):
    plain = load_config(None, {"recipe": "small-data", "model": "deit_pico_patch4_32"})
    assert (plain.distillation_type, plain.distillation_alpha, plain.teacher_model) == ("none", None, None)
    recipe = recipe_values("small-data")
    assert recipe["distillation_type"] != "none"
    by_flag = load_config(None, {"recipe": "small-data", "teacher_model": "convnext_atto_32"})
    assert (by_flag.distillation_type, by_flag.distillation_alpha) == (recipe["distillation_type"],
                                                                       recipe["distillation_alpha"])
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump({"recipe": "small-data", "teacher_model": "convnext_atto_32"}))
    assert load_config(path).distillation_type == recipe["distillation_type"]  # a teacher from the file counts too
    assert load_config(path, {"teacher_model": None}).distillation_type == "none"  # --teacher-model none
    other = "hard" if recipe["distillation_type"] == "soft" else "soft"
    changed = load_config(path, {"distillation_type": other})
    assert (changed.distillation_type, changed.distillation_alpha) == (other, recipe["distillation_alpha"])  # only its own


def test_unknown_recipe_names_the_flag_and_the_recipes(tmp_path, capsys):
    from deit.cli import main

    for name in ("tiny-data", "configs/fashion/student_hard.yaml"):
        with pytest.raises(ValueError, match=r"recipe='.*' is not a recipe shipped with deit; expected one of: "
                                             r"'small-data'.*--recipe.*a YAML file of your own is a --config file"):
            load_config(None, {"recipe": name})
    assert main(["train", "--recipe", "tiny-data", "--output", str(tmp_path / "run")]) == 2
    assert "--recipe" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_recipe_file_errors_name_the_file(tmp_path, monkeypatch):
    import deit.train.settings
    from deit.train.settings import recipe_values

    monkeypatch.setattr(deit.train.settings, "_recipe_folder", lambda: tmp_path)
    for text, match in (("lr: fast\n", "recipe 'broken' \\(deit/train/recipes/broken.yaml\\): lr='fast'"),
                        ("mixup_prob: 2.0\n", "deit/train/recipes/broken.yaml.*mixup_prob=2.0"),
                        ("learning_rate: 0.1\n", "broken.yaml.*unknown setting.*learning_rate"),
                        ("recipe: small-data\n", "broken.yaml.*cannot name another recipe"),
                        ("- 1\n", "broken.yaml.*mapping")):
        (tmp_path / "broken.yaml").write_text(text)
        with pytest.raises(ValueError, match=match):
            recipe_values("broken")


def test_recipe_run_config_round_trip(tmp_path):
    for teacher in ({}, {"teacher_model": "convnext_atto_32"}):
        config = load_config(None, {"recipe": "small-data", "epochs": 3, **teacher})
        config.save(tmp_path / "config.yaml")
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
        assert saved["recipe"] == "small-data" and saved["lr"] == recipe_values("small-data")["lr"] \
            and saved["epochs"] == 3
        assert load_config(tmp_path / "config.yaml") == config
        assert load_config(tmp_path / "config.yaml", {"recipe": "small-data", "resume": True}) == \
            load_config(None, {"recipe": "small-data", "epochs": 3, "resume": True, **teacher})


def test_recipes_ship_inside_the_package_and_the_command_prints_them(tmp_path, capsys):
    import fnmatch
    import importlib.resources

    from deit.cli import main
    from deit.train.settings import available_recipes

    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["deit.train"]
    for name in available_recipes():
        resource = importlib.resources.files("deit.train").joinpath("recipes", f"{name}.yaml")
        assert resource.is_file() and "epochs" in resource.read_text()
        assert any(fnmatch.fnmatch(f"recipes/{name}.yaml", p) for p in patterns), "add it to package-data"
    assert main(["recipes"]) == 0
    assert "small-data" in capsys.readouterr().out
    assert main(["recipes", "small-data"]) == 0
    (tmp_path / "copied.yaml").write_text(capsys.readouterr().out)
    assert load_config(tmp_path / "copied.yaml") == load_config(None, {"recipe": "small-data"})


@pytest.mark.parametrize("settings, match", [
    ({"lr": -1.0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"mixup_prob": 1.5}, "mixup_prob"),
    ({"distillation_type": "hard"}, "needs a teacher"), ({"distillation_type": "warm"}, "distillation_type"),
    ({"learning_rate": 0.1}, "unknown setting.*learning_rate"), ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"amp": "yes"}, "amp"),
    ({"batch_size": 127, "recipe": "paper"}, r"batch_size=127 \(--batch-size\) is odd.*--mixup 0 --cutmix 0"),
])
def test_invalid_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, settings)


def test_the_teacher_of_a_vit_student_stays_channels_last(tmp_path):
    """DeiT.set_teacher puts the teacher in channels_last (oneDNN's fast convolutions); the
    student's own move to the contiguous format must not undo it."""
    from deit import create_model, save_model
    from deit.train import distributed
    from deit.train.run import setup

    save_model(create_model("convnext_atto_32", num_classes=10, in_channels=1), tmp_path / "teacher.safetensors")
    config = load_config(None, {**DIGITS, "output": str(tmp_path / "run"), "model": "deit_pico_distilled_patch4_32",
                                "teacher_model": "convnext_atto_32", "distillation_type": "hard", "epochs": 1,
                                "teacher_checkpoint": str(tmp_path / "teacher.safetensors"), "teacher_memo": False})
    run_state = setup(config, distributed.detect(), torch.device("cpu"), tmp_path / "run")
    convs = [m for m in run_state.model.teacher.modules()
             if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)


def test_a_yaml_with_numbers_as_the_official_repo_writes_them_trains(tmp_path):
    """PyYAML reads ``5e-4`` as a string (YAML 1.1); the config loader reads YAML 1.2's numbers."""
    path = tmp_path / "official.yaml"
    path.write_text("lr: 5e-4\nmin_lr: 1e-5\nweight_decay: .05\nwarmup_lr: 1E-6\nepochs: 1\n"
                    "model: deit_pico_patch4_32\ntrain_subset: 64\nval_subset: 64\n")
    assert isinstance(yaml.safe_load(path.read_text())["lr"], str)  # what plain PyYAML makes of it
    config = load_config(path, {**DIGITS, "output": str(tmp_path / "run")})
    assert (config.lr, config.min_lr, config.weight_decay, config.warmup_lr) == (5e-4, 1e-5, 0.05, 1e-6)
    assert train(config).final["images_seen"] > 0
    assert load_config(tmp_path / "run" / "config.yaml").lr == 5e-4  # the run's record reads back the same


def test_keeping_a_folders_decoded_images_changes_no_weight(tmp_path):
    from PIL import Image

    from deit.data import load_dataset

    digits = {split: load_dataset("digits", split) for split in ("train", "val")}
    root = tmp_path / "folder"
    for split, data in digits.items():
        for i in range(0, len(data), 4):
            target = root / split / f"class{int(data.targets[i])}"
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(data.images[i]).save(target / f"{i}.png")
    settings = dict(dataset=str(root), model="deit_pico_patch4_32", epochs=2, scale=(0.5, 1.0))  # random crops
    run(tmp_path / "kept", **settings, keep_decoded=True)
    run(tmp_path / "decoded", **settings, keep_decoded=False)
    kept, decoded = _weights(tmp_path / "kept" / "last.pth"), _weights(tmp_path / "decoded" / "last.pth")
    assert all(torch.equal(kept[key], decoded[key]) for key in decoded)


def test_an_odd_batch_is_fine_without_mixing():
    assert load_config(None, {"batch_size": 127, "recipe": "paper", "mixup": 0.0, "cutmix": 0.0}).batch_size == 127
    assert load_config(None, {"batch_size": 127, "recipe": "paper", "mixup_prob": 0.0}).batch_size == 127


def test_new_run_refuses_to_overwrite_an_existing_one(tmp_path):
    out = tmp_path / "run"
    run(out, model="deit_pico_patch4_32", epochs=2, train_subset=128, stop_after_epochs=1)
    with pytest.raises(ValueError, match="already holds a run"):
        run(out, model="deit_pico_patch4_32", epochs=2, train_subset=128)
    with pytest.raises(ValueError, match="changed model configuration.*model"):
        run(out, model="deit_nano_patch4_32", epochs=2, train_subset=128, resume=True)


@pytest.mark.slow
def test_eval_and_predict_commands(digits_teacher, tmp_path, capsys):
    from PIL import Image

    from deit.cli import main
    from deit.data import load_dataset

    assert main(["eval", "--checkpoint", str(digits_teacher), "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out
    assert (tmp_path / "best-confusion_matrix.png").stat().st_size > 1000
    val = load_dataset("digits", "val")
    paths = []
    for i in range(6):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(val.images[i]).save(path)
        paths.append(str(path))
    assert main(["predict", "--checkpoint", str(digits_teacher), "--json", *paths]) == 0
    import json

    results = json.loads(capsys.readouterr().out)
    assert len(results) == 6 and all(len(r["top"]) == 5 for r in results)
    hits = sum(r["top"][0]["class"] == str(int(val.targets[i])) for i, r in enumerate(results))
    assert hits >= 5


def test_gradient_accumulation_counts_updates_and_scales_the_lr(tmp_path):
    result = run(tmp_path / "accum", model="deit_pico_patch4_32", epochs=2, train_subset=256, batch_size=32,
                 accum_steps=2, lr=5e-3, stop_after_epochs=1)
    state = torch.load(tmp_path / "accum" / "last.pth", weights_only=True)
    assert state["num_updates"] == (256 // 32) // 2  # 8 micro-batches -> 4 updates
    assert result.final["train_loss"] > 0
    # lr scaled to the effective batch 32 x 2 = 64: 5e-3 * 64 / 512 at the warm-up's end
    assert state["scheduler"]["base_values"][0] == pytest.approx(5e-3 * 64 / 512)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    result = run(tmp_path / "amp", model="deit_pico_distilled_patch4_32", epochs=2, train_subset=128, amp=True,
                 stop_after_epochs=1)
    assert torch.isfinite(torch.tensor(result.final["train_loss"]))
    state = torch.load(tmp_path / "amp" / "last.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


# --- short runs, messages, help, data rules ---------------------------------------------------

def test_short_run_clamps_the_warm_up_and_prints_the_scaled_lr(tmp_path, caplog):
    import logging

    out = tmp_path / "one-epoch"
    with caplog.at_level(logging.INFO, logger="deit"):
        run(out, model="deit_pico_patch4_32", epochs=1, warmup_epochs=5, train_subset=64, val_subset=64,
            batch_size=32, lr=5e-4)
    assert "--warmup-epochs 5 (warmup_epochs) is not shorter than --epochs 1: warming up for 0" in caplog.text
    # the paper's rule (Table 9): lr x effective batch / 512 = 5e-4 x 32 / 512
    assert "learning rate 3.125e-05 = --lr 0.0005 x effective batch 32 (--batch-size 32 x --accum-steps 1" \
        in caplog.text
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["scheduler"]["warmup_t"] == 0 and state["scheduler"]["base_values"][0] == pytest.approx(3.125e-5)
    assert yaml.safe_load((out / "config.yaml").read_text())["warmup_epochs"] == 0
    from deit.train.run import resolve_warmup_epochs

    assert [resolve_warmup_epochs(load_config(None, {"epochs": e}), log=False) for e in (1, 2, 5, 6, 300)] == \
        [0, 1, 4, 5, 5]
    assert [resolve_warmup_epochs(load_config(None, {"epochs": e, "warmup_epochs": 0.25}), log=False)
            for e in (1, 3)] == [0.25, 0.25]


def test_config_errors_name_the_flag_and_the_yaml_key(tmp_path, capsys):
    from deit.cli import main

    assert main(["train", "--warmup-epochs", "-1", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "warmup_epochs=-1.0 is invalid" in err and "--warmup-epochs" in err
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"kl_reduction": "sum"}))
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "kl_reduction='sum'" in err and "--kl-reduction" in err and "kl_reduction: in a --config file" in err
    assert not (tmp_path / "run").exists()


def test_train_help_describes_every_flag_in_groups(capsys):
    import argparse

    from deit.cli import build_parser
    from deit.train.settings import CHOICES, FIELD_NAMES, GROUPS, HELP

    assert set(HELP) == set(FIELD_NAMES) - {"extra"} and {group for group, _ in HELP.values()} == set(GROUPS)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices["train"]
    flags = [a for a in train_parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == len(FIELD_NAMES)  # every setting and --config
    for action in flags:
        text = (action.help or "").split("(default:")[0].strip()
        assert len(text) > 10, f"{action.option_strings} has no description: {action.help!r}"
    with pytest.raises(SystemExit):
        train_parser.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for group in GROUPS:
        assert f"\n{group}:" in train_parser.format_help()
    for name, choices in CHOICES.items():
        assert "--" + name.replace("_", "-") + " {" + ",".join(choices) + "}" in out
    assert "--device {auto,cpu,cuda,cuda:N}" in out
    assert "lr x effective batch / 512" in out and "(paper: 5e-4, Table 9)" in out
    assert "--reprob REPROB random erasing probability (paper: 0.25, Table 9) (default: 0.25)" in out


def test_the_settings_page_is_made_from_the_fields():
    """docs/settings.md is what the fields describe (regenerate with scripts/settings_table.py)."""
    from deit.train.settings import settings_markdown

    page = (Path(__file__).parents[2] / "docs" / "settings.md").read_text()
    assert page == settings_markdown(), "docs/settings.md is stale: run python scripts/settings_table.py"


@pytest.mark.parametrize("value, expected", [("5e-4", 5e-4), (3, 3.0), ("1E-6", 1e-6)])
def test_numbers_as_people_write_them_are_numbers(value, expected):
    from deit.train.settings import config_from_dict

    config = config_from_dict({"lr": value, "budget_images": 1.5e6})
    assert config.lr == expected and isinstance(config.lr, float)
    assert config.budget_images == 1_500_000 and isinstance(config.budget_images, int)


@pytest.mark.parametrize("settings, message", [
    ({"epochs": True}, r"epochs=True is invalid; expected an integer \(set by --epochs"),
    ({"lr": "fast"}, r"lr='fast' is invalid; expected a number"),
    ({"budget_images": 1.5}, r"budget_images=1.5 is invalid; expected an integer"),
    ({"amp": "maybe"}, r"amp='maybe' is invalid; expected true or false"),
    ({"scale": [0.5]}, r"scale=\(0.5,\) is invalid; expected two numbers"),
])
def test_values_of_another_kind_name_the_setting_and_its_flag(settings, message):
    from deit.train.settings import config_from_dict

    with pytest.raises(ValueError, match=message):
        config_from_dict(settings)


def _fail_in_build_data(monkeypatch):
    import deit.train.run

    def broken(config, env, train_set=None, val_set=None):
        raise ValueError("data set exploded")

    monkeypatch.setattr(deit.train.run, "build_data", broken)


def test_failed_run_leaves_no_empty_folder(tmp_path, monkeypatch):
    _fail_in_build_data(monkeypatch)
    nested = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(ValueError, match="exploded"):
        run(nested, model="deit_pico_patch4_32", epochs=1)
    assert list(tmp_path.iterdir()) == []  # the three folders the run created are gone
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("a user's file")
    for output in (kept, kept / "run"):
        with pytest.raises(ValueError, match="exploded"):
            run(output, model="deit_pico_patch4_32", epochs=1)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]  # pre-existing: untouched
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        run(tmp_path / "resumed", model="deit_pico_patch4_32", epochs=1, resume=True)
    assert not (tmp_path / "resumed").exists()


def test_failure_in_the_first_epoch_removes_the_run_files(tmp_path, monkeypatch):
    from deit.distill.losses import DistillationLoss, LossTerms

    original = DistillationLoss.compute

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        return LossTerms(terms.total * float("nan"), terms.base, terms.distillation)

    monkeypatch.setattr(DistillationLoss, "compute", poisoned)
    with pytest.raises(NonFiniteLossError):
        run(tmp_path / "run", model="deit_pico_patch4_32", epochs=2, train_subset=128)
    assert list(tmp_path.iterdir()) == []  # config.yaml and TensorBoard events went with the folder


def write_class_sorted_folder(root: Path, per_class=(40, 30, 20)) -> Path:
    """root/{train,val}/cls<k>/*.png: grey PNGs made from digits, listed class by class."""
    from PIL import Image

    from deit.data import load_dataset

    digits = load_dataset("digits", "train")
    for split in ("train", "val"):
        for label, count in enumerate(per_class):
            folder = root / split / f"cls{label}"
            folder.mkdir(parents=True)
            images = digits.images[digits.targets_array == label][: count if split == "train" else 4]
            for i, array in enumerate(images):
                Image.fromarray(array).save(folder / f"{i:03d}.png")
    return root


def test_grey_folder_trains_on_one_channel_and_subsets_span_the_classes(tmp_path):
    from collections import Counter

    from deit.train import distributed
    from deit.train.run import build_data

    root = write_class_sorted_folder(tmp_path / "folder")
    config = load_config(None, {**DIGITS, "dataset": str(root), "train_subset": 45, "batch_size": 16,
                                "output": str(tmp_path / "r")})
    train_loader, _, classes, data_config = build_data(config, distributed.DistEnv())
    assert data_config["in_channels"] == 1 and classes == ["cls0", "cls1", "cls2"]
    subset = train_loader.dataset.dataset  # the Subset inside the replay wrapper (deit.data.replay)
    counts = Counter(subset.dataset.targets[i] for i in subset.indices)
    assert counts == {0: 20, 1: 15, 2: 10}  # 45 of 90, class proportions 4:3:2 (the first 45 files: class 0 only)
    image, _ = subset[0]
    assert image.shape == (1, 16, 16)


# --- first contact: no recipe given, the data choose -----------------------------------------

NO_RECIPE = {k: v for k, v in DIGITS.items() if k != "recipe"}
TINY_RUN = dict(model="deit_pico_patch4_32", epochs=2, train_subset=64, val_subset=64, batch_size=32)


def run_without_recipe(output: Path, **settings):
    return train(load_config(None, {**NO_RECIPE, **TINY_RUN, "output": str(output), **settings}))


def test_no_recipe_given_the_data_choose_it_and_config_yaml_records_it(tmp_path, caplog):
    import logging

    from deit.train.settings import recipe_values

    with caplog.at_level(logging.INFO, logger="deit"):
        run_without_recipe(tmp_path / "chosen", epochs=1)
    assert "no --recipe given: recipe small-data, chosen because digits trains on 64 images of 8 px, fewer than " \
           "100,000; choose another with --recipe paper" in caplog.text
    saved = yaml.safe_load((tmp_path / "chosen" / "config.yaml").read_text())
    assert saved["recipe"] == "small-data" and saved["color_jitter"] == recipe_values("small-data")["color_jitter"]
    assert saved["batch_size"] == 32  # a flag wins over the recipe
    assert load_config(tmp_path / "chosen" / "config.yaml").recipe == "small-data"  # a rerun: the same recipe
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deit"):
        run_without_recipe(tmp_path / "paper", epochs=1, recipe="paper")
    assert "no --recipe given" not in caplog.text
    assert yaml.safe_load((tmp_path / "paper" / "config.yaml").read_text())["recipe"] == "paper"


def test_config_yaml_of_a_run_from_before_recipes_were_recorded_resumes_with_the_papers(tmp_path):
    """A run written before runs recorded their recipe has recipe: null in config.yaml and
    in last.pth; resumed from either, it keeps the paper's recipe it trained with."""
    out = tmp_path / "old"
    run_without_recipe(out, recipe="paper", stop_after_epochs=1)
    state = torch.load(out / "last.pth", weights_only=True)
    state["config"]["recipe"] = None  # as an older deit wrote it
    torch.save(state, out / "last.pth")
    written = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**written, "recipe": None}, sort_keys=False))
    assert load_config(out / "config.yaml") == load_config(None, {**written, "recipe": "paper"})
    run_without_recipe(out, resume=True)  # the same flags, no recipe named: the one recorded, null, is the paper's
    resumed = yaml.safe_load((out / "config.yaml").read_text())
    assert resumed["recipe"] == "paper" and resumed["color_jitter"] == 0.3  # small-data: none


@pytest.mark.slow
def test_first_contact_deit_train_digits_learns(tmp_path, caplog):
    """`deit train --dataset digits --epochs 2`, nothing else: the data choose the small-data
    recipe (the paper's ImageNet recipe ends at chance, 8-11 %, on 2 epochs of digits)."""
    import logging

    from deit.cli import main

    with caplog.at_level(logging.INFO, logger="deit"):
        assert main(["train", "--dataset", "digits", "--epochs", "2", "--no-progress",
                     "--output", str(tmp_path / "run")]) == 0
    assert "no --recipe given: recipe small-data, chosen because digits trains on 1,437 images" in caplog.text
    assert last_row(tmp_path / "run")["val_acc1"] > 40.0  # chance is 10 %
