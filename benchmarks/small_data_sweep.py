"""The sweep behind ``deit train --recipe small-data``: one factor at a time, fixed wall clock.

Every row is a real ``deit.train.run.train`` run on Fashion-MNIST (the product's data path,
model, loss and schedule), distilled from one shared CNN teacher (``resnet14_32``, trained
first by the recipe with the CNN learning rate of ``deit demo``). Each row changes one
setting of its stage's base (the shipped recipe ``deit/train/recipes/small-data.yaml`` plus the
stage's own values) and gets the stage's wall-clock budget: a calibration run measures
that row's training images/s (the second of two short epochs), and the row trains for as
many epochs as fit in the budget (at least one), so a setting that makes each step slower
(a larger model, smaller patches, a teacher forward) pays for it in epochs, as it would
for a user with a fixed amount of time.

Stage 1 started from the recipe's first values (random-resized crops, colour jitter) at
60 s a row; stage 2 re-checks the choices around the recipe that stage 1 gave, at 120 s.

    .venv/bin/python benchmarks/small_data_sweep.py --stage 1        # 26 rows, ~40 min alone
    .venv/bin/python benchmarks/small_data_sweep.py --stage 2        # 8 rows, ~20 min alone
    .venv/bin/python benchmarks/small_data_sweep.py --stage 2 --rows base alpha
    .venv/bin/python benchmarks/small_data_sweep.py --table-only     # rebuild the table

Results are kept per stage and row in ``benchmarks/results/small_data_sweep.json`` (a row
already there is not run again unless ``--rerun``), and the tables are written to
``benchmarks/small_data_sweep.md``. Run it alone on the machine: a second process on the
2 cores changes every row's epochs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deit.cli.demo import CONTROL, STUDENT, TEACHER, TEACHER_LR
from deit.core.fileio import write_text_atomic
from deit.train.run import train
from deit.train.run_log import read_metrics
from deit.train.runtime import native_cpu_bf16
from deit.train.settings import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_store import load_results, record_result  # noqa: E402  (benchmarks/ is not a package)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "small_data_sweep.json"
TABLE = HERE / "small_data_sweep.md"
TRAIN_IMAGES = 60_000  # Fashion-MNIST's training split

# Stage 1 ran before the recipe took its final values: its base is every value it had then.
STAGE_1_BASE: dict[str, Any] = dict(
    lr=8e-3, warmup_epochs=0.25, weight_decay=0.05, drop_path=0.0, smoothing=0.1, scale=[0.7, 1.0], hflip=None,
    color_jitter=0.3, auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0, repeated_aug=1, batch_size=128,
    model_ema=False, distillation_type="hard", distillation_alpha=0.5)

# (row, what changes): the row names are the ones the recipe file cites.
STAGE_1_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("base", {}),
    ("control (no teacher)", {"model": CONTROL, "distillation_type": "none"}),
    ("learning rate", {"lr": 4e-3}),
    ("learning rate", {"lr": 1.6e-2}),
    ("warm-up", {"warmup_epochs": 0}),
    ("warm-up", {"warmup_epochs": 1}),
    ("weight decay", {"weight_decay": 0.0}),
    ("weight decay", {"weight_decay": 0.1}),
    ("augmentation strength", {"scale": [1.0, 1.0], "hflip": 0.0}),
    ("augmentation strength", {"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "scale": [0.08, 1.0]}),
    ("augmentation strength", {"mixup": 0.8, "cutmix": 1.0}),
    ("label smoothing", {"smoothing": 0.0}),
    ("drop path", {"drop_path": 0.1}),
    ("patch size", {"model": "deit_pico_distilled_patch4_32", "image_size": 28}),
    ("width/depth", {"model": "deit_nano_distilled_patch4_32", "image_size": 28}),
    ("batch size", {"batch_size": 64}),
    ("batch size", {"batch_size": 256}),
    ("hard vs soft", {"distillation_type": "soft", "distillation_alpha": 0.5, "distillation_tau": 1.0}),
    ("hard vs soft", {"distillation_type": "soft", "distillation_alpha": 0.1, "distillation_tau": 3.0}),
    ("alpha", {"distillation_alpha": 0.25}),
    ("alpha", {"distillation_alpha": 0.75}),
    ("EMA", {"model_ema": True, "model_ema_decay": 0.999}),
    ("bf16", {"amp": True}),
    ("torch.compile", {"compile": True}),
    ("augmentation strength", {"scale": [1.0, 1.0]}),
    ("augmentation strength", {"scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": None}),
]
STAGE_2_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("base", {}),
    ("control (no teacher)", {"model": CONTROL, "distillation_type": "none"}),
    ("hard vs soft", {"distillation_type": "soft", "distillation_alpha": 0.5, "distillation_tau": 1.0}),
    ("alpha", {"distillation_alpha": 0.75}),
    ("learning rate", {"lr": 4e-3}),
    ("learning rate", {"lr": 1.6e-2}),
    ("batch size", {"batch_size": 64}),
    ("augmentation strength", {"scale": [0.7, 1.0], "color_jitter": 0.3}),
]


@dataclass(frozen=True)
class Stage:
    """One pass of the sweep: a base (the shipped recipe plus ``base``), a budget, its rows."""
    budget_s: float
    base: dict[str, Any]
    rows: list[tuple[str, dict[str, Any]]]
    about: str


STAGES: dict[str, Stage] = {
    "1": Stage(60.0, dict(STAGE_1_BASE), STAGE_1_ROWS,
               "the starting point: the shipped recipe with random-resized crops (scale 0.7–1) and colour jitter "
               "0.3, as the earlier Fashion-MNIST configurations. A row of less than 2 epochs has no warm-up "
               "(the clamp of that time), so the two warm-up rows equal the base; the EMA row reports the "
               "model, not its average; the torch.compile row's calibration counted the compilation"),
    "2": Stage(120.0, {}, STAGE_2_ROWS, "the shipped recipe, chosen from stage 1; 120 s per row"),
}


def row_key(name: str, change: dict[str, Any]) -> str:
    return f"{name}: {json.dumps(change, sort_keys=True)}" if change else name


def base_settings(args: argparse.Namespace, teacher: Path, stage: Stage) -> dict[str, Any]:
    return dict(recipe="small-data", dataset="fashion-mnist", model=STUDENT, teacher_model=TEACHER,
                teacher_checkpoint=str(teacher), seed=args.seed, progress=False, val_subset=args.val_subset,
                **stage.base)


def train_teacher(args: argparse.Namespace) -> Path:
    """The shared teacher: the recipe's settings with the CNN's learning rate (as ``deit demo``),
    ``--teacher-epochs`` on all images."""
    out = args.work / "teacher"
    if not (out / "summary.json").is_file():  # not finished: continue an interrupted run
        train(load_config(None, dict(recipe="small-data", dataset="fashion-mnist", model=TEACHER, lr=TEACHER_LR,
                                     epochs=args.teacher_epochs, seed=args.seed, output=str(out), progress=False,
                                     resume=(out / "last.pth").is_file())))
    return out / "best.pth"


def calibrate(settings: dict[str, Any], work: Path) -> float:
    """Training images/s of these settings: the second of two epochs on a 4,096-image subset,
    so that one-off costs (``torch.compile``, first-touch allocations) stay out of it."""
    probe = dict(settings, epochs=2, train_subset=4096, val_subset=256, warmup_epochs=0, output=str(work))
    train(load_config(None, probe))
    return float(read_metrics(work / "metrics.csv")[-1]["train_images_per_s"])


def run_row(name: str, change: dict[str, Any], args: argparse.Namespace, teacher: Path, stage_name: str
            ) -> dict[str, Any]:
    stage = STAGES[stage_name]
    settings = {**base_settings(args, teacher, stage), **change}
    if change.get("amp") and not native_cpu_bf16():
        return {"row": name, "change": change, "budget_s": stage.budget_s, "skipped": "no native bf16 on this CPU "
                f"({torch.backends.cpu.get_cpu_capability()}): --amp would run fp32"}
    slug = f"s{stage_name}-{stage.rows.index((name, change))}"
    for folder in (args.work / f"calibrate-{slug}", args.work / f"row-{slug}"):
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted attempt of this row
    ips = calibrate(settings, args.work / f"calibrate-{slug}")
    epochs = max(1, round(stage.budget_s * ips / TRAIN_IMAGES))
    start = time.perf_counter()
    result = train(load_config(None, dict(settings, epochs=epochs, output=str(args.work / f"row-{slug}"))))
    final = result.final
    return {"row": name, "change": change, "budget_s": stage.budget_s, "epochs": epochs,
            "calibrated_images_per_s": ips,
            "wall_s": time.perf_counter() - start, "top1": final["val_acc1"],
            "cls": final.get("val_cls_acc1"), "dist": final.get("val_dist_acc1"),
            "cpu": torch.backends.cpu.get_cpu_capability()}


def stage_table(stage_name: str, results: dict[str, dict[str, Any]]) -> str:
    stage = STAGES[stage_name]
    base_row = results.get("base", {})
    base = base_row.get("top1") if base_row.get("budget_s") == stage.budget_s else None
    lines = [f"## Stage {stage_name}: {stage.budget_s:.0f} s of training per row", "", f"Base: {stage.about}.", "",
             "| row | change | epochs in budget | test top-1 (fusion) | Δ vs base | cls / dist head | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, change in stage.rows:
        r = results.get(row_key(name, change))
        r = r if r is not None and r.get("budget_s") == stage.budget_s else None  # another budget: not this table's
        shown = ", ".join(f"{k}={v}" for k, v in change.items()) or "the base"
        if r is None:
            lines.append(f"| {name} | {shown} | not run yet | | | | |")
        elif "skipped" in r:
            lines.append(f"| {name} | {shown} | skipped: {r['skipped']} | | | | |")
        else:
            delta = f"{r['top1'] - base:+.2f}" if base is not None else ""
            heads = f"{r['cls']:.2f} / {r['dist']:.2f}" if r.get("cls") is not None else ""
            lines.append(f"| {name} | {shown} | {r['epochs']} | {r['top1']:.2f} | {delta} | {heads} | "
                         f"{r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The page: every stage's table, from ``results[stage][row key]``."""
    head = ["# Small-data sweep (Fashion-MNIST, fixed wall-clock budget per row)", "",
            "Generated by `benchmarks/small_data_sweep.py` (its docstring says how each row is run). Every row "
            "distils `deit_pico_distilled_patch7_28` from one `resnet14_32` teacher unless the row says otherwise; "
            "Δ is against the stage's base row; one seed per row, so differences under about one point are within "
            "run-to-run noise (docs/RESULTS.md has seeded spreads).", ""]
    return "\n".join(head) + "\n" + "\n".join(stage_table(name, results.get(name, {})) for name in STAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default=max(STAGES), help="which stage to run")
    parser.add_argument("--rows", nargs="+", help="row names to run (default: all of the stage's)")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--val-subset", type=int, default=5000, help="test images per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/small_data_sweep"))
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    results = load_results(RESULTS)
    if not args.table_only:
        teacher = train_teacher(args)
        stage, done_rows = STAGES[args.stage], results.setdefault(args.stage, {})
        for name, change in stage.rows:
            key = row_key(name, change)
            done = key in done_rows and done_rows[key].get("budget_s") == stage.budget_s
            if (args.rows and name not in args.rows) or (done and not args.rerun):
                continue
            print(f"== stage {args.stage}: {key}", flush=True)
            done_rows[key] = run_row(name, change, args, teacher, args.stage)
            print(json.dumps(done_rows[key]), flush=True)
            results = record_result(RESULTS, (args.stage, key), done_rows[key])
    write_text_atomic(TABLE, table(results))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
