"""The search behind the small-image students and the ``small-data`` recipe: which student,
schedule, augmentation and distillation give the best DeiT⚗ on Fashion-MNIST in minutes of
a 2-core CPU, measured against the same student without a teacher.

Every row is a real ``deit.train.train`` run (the product's data path, model, loss and
schedule) on Fashion-MNIST's 60,000 training images, tested on its 10,000 test images,
distilled from one shared CNN teacher (``resnet14_32``, trained first with ``deit demo``'s
teacher settings). A row is fully described by its settings (the shipped recipe, the
stage's base, the row's change and the seed), so its accuracy does not depend on what else
runs on the machine; its wall time and images/s do, so the stages that compare at equal
wall time state their budget in training images per student, sized from images/s measured
alone (``--rates``, the table says when).

    .venv/bin/python benchmarks/student_search.py --stage arch          # run a stage's rows not yet done
    .venv/bin/python benchmarks/student_search.py --stage arch --rows pico-p7 --seeds 0 1 2
    .venv/bin/python benchmarks/student_search.py --rates                # training images/s of every student, alone
    .venv/bin/python benchmarks/student_search.py --table-only           # rebuild the page

Results are kept per stage, row and seed in ``benchmarks/results/student_search.json`` (a
row already there is not run again unless ``--rerun``; an interrupted row resumes from its
``last.pth``), and the tables are written to ``benchmarks/student_search.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deit.cli.demo import TEACHER, TEACHER_LR
from deit.core.fileio import write_text_atomic
from deit.train.run import train
from deit.train.settings import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_size_curve import settings as curve_settings  # noqa: E402
from results_store import load_results, record_result  # noqa: E402  (benchmarks/ is not a package)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "student_search.json"
TABLE = HERE / "student_search.md"

# The students compared, as (control, distilled) registered names.
STUDENTS: dict[str, tuple[str, str]] = {
    "pico-p7": ("deit_pico_patch7_28", "deit_pico_distilled_patch7_28"),
    "pico-stem8": ("deit_pico_convstem_patch8_28", "deit_pico_distilled_convstem_patch8_28"),
    "nano-stem8": ("deit_nano_convstem_patch8_28", "deit_nano_distilled_convstem_patch8_28"),
    "pico-stem4": ("deit_pico_convstem_patch4_28", "deit_pico_distilled_convstem_patch4_28"),
}


@dataclass(frozen=True)
class Row:
    """One student run: ``student`` names a pair of :data:`STUDENTS`; ``teacher`` False
    trains the control (no distillation); ``change`` goes over the stage's base."""
    name: str
    student: str
    teacher: bool
    change: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    about: str
    base: dict[str, Any]
    rows: list[Row]
    subset: int | None = None  # a class-stratified subset (drawn by the row's seed) with its own teacher


STAGES: dict[str, Stage] = {
    "arch": Stage(
        "which student learns fastest: every student without a teacher, 4 epochs (239,616 images) of the "
        "shipped recipe; compare top-1 per image here and per minute with the students' images/s",
        dict(epochs=4),
        [Row(f"{key} control", key, False) for key in STUDENTS]),
    "distill": Stage(
        "where distillation helps the conv-stem student: 4 epochs (239,616 images) of the shipped recipe; "
        "whole images (the recipe) against random-resized crops, hard against soft, alpha; each view "
        "setting has its own control",
        dict(epochs=4),
        [Row("control", "pico-stem8", False),
         Row("hard", "pico-stem8", True, dict(distillation_type="hard", distillation_alpha=0.5)),
         Row("soft tau 3 alpha 0.5", "pico-stem8", True,
             dict(distillation_type="soft", distillation_tau=3.0, distillation_alpha=0.5)),
         Row("soft tau 3 alpha 0.9", "pico-stem8", True,
             dict(distillation_type="soft", distillation_tau=3.0, distillation_alpha=0.9)),
         Row("crops control", "pico-stem8", False, dict(scale=[0.5, 1.0])),
         Row("crops hard", "pico-stem8", True, dict(scale=[0.5, 1.0], distillation_type="hard",
                                                     distillation_alpha=0.5)),
         Row("crops soft tau 3 alpha 0.9", "pico-stem8", True,
             dict(scale=[0.5, 1.0], distillation_type="soft", distillation_tau=3.0, distillation_alpha=0.9))]),
    "demo": Stage(
        "the pair of `deit demo`, over seeds: the shipped recipe as it is (its budget of 239,616 images, its "
        "distillation), the control without a teacher; one teacher (seed 0) for every seed",
        {},
        [Row("control", "pico-stem8", False), Row("DeiT⚗ (recipe)", "pico-stem8", True)]),
    "views": Stage(
        "views on a small folder: 3,000 images (class-stratified, seed 0) get 82 epochs from the recipe's budget; "
        "whole images against random-resized crops and RandAugment, distilled from the teacher the data-size "
        "curve trains on the same subset (whole images, bf16 where native); each view setting has its own control. "
        "The whole-image rows are the settings of the curve's 3,000-image seed-0 runs. Wall times: the crops rows "
        "ran beside test runs (not comparable)",
        {},
        [Row("whole control", "pico-stem8", False, dict(scale=[1.0, 1.0])),
         Row("whole soft tau 3 alpha 0.9", "pico-stem8", True, dict(scale=[1.0, 1.0])),
         Row("crops control", "pico-stem8", False, dict(scale=[0.5, 1.0])),
         Row("crops soft tau 3 alpha 0.9", "pico-stem8", True, dict(scale=[0.5, 1.0])),
         Row("crops hard", "pico-stem8", True, dict(scale=[0.5, 1.0], distillation_type="hard",
                                                     distillation_alpha=0.5)),
         Row("randaug control", "pico-stem8", False, dict(scale=[0.5, 1.0], auto_augment="rand-m6-mstd0.5")),
         Row("randaug soft tau 3 alpha 0.9", "pico-stem8", True,
             dict(scale=[0.5, 1.0], auto_augment="rand-m6-mstd0.5"))],
        subset=3000),
}


def row_settings(stage: Stage, row: Row, teacher: Path, seed: int) -> dict[str, Any]:
    control, distilled = STUDENTS[row.student]
    settings: dict[str, Any] = dict(recipe="small-data", dataset="fashion-mnist", seed=seed, progress=False,
                                    train_subset=stage.subset, **stage.base)
    if row.teacher:
        settings.update(model=distilled, teacher_model=TEACHER, teacher_checkpoint=str(teacher))
    else:
        settings.update(model=control)
    settings.update(row.change)
    return settings


def train_teacher(work: Path, epochs: int) -> Path:
    """The shared teacher: ``deit demo``'s teacher settings, ``epochs`` on all images."""
    out = work / "teacher"
    if not (out / "summary.json").is_file():  # not finished: continue an interrupted run
        train(load_config(None, dict(recipe="small-data", dataset="fashion-mnist", model=TEACHER, lr=TEACHER_LR,
                                     epochs=epochs, seed=0, output=str(out), progress=False,
                                     resume=(out / "last.pth").is_file())))
    return out / "best.pth"


def train_subset_teacher(work: Path, size: int, seed: int) -> Path:
    """A teacher trained on a stage's subset (which ``seed`` draws): the data-size curve's teacher run."""
    values = curve_settings("teacher", size, seed, work / "curve")
    out = Path(values["output"])
    if not (out / "summary.json").is_file():
        train(load_config(None, dict(values, resume=(out / "last.pth").is_file())))
    return out / "best.pth"


def run_row(stage_name: str, row: Row, seed: int, teacher: Path, work: Path) -> dict[str, Any]:
    stage = STAGES[stage_name]
    out = work / stage_name / row.name.replace(" ", "_") / f"seed{seed}"
    settings = row_settings(stage, row, teacher, seed)
    start = time.perf_counter()
    result = train(load_config(None, dict(settings, output=str(out), resume=(out / "last.pth").is_file())))
    final = result.final
    return {"row": row.name, "seed": seed, "settings": settings, "top1": final["val_acc1"],
            "cls": final.get("val_cls_acc1"), "dist": final.get("val_dist_acc1"),
            "images_seen": final.get("images_seen"), "epochs": result.epochs_run,
            "train_images_per_s": result.train_images_per_s, "wall_s": time.perf_counter() - start,
            "cpu": torch.backends.cpu.get_cpu_capability()}


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def stage_table(stage_name: str, done: dict[str, dict[str, Any]]) -> str:
    stage = STAGES[stage_name]
    lines = [f"## Stage `{stage_name}`", "", f"{stage.about}.", "",
             "| row | model | change | seeds | test top-1 (fusion) | cls / dist head | images seen | wall s | "
             "train images/s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in stage.rows:
        runs = [r for r in done.values() if r["row"] == row.name]
        model = STUDENTS[row.student][1 if row.teacher else 0]
        shown = ", ".join(f"{k}={v}" for k, v in row.change.items()) or ""
        if not runs:
            lines.append(f"| {row.name} | `{model}` | {shown} | not run yet | | | | | |")
            continue
        heads = ""
        if runs[0].get("cls") is not None:
            heads = f"{_mean_std([r['cls'] for r in runs])} / {_mean_std([r['dist'] for r in runs])}"
        lines.append(f"| {row.name} | `{model}` | {shown} | {', '.join(str(r['seed']) for r in runs)} | "
                     f"{_mean_std([r['top1'] for r in runs])} | {heads} | {runs[0]['images_seen']:,} | "
                     f"{statistics.mean(r['wall_s'] for r in runs):.0f} | "
                     f"{statistics.mean(r['train_images_per_s'] for r in runs):.0f} |")
    return "\n".join(lines) + "\n"


def page(results: dict[str, Any]) -> str:
    head = ["# Student search (Fashion-MNIST, 60,000 training images, 10,000 test images)", "",
            "Generated by `benchmarks/student_search.py` (its docstring says how each row is run). Spreads are the "
            "sample standard deviation over the seeds listed; a difference inside them is a tie.", ""]
    return "\n".join(head) + "\n" + "\n".join(stage_table(name, results.get(name, {})) for name in STAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="arch")
    parser.add_argument("--rows", nargs="+", help="row names to run (default: all of the stage's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("runs/student_search"))
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    results = load_results(RESULTS)
    if not args.table_only:
        subset = STAGES[args.stage].subset
        shared = train_teacher(args.work, args.teacher_epochs) if subset is None else None
        done = results.get(args.stage, {})
        for row in STAGES[args.stage].rows:
            for seed in args.seeds:
                key = f"{row.name} seed {seed}"
                if (args.rows and row.name not in args.rows) or (key in done and not args.rerun):
                    continue
                print(f"== {args.stage}: {key}", flush=True)
                teacher = shared or train_subset_teacher(args.work, subset, seed)
                row_result = run_row(args.stage, row, seed, teacher, args.work)
                print(json.dumps({k: v for k, v in row_result.items() if k != "settings"}), flush=True)
                results = record_result(RESULTS, (args.stage, key), row_result)
    write_text_atomic(TABLE, page(results))
    print(TABLE.read_text())


if __name__ == "__main__":
    main()
