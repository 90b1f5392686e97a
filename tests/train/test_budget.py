"""Runs set by a budget (deit.train.budget) and the recipe chosen by the data (deit.train.settings.recipe_for_data).

The plan is checked as arithmetic (updates, epochs, warm-up, the cosine's span and the
learning rate at its ends) for several data sizes; the runs on digits check that the
engine trains exactly the planned updates, that images_seen counts them, that a budget
in minutes is measured once and recorded, and that resuming a budgeted run lands on the
same weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml

from deit.train.budget import SchedulePlan, epoch_updates, evaluation_due, plan_schedule
from deit.train.optim import build_scheduler
from deit.train.run import train
from deit.train.settings import PAPER_RECIPE, load_config, recipe_for_data

BATCH = 128
MIN_LR, WARMUP_LR, PEAK_LR = 1e-5, 1e-6, 1e-3


def _lr_of_updates(plan: SchedulePlan) -> list[float]:
    """The learning rate each update of the plan trains at, stepped as the engine steps it
    (``step_update(n)`` after update n)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=PEAK_LR)
    scheduler = build_scheduler(optimizer, total_steps=plan.total_updates, warmup_steps=plan.warmup_updates,
                                min_lr=MIN_LR, warmup_lr=WARMUP_LR)
    rates = []
    for update in range(1, plan.total_updates + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(update)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR)  # the cosine has ended: its span is the plan's
    return rates


# --- the plan: pure arithmetic ------------------------------------------------------------------

@pytest.mark.parametrize("images, per_epoch, epochs, last", [
    (1_000, 7, 112, 4),        # 781 updates: 111 epochs of 7 and 4 more
    (8_000, 62, 13, 37),       # 12 x 62 + 37
    (60_000, 468, 2, 313),     # 468 + 313
])
def test_budget_sets_updates_epochs_and_the_last_partial_epoch(images, per_epoch, epochs, last):
    plan = plan_schedule(images, BATCH, budget_images=100_000, epochs=300, warmup_epochs=5, warmup_fraction=0.1)
    assert plan.updates_per_epoch == per_epoch == images // BATCH  # drop_last: the trailing partial batch
    assert plan.total_updates == 781  # round(100,000 / 128 = 781.25)
    assert (plan.epochs, plan.last_epoch_updates) == (epochs, last)
    assert [plan.updates_in_epoch(e) for e in (0, epochs - 1)] == [per_epoch if epochs > 1 else last, last]
    assert sum(plan.updates_in_epoch(e) for e in range(plan.epochs)) == plan.total_updates
    assert plan.warmup_updates == 78  # round(0.1 x 781): the same share for every data size
    assert plan.budget_images == 100_000
    rates = _lr_of_updates(plan)
    assert rates[0] == pytest.approx(WARMUP_LR)  # the first update: the warm-up's start
    assert rates[plan.warmup_updates] == pytest.approx(PEAK_LR)  # the first update after it: the peak
    cosine = plan.total_updates - plan.warmup_updates
    last = MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * (cosine - 1) / cosine))  # one step before its end
    assert rates[-1] == pytest.approx(last)
    assert rates[-1] < MIN_LR + 1e-5 * (PEAK_LR - MIN_LR)  # the last update is at the end of the decay


def test_epochs_without_budget_plan_as_before():
    plan = plan_schedule(8_000, BATCH, epochs=10, warmup_epochs=5)
    assert (plan.epochs, plan.total_updates, plan.warmup_updates, plan.last_epoch_updates) == (10, 620, 310, 62)
    assert plan.budget_images is None
    clamped = plan_schedule(8_000, BATCH, epochs=3, warmup_epochs=5)  # warm-up clamped to epochs - 1
    assert (clamped.warmup_epochs, clamped.warmup_updates) == (2, 124)
    fraction = plan_schedule(8_000, BATCH, epochs=10, warmup_epochs=5, warmup_fraction=0.05)
    assert fraction.warmup_updates == 31  # 5 % of 620, whatever warmup_epochs says


def test_budget_rounds_to_whole_updates_and_keeps_a_cosine_step():
    assert plan_schedule(1_000, BATCH, budget_images=64).total_updates == 1  # 0.5 update: halves up
    assert plan_schedule(1_000, BATCH, budget_images=63).total_updates == 1  # at least one
    assert plan_schedule(1_000, BATCH, budget_images=191).total_updates == 1  # 1.49
    assert plan_schedule(1_000, BATCH, budget_images=192).total_updates == 2  # 1.5
    one_epoch = plan_schedule(1_000, BATCH, budget_images=7 * BATCH)
    assert (one_epoch.epochs, one_epoch.last_epoch_updates) == (1, 7)  # a whole epoch is not a partial one
    short = plan_schedule(1_000, BATCH, budget_images=BATCH, warmup_fraction=0.99)
    assert (short.total_updates, short.warmup_updates) == (1, 0)  # the warm-up never takes every update
    assert epoch_updates(1_000, BATCH, drop_last=False) == 8
    with pytest.raises(ValueError, match="1000 training images gives no update of the effective batch 2048"):
        plan_schedule(1_000, 2048, budget_images=10_000)


# --- validation: each message names the value and the flag ---------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"budget_images": 0}, r"budget_images=0 is invalid; expected a positive integer.*--budget-images"),
    ({"budget_images": -5}, r"budget_images=-5 is invalid.*--budget-images"),
    ({"budget_images": 1.5}, r"budget_images=1.5 is invalid; expected an integer.*--budget-images"),
    ({"budget_minutes": 0}, r"budget_minutes=0.0 is invalid; expected minutes of training > 0.*--budget-minutes"),
    ({"budget_minutes": -1.0}, r"budget_minutes=-1.0 is invalid.*--budget-minutes"),
    ({"budget_images": 1000, "budget_minutes": 5}, r"budget_images=1000 and budget_minutes=5.0 both set the run's "
                                                    r"length; give one of --budget-images and --budget-minutes"),
    ({"warmup_fraction": 1.0}, r"warmup_fraction=1.0 is invalid; expected a share of the run's updates in \[0, 1\)"
                               r".*--warmup-fraction"),
    ({"warmup_fraction": -0.1}, r"warmup_fraction=-0.1 is invalid.*--warmup-fraction"),
])
def test_budget_settings_are_checked_and_name_the_flag(settings, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, settings)


def test_budget_flags_on_the_command_line(tmp_path, capsys):
    from deit.cli import main

    assert main(["train", "--budget-images", "1000", "--budget-minutes", "2", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--budget-images" in err and "--budget-minutes" in err and not (tmp_path / "r").exists()
    config = load_config(None, {"budget_images": 250_000, "warmup_fraction": 0.05})
    assert (config.budget_images, config.warmup_fraction, config.budget_minutes) == (250_000, 0.05, None)


# --- the recipe chosen by the data --------------------------------------------------------------

def test_recipe_rule():
    assert recipe_for_data("digits", 1_437, 8) == ("small-data", "digits trains on 1,437 images of 8 px, fewer than "
                                                                  "100,000")
    assert recipe_for_data("fashion-mnist", 60_000, 28)[0] == "small-data"
    assert recipe_for_data("/data/flowers", 8_000, 500)[0] == "small-data"  # few images
    assert recipe_for_data("/data/cifar5m", 5_000_000, 32)[0] == "small-data"  # small images
    assert recipe_for_data("/data/imagenet", 1_281_167, 400) == (
        PAPER_RECIPE, "/data/imagenet trains on 1,281,167 images of 400 px: ImageNet-sized (at least 100,000 "
                      "images of at least 64 px)")
    assert recipe_for_data("/data/imagenet", 1_281_167, None)[0] == PAPER_RECIPE
    assert recipe_for_data("/data/tiny-imagenet", 100_000, 64)[0] == PAPER_RECIPE  # the boundary: not small
    assert recipe_for_data("digits", 1_437, 8, finetune=True)[0] == PAPER_RECIPE  # small-data is for scratch


def test_recipe_none_written_anywhere_means_the_papers():
    """--recipe none and recipe: null (every config.yaml a run wrote before runs recorded
    their recipe) keep meaning no recipe; only a recipe named nowhere is chosen by the data."""
    assert load_config(None, {"recipe": None}).recipe == PAPER_RECIPE
    assert load_config(None, {"recipe": "paper"}) == load_config(None, {"recipe": None})
    assert load_config(None).recipe is None
    assert sorted(load_config(None, {"epochs": 3}).settings_given) == ["epochs"]


def test_resume_takes_the_recipe_the_run_recorded():
    from deit.data import load_dataset
    from deit.train.run import settle_recipe

    digits = load_dataset("digits", "train")
    config = load_config(None, {"dataset": "digits", "epochs": 3})  # the flags of the first invocation
    assert settle_recipe(config, digits, saved_config=None, log=False).recipe == "small-data"
    old_run = settle_recipe(config, digits, saved_config={"recipe": None}, log=False)  # written before recipes
    assert old_run == load_config(None, {"dataset": "digits", "epochs": 3, "recipe": "paper"})
    recorded = settle_recipe(config, digits, saved_config={"recipe": "small-data"}, log=False)
    assert recorded == load_config(None, {"dataset": "digits", "epochs": 3, "recipe": "small-data"})
    flags_win = load_config(None, {"dataset": "digits", "epochs": 3, "lr": 1e-3})
    assert settle_recipe(flags_win, digits, log=False).lr == 1e-3  # recipe < flags, as --recipe small-data


def test_image_folder_side_is_probed(tmp_path):
    from PIL import Image

    from deit.data import load_dataset
    from deit.data.datasets import typical_image_side

    for i, size in enumerate((40, 40, 48)):
        folder = tmp_path / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (size, size - 8)).save(folder / f"{i}.png")
    assert typical_image_side(load_dataset(str(tmp_path), "train")) == 40  # the median of the longer sides
    assert typical_image_side(load_dataset("digits", "train")) == 8


# --- real runs on digits --------------------------------------------------------------------------

# Pico DeiT on 8 px digits, 128 training images, batch 32: 4 updates an epoch.
TINY = dict(dataset="digits", model="deit_pico_distilled_patch4_32", train_subset=128, val_subset=60, batch_size=32,
            lr=5e-3, progress=False, recipe="paper", model_ema=False, mixup=0.0, cutmix=0.0, reprob=0.0,
            auto_augment=None, repeated_aug=1, scale=(1.0, 1.0))
BUDGET = 9 * 32  # 9 updates: two epochs of 4 and 1 update of a third


def _run(output: Path, **settings):
    return train(load_config(None, {**TINY, "output": str(output), **settings}))


def _rows(output: Path) -> list[dict[str, float]]:
    with open(output / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_budget_run_trains_the_planned_updates_and_counts_its_images(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="deit"):
        result = _run(out, budget_images=BUDGET, epochs=50, warmup_fraction=0.25)
    assert "budget_images 288: 3 epoch(s) of 128, 9 updates, the last epoch 1 of 4" in caplog.text
    assert "--epochs 50 (epochs) is ignored: the budget sets the run's length" in caplog.text
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["num_updates"] == 9 and state["epoch"] == 2
    assert state["scheduler"]["t_initial"] + state["scheduler"]["warmup_t"] == 9  # the cosine spans the budget
    assert state["scheduler"]["warmup_t"] == 2  # round(0.25 x 9)
    rows = _rows(out)
    assert [r["train_images"] for r in rows] == [128, 128, 32]
    assert [r["images_seen"] for r in rows] == [128, 256, 288]
    assert "val_acc1" in rows[-1]  # the last (partial) epoch is evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["images_seen"] == 288 == result.final["images_seen"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["budget_images"], saved["budget_minutes"]) == (3, 288, None)
    assert load_config(out / "config.yaml").budget_images == 288  # a rerun from it: the same plan


@pytest.mark.parametrize("epochs, evaluations, expected", [
    (60, 10, [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]),  # 239,616 images of a 4,000-image folder: every 6th
    (4, 10, [0, 1, 2, 3]),                                # fewer epochs than evaluations: every epoch
    (7, 3, [2, 4, 6]),                                    # evenly spread, the last always
    (1, 10, [0]),
])
def test_evaluations_are_spread_evenly_and_the_last_epoch_is_always_evaluated(epochs, evaluations, expected):
    due = [epoch for epoch in range(epochs) if evaluation_due(epoch, epochs, evaluations=evaluations)]
    assert due == expected and len(due) == min(epochs, evaluations)


def test_eval_interval_counts_epochs_when_evaluations_is_not_set():
    assert [e for e in range(7) if evaluation_due(e, 7, eval_interval=3)] == [2, 5, 6]
    assert all(evaluation_due(e, 5) for e in range(5))


def test_a_budget_run_evaluates_the_epochs_evaluations_choose(tmp_path):
    out = tmp_path / "run"
    _run(out, budget_images=BUDGET, evaluations=2)  # 3 epochs: the second and the last
    with open(out / "metrics.csv", newline="") as f:
        evaluated = [bool(row["val_acc1"]) for row in csv.DictReader(f)]
    assert evaluated == [False, True, True]


@pytest.mark.slow
def test_budget_run_resumed_equals_an_uninterrupted_one(tmp_path):
    """Stopped after each whole epoch and resumed, with the recipe chosen by the data (no
    recipe given: the resumed invocation must take the one the run recorded) and the
    stochastic parts on (drop path, Mixup/CutMix, RandAugment, EMA)."""
    settings = {k: v for k, v in TINY.items() if k != "recipe"}
    settings.update(budget_images=BUDGET, drop_path=0.1, mixup=0.8, cutmix=1.0, auto_augment="rand-m9-mstd0.5-inc1",
                    model_ema=True, warmup_fraction=0.2, lr=5e-3)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(load_config(None, {**settings, "output": str(straight)}))
    for _ in range(2):
        train(load_config(None, {**settings, "output": str(split), "stop_after_epochs": 1,
                                 "resume": (split / "last.pth").exists()}))
    assert [r["epoch"] for r in _rows(split)] == [0, 1]
    train(load_config(None, {**settings, "output": str(split), "resume": True}))  # the partial epoch
    a = torch.load(straight / "last.pth", weights_only=True)
    b = torch.load(split / "last.pth", weights_only=True)
    assert a["num_updates"] == b["num_updates"] == 9
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    rows_a, rows_b = _rows(straight), _rows(split)
    assert [r["images_seen"] for r in rows_a] == [r["images_seen"] for r in rows_b] == [128, 256, 288]
    assert rows_a[-1]["val_acc1"] == rows_b[-1]["val_acc1"]
    assert yaml.safe_load((split / "config.yaml").read_text())["recipe"] == "small-data"


@pytest.mark.slow
def test_budget_minutes_is_measured_once_and_recorded(tmp_path, monkeypatch, caplog):
    """The measured budget is recorded; the run equals a budget_images run of the recorded
    images (the calibration changed no weight, RNG state or data order); a resume and a
    rerun from config.yaml do not measure again."""
    import deit.train.run

    settings = dict(TINY, drop_path=0.1, mixup=0.8, cutmix=1.0, budget_minutes=0.02)
    measured = tmp_path / "measured"
    with caplog.at_level(logging.INFO, logger="deit"):
        _run(measured, **settings, stop_after_epochs=1)
    assert "--budget-minutes 0.02: measured " in caplog.text and "training images/s over 2 steps -> budget_images" \
        in caplog.text and "evaluation comes on top" in caplog.text  # 4 updates an epoch: 2 discarded, 2 timed
    saved = yaml.safe_load((measured / "config.yaml").read_text())
    images = saved["budget_images"]
    assert isinstance(images, int) and images > 0 and saved["budget_minutes"] is None
    assert saved["extra"]["budget_minutes"] == 0.02 and saved["extra"]["measured_images_per_s"] > 0
    assert images == pytest.approx(saved["extra"]["measured_images_per_s"] * 0.02 * 60, rel=1e-3, abs=1)

    def no_measuring(run, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(deit.train.run, "measure_training_rate", no_measuring)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deit"):
        _run(measured, **settings, resume=True)  # the same flags, --budget-minutes included
    assert f"resuming with budget_images {images}, recorded by the run being resumed" in caplog.text
    total = max(1, (2 * images + 32) // 64)
    assert torch.load(measured / "last.pth", weights_only=True)["num_updates"] == total
    resumed = yaml.safe_load((measured / "config.yaml").read_text())
    assert resumed["budget_images"] == images and resumed["extra"] == saved["extra"]

    rerun = tmp_path / "rerun"
    train(load_config(measured / "config.yaml", {"output": str(rerun), "resume": False, "stop_after_epochs": None}))
    assert torch.load(rerun / "last.pth", weights_only=True)["num_updates"] == total
    by_images = tmp_path / "by-images"
    _run(by_images, **{**settings, "budget_minutes": None, "budget_images": images})
    a = torch.load(measured / "last.pth", weights_only=True)["model"]
    b = torch.load(by_images / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring changed nothing of the run


@pytest.mark.slow
def test_teacher_cache_with_a_partial_last_epoch(tmp_path):
    """The last epoch of a budget reads the cache for the rows it trains; its part-filled
    shard is never written, so the next run computes those rows again and reads the rest."""
    from deit import create_model, save_model

    torch.manual_seed(1)
    teacher = tmp_path / "resnet8.pth"
    save_model(create_model("resnet8_32", num_classes=10, in_channels=1), teacher)
    settings = dict(teacher_model="resnet8_32", teacher_checkpoint=str(teacher), distillation_type="hard",
                    teacher_cache=str(tmp_path / "cache"), budget_images=BUDGET)
    _run(tmp_path / "first", **settings)
    _run(tmp_path / "second", **settings)
    first = json.loads((tmp_path / "first" / "summary.json").read_text())["teacher_cache"]
    second = json.loads((tmp_path / "second" / "summary.json").read_text())["teacher_cache"]
    assert (first["hits"], first["misses"]) == (0, 288)
    assert (second["hits"], second["misses"]) == (256, 32)  # epochs 0-1 read, the partial epoch 2 computed
    a = torch.load(tmp_path / "first" / "last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "second" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    from deit.train.cache_fill import fill_teacher_cache

    counts = fill_teacher_cache(load_config(None, {**TINY, **settings, "output": str(tmp_path / "x")}))
    assert counts["epochs"] == (0, 3) and counts["epochs_skipped"] == 2  # the budget's 3 epochs
    assert counts["misses"] == 128  # the last one filled whole, so its shard is written
    _run(tmp_path / "third", **settings)
    third = json.loads((tmp_path / "third" / "summary.json").read_text())["teacher_cache"]
    assert (third["hits"], third["misses"]) == (288, 0)


def test_a_resume_keeps_the_recorded_length_and_refuses_another():
    from deit.core.errors import ConfigError
    from deit.train.run import keep_recorded_length

    recorded = {"epochs": 5, "budget_images": 239616, "warmup_fraction": 0.0625, "warmup_epochs": 0.25}
    # the same command, under a recipe whose budget has changed since: the record wins
    config = load_config(None, {"recipe": "small-data", "dataset": "digits", "resume": True})
    config = dataclasses.replace(config, budget_images=100_000, warmup_fraction=0.1)
    kept = keep_recorded_length(config, recorded)
    assert (kept.budget_images, kept.warmup_fraction, kept.epochs) == (239616, 0.0625, 5)
    # a run recorded in epochs, resumed by its own flags
    old = keep_recorded_length(load_config(None, {"recipe": "small-data", "epochs": 10}),
                               {"epochs": 10, "budget_images": None, "warmup_epochs": 0.25})
    assert (old.epochs, old.budget_images, old.warmup_epochs, old.warmup_fraction) == (10, None, 0.25, None)
    # a run recorded before budgets existed: no budget_images key, so the recipe's budget does not apply
    older = keep_recorded_length(load_config(None, {"recipe": "small-data"}), {"epochs": 10, "warmup_epochs": 0.25})
    assert (older.epochs, older.budget_images, older.warmup_fraction) == (10, None, None)
    with pytest.raises(ConfigError, match="--budget-images 120000, recorded 239616"):
        keep_recorded_length(load_config(None, {"recipe": "small-data", "budget_images": 120000}), recorded)


# --- the crops a long schedule trains on (settle_views) ---------------------------------------

def _views(settings: dict, images: int, saved: dict | None = None):
    from deit.train import distributed
    from deit.train.run import settle_views

    config = load_config(None, dict(dict(dataset="digits", model="deit_pico_patch4_32", budget_images=12_800,
                                         batch_size=64, repeated_aug=1, crops_from_epochs=20), **settings))
    return settle_views(config, range(images), distributed.DistEnv(), saved, log=False)


@pytest.mark.parametrize("images, expected", [
    (640, (0.5, 1.0)),  # 20 epochs of 640 images: crops
    (800, (0.08, 1.0)),  # 17 epochs: the configured scale
])
def test_crops_replace_the_scale_from_the_planned_epochs_on(images, expected):
    settled = _views({}, images)
    assert tuple(settled.scale) == expected
    assert settled.settings_given is not None and "crops_from_epochs" in settled.settings_given


def test_crops_leave_a_given_scale_a_resumed_run_and_a_minutes_budget_alone():
    assert tuple(_views({"scale": (0.9, 1.0)}, 640).scale) == (0.9, 1.0)  # --scale given: it stands
    assert tuple(_views({}, 640, saved={"scale": [0.08, 1.0]}).scale) == (0.08, 1.0)  # resumed: as it trained
    minutes = _views({"budget_images": None, "budget_minutes": 1.0}, 640)
    assert tuple(minutes.scale) == (0.08, 1.0)  # epochs unknown before the rate is measured


def test_the_small_data_recipe_crops_a_small_folder_only():
    from deit.train import distributed
    from deit.train.run import settle_views

    config = load_config(None, dict(recipe="small-data", dataset="digits", model="deit_pico_patch4_32"))
    env = distributed.DistEnv()
    assert tuple(settle_views(config, range(3_000), env, log=False).scale) == (0.5, 1.0)  # 80 epochs
    assert tuple(settle_views(config, range(6_000), env, log=False).scale) == (1.0, 1.0)  # 40 epochs: whole images
    assert tuple(settle_views(config, range(60_000), env, log=False).scale) == (1.0, 1.0)  # 4 epochs: whole images
