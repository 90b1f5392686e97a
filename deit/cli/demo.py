"""The main job (``deit demo``): distillation through attention on Fashion-MNIST, start to end.

1. train a CNN teacher (``resnet14_32``, He et al. 2016 §4.2);
2. train a DeiT student with distillation from it (``deit_pico_distilled_convstem_patch8_28``:
   a convolutional stem, Xiao et al. 2021, then 16 tokens of width 64);
3. train the same DeiT without a teacher, as the control (``deit_pico_convstem_patch8_28``),
   on the same images and updates (the paper's comparison);
4. print one table: teacher, DeiT, DeiT⚗ class / distillation / fusion accuracy on the
   10k test images, with training images/s and wall time;
5. draw ``learning_curves.png``: test top-1 after every epoch against the training images
   seen and against wall time, read back from each run's ``metrics.csv``.

Every run uses the ``small-data`` recipe (``deit/train/recipes/small-data.yaml``, whose values cite
``benchmarks/student_search.md`` and ``benchmarks/small_data_sweep.md``); the schedules set
only the training images of each run and the teacher's learning rate. The default schedule
is sized to finish in under 10 minutes on 2 CPU cores: the recipe's budget of 239,616
training images (4 epochs of the 60,000) for each of the three. ``--full`` trains longer.
The paper's ImageNet recipe stays ``deit train``'s choice for ImageNet-sized data.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from deit.core.figures import new_figure
from deit.core.fileio import atomic_write, write_text_atomic
from deit.train.run import TrainResult, train
from deit.train.run_log import read_metrics
from deit.train.runtime import native_cpu_bf16
from deit.train.settings import load_config, recipe_values

logger = logging.getLogger("deit")

TEACHER = "resnet14_32"
STUDENT, CONTROL = "deit_pico_distilled_convstem_patch8_28", "deit_pico_convstem_patch8_28"
RECIPE = "small-data"  # deit/train/recipes/small-data.yaml: the schedule below sets only images and rates
TEACHER_LR = 1.2e-2  # per 512 images (3e-3 at batch 128): the BatchNorm convnet takes a higher rate than the ViT


@dataclass(frozen=True)
class Schedule:
    """A demo schedule: the training images (``budget_images``) of the teacher and of each
    student; ``train_subset`` limits the data set (None: all 60,000 images)."""
    name: str
    train_subset: int | None
    teacher_images: int
    student_images: int
    recipe: dict[str, Any]
    teacher_lr: float = TEACHER_LR

    def describe(self) -> str:
        images = "all 60,000" if self.train_subset is None else f"a class-stratified {self.train_subset:,}"
        return (f"{self.name} schedule: {images} training images; the teacher sees {self.teacher_images:,} and each "
                f"student {self.student_images:,} of them (budget_images), evaluated on the 10,000 test images")


QUICK = Schedule("quick (<= 10 min on 2 cores)", None, 239_616, 239_616, dict(recipe=RECIPE))  # 4 epochs each
FULL = Schedule("full", None, 479_232, 958_464, dict(recipe=RECIPE))  # 8 and 16 epochs


def run_demo(output: str | Path | None = None, full: bool = False, data_dir: str | None = None,
             progress: bool = True, side_by_side: bool = True) -> dict[str, TrainResult]:
    """Train the teacher, then the two students (side by side, half the cores each, when
    ``side_by_side`` and there are at least two cores: two one-thread students train ×1.28
    faster than one after the other on two threads, benchmarks/README.md), print the table
    and draw the curves."""
    schedule = FULL if full else QUICK
    out = Path(output) if output else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    start = time.perf_counter()
    print(f"deit demo -> {out}\n{schedule.describe()}", flush=True)
    common = dict(schedule.recipe, dataset="fashion-mnist", data_dir=data_dir, train_subset=schedule.train_subset,
                  progress=progress)
    results: dict[str, TrainResult] = {}
    print(f"[1/3] teacher {TEACHER}", flush=True)
    results["teacher"] = train(load_config(None, dict(
        common, model=TEACHER, budget_images=schedule.teacher_images, lr=schedule.teacher_lr, amp=teacher_amp(),
        output=str(out / "teacher"))))
    teacher_checkpoint = out / "teacher" / "best.pth"
    students = {
        "distilled": dict(common, model=STUDENT, budget_images=schedule.student_images, teacher_model=TEACHER,
                          teacher_checkpoint=str(teacher_checkpoint), output=str(out / "deit_distilled")),
        "control": dict(common, model=CONTROL, budget_images=schedule.student_images, teacher_model=TEACHER,
                        teacher_checkpoint=str(teacher_checkpoint), distillation_type="none",
                        output=str(out / "deit_control")),
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if side_by_side and cores >= 2:
        print(f"[2/3] student {STUDENT} with {distillation_label()} from the teacher and\n"
              f"[3/3] control {CONTROL} without distillation, side by side: {cores // 2} core(s) each", flush=True)
        results.update(train_side_by_side(students, threads=cores // 2))
    else:
        print(f"[2/3] student {STUDENT} with {distillation_label()} from the teacher", flush=True)
        results["distilled"] = train(load_config(None, students["distilled"]))
        print(f"[3/3] control {CONTROL} without distillation", flush=True)
        results["control"] = train(load_config(None, students["control"]))
    table = format_table(results)
    runs = {f"teacher {TEACHER}": out / "teacher", f"DeiT control {CONTROL}": out / "deit_control",
            f"DeiT⚗ {STUDENT}": out / "deit_distilled"}
    curves = plot_learning_curves(runs, out / "learning_curves.png", title=f"Fashion-MNIST, {schedule.name} schedule")
    wall = time.perf_counter() - start
    report = f"{table}\n\n{schedule.describe()}; total wall time {wall / 60:.1f} min.\n" \
             f"Run directory: {out.resolve()} (checkpoints, metrics.csv, curves.png per model)\n" \
             f"Learning curves (test top-1 vs training images and wall time): {curves.resolve()}"
    write_text_atomic(out / "results.md", report + "\n")
    print("\n" + report, flush=True)
    return results


def teacher_amp() -> bool:
    """bf16 autocast for the teacher's training where the hardware runs bf16 natively (a CPU
    with AVX512-BF16 / AMX, or CUDA): ``resnet14_32`` trains ×1.3 faster to the same accuracy
    (benchmarks/README.md). The small students stay in fp32, which bf16 slows."""
    import torch

    return torch.cuda.is_available() or native_cpu_bf16()


def _train_with_threads(settings: dict[str, Any], threads: int, label: str) -> TrainResult:
    """:func:`deit.train.run.train` in a process of its own, on ``threads`` intra-op threads;
    its log lines carry ``label`` (the two processes' progress bars would overwrite each other)."""
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"[{label}] %(message)s")
    return train(load_config(None, dict(settings, progress=False)))


def train_side_by_side(jobs: dict[str, dict[str, Any]], threads: int) -> dict[str, TrainResult]:
    """Train every job of ``jobs`` (name -> settings) at once, one process each (spawned, as
    torch and OpenMP do not survive a fork) on ``threads`` threads; their results by name."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=context) as pool:
        futures = {name: pool.submit(_train_with_threads, settings, threads, name) for name, settings in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def distillation_label() -> str:
    """The recipe's distillation, as the table names it: "hard distillation" or
    "soft distillation (τ 3, α 0.9)"."""
    values = recipe_values(RECIPE)
    kind = values.get("distillation_type", "hard")
    if kind != "soft":
        return f"{kind} distillation"
    return f"soft distillation (τ {values.get('distillation_tau', 3.0):g}, α {values.get('distillation_alpha'):g})"


def format_table(results: dict[str, TrainResult]) -> str:
    """One markdown table of final test accuracies (percent), speed and time."""
    teacher, distilled, control = results["teacher"].final, results["distilled"].final, results["control"].final
    rows = [
        ("teacher " + TEACHER, f"{teacher['val_acc1']:.2f}", "", "", "", results["teacher"]),
        ("DeiT (no distillation) " + CONTROL, f"{control['val_acc1']:.2f}", "", "", "",
         results["control"]),
        (f"DeiT⚗ ({distillation_label()}) " + STUDENT, f"{distilled['val_acc1']:.2f}", f"{distilled['val_cls_acc1']:.2f}",
         f"{distilled['val_dist_acc1']:.2f}", f"{distilled['val_dist_teacher_agreement']:.1f}",
         results["distilled"]),
    ]
    lines = ["| model | top-1 (fusion) | cls head | dist head | dist head = teacher | train images/s | wall time |",
             "|---|---|---|---|---|---|---|"]
    for name, acc, cls_acc, dist_acc, agree, result in rows:
        lines.append(f"| {name} | {acc} | {cls_acc} | {dist_acc} | {agree} | {result.train_images_per_s:.0f} | "
                     f"{result.wall_time_s:.0f} s |")
    budgets = [f"{r.epochs_run} epochs, {r.final.get('images_seen')} images"
               for r in (results["distilled"], results["control"])]
    same = "same epochs and images" if budgets[0] == budgets[1] else " vs ".join(budgets)
    lines.append(f"\nDeiT⚗ − control: {distilled['val_acc1'] - control['val_acc1']:+.2f} points (fusion), {same}")
    lines.append(f"\ncontrol agreement with the teacher: {control.get('val_teacher_agreement', float('nan')):.1f}% "
                 "(top-1 predictions equal to the teacher's)")
    return "\n".join(lines)


_HEADS = (("val_cls_acc1", "class head", "--", "^"), ("val_dist_acc1", "distillation head", "-.", "v"))


def plot_learning_curves(run_dirs: dict[str, Path], path: str | Path, title: str = "") -> Path:
    """Test top-1 against training images seen (left) and wall time in minutes (right), one
    line per run of ``run_dirs`` (legend label -> run directory), read back from each run's
    ``metrics.csv`` (columns ``images_seen``, ``elapsed_s``, ``val_acc1``; rows without one of
    them, e.g. epochs without an evaluation, are skipped). A DeiT⚗'s class and distillation heads get thin dashed lines in
    its colour. Images make the comparison per unit of data, minutes per unit of compute: the
    distilled student pays for the teacher's forward pass in wall time only.

    Raises ``FileNotFoundError`` naming the file when a run has no ``metrics.csv``.
    """
    from matplotlib.ticker import EngFormatter

    columns = ("images_seen", "elapsed_s", "val_acc1")
    tables = {}
    for label, directory in run_dirs.items():
        csv_path = Path(directory) / "metrics.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"no learning curve for {label!r}: {csv_path} does not exist (every training "
                                    "run writes it); pass the run's output directory")
        rows = read_metrics(csv_path)
        missing = [key for key in columns if rows and key not in rows[0]]
        if missing:
            raise ValueError(f"{csv_path} has no column {', '.join(missing)}: it cannot be drawn against training "
                             "images and wall time")
        tables[label] = [r for r in rows if all(r[key] for key in columns)]

    path = Path(path)
    fig = new_figure(figsize=(12, 4.5))
    ax_images, ax_time = fig.subplots(1, 2, sharey=True)
    for label, rows in tables.items():
        images = [float(r["images_seen"]) for r in rows]
        minutes = [float(r["elapsed_s"]) / 60 for r in rows]
        heads = [head for head in _HEADS if any(r.get(head[0]) for r in rows)]
        acc = [float(r["val_acc1"]) for r in rows]
        (line,) = ax_images.plot(images, acc, marker="o", label=f"{label} (fusion)" if heads else label)
        ax_time.plot(minutes, acc, marker="o", color=line.get_color())
        for key, name, style, marker in heads:
            pts = [(x, t, float(r[key])) for x, t, r in zip(images, minutes, rows) if r.get(key)]
            xs, ts, ys = zip(*pts)
            ax_images.plot(xs, ys, linestyle=style, linewidth=1, marker=marker, markersize=4,
                           color=line.get_color(), label=f"{label} {name}")
            ax_time.plot(ts, ys, linestyle=style, linewidth=1, marker=marker, markersize=4, color=line.get_color())
    ax_images.set_xlabel("training images seen")
    ax_images.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax_images.set_ylabel("test top-1 (%)")
    ax_time.set_xlabel("wall time since the run's start (min)")
    ax_images.set_title("per training image", fontsize=10)
    ax_time.set_title("per minute of wall time", fontsize=10)
    for ax in (ax_images, ax_time):
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    handles, labels = ax_images.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)  # below: no line hidden
    fig.suptitle("test top-1 during training" + (f": {title}" if title else ""))
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(labels) - 1) // 3), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path
