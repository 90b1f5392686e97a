"""The main job (``deit demo``): distillation through attention on Fashion-MNIST, start to end.

1. train a ConvNeXt teacher (``convnext_atto_32``);
2. train a DeiT student with hard distillation from it (``deit_pico_distilled_patch4_32``);
3. train the same DeiT without a teacher, as the control (``deit_pico_patch4_32``);
4. print one table: teacher, DeiT, DeiT⚗ class / distillation / fusion accuracy on the
   10k test images, with training images/s and wall time.

The default schedule is sized to finish in under 10 minutes on 2 CPU cores: a 20k-image
subset, a few epochs, and a light recipe (no Mixup/CutMix/RandAugment/repeated augmentation,
which need hundreds of epochs to pay off). ``--full`` uses all 60k images and more epochs
with RandAugment and random erasing. The paper's full recipe is ``deit train``'s default.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from deit.config import load_config
from deit.fileio import write_text_atomic
from deit.train import TrainResult, train

logger = logging.getLogger("deit")

TEACHER, STUDENT, CONTROL = "convnext_atto_32", "deit_pico_distilled_patch4_32", "deit_pico_patch4_32"


@dataclass(frozen=True)
class Schedule:
    name: str
    train_subset: int | None
    teacher_epochs: int
    student_epochs: int
    recipe: dict[str, Any]
    teacher_lr: float = 4e-3  # per 512 images; the convnet takes a higher rate than the ViT
    student_lr: float = 2e-3

    def describe(self) -> str:
        images = "all 60,000" if self.train_subset is None else f"a class-stratified {self.train_subset:,}"
        return (f"{self.name} schedule: {images} training images, teacher {self.teacher_epochs} epochs, "
                f"students {self.student_epochs} epochs each, evaluated on the 10,000 test images")


LIGHT = dict(mixup=0.0, cutmix=0.0, auto_augment=None, reprob=0.0, repeated_aug=1, scale=(0.7, 1.0),
             model_ema=False, drop_path=0.0, batch_size=128, smoothing=0.1)
# Evaluating only after the last epoch saves a minute of the ten.
QUICK = Schedule("quick (<= 10 min on 2 cores)", 15_000, 2, 3, dict(LIGHT, warmup_epochs=0, eval_interval=1000))
FULL = Schedule("full", None, 6, 12, dict(LIGHT, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25,
                                          warmup_epochs=1, model_ema=True, drop_path=0.1))


def run_demo(output: str | Path | None = None, full: bool = False, data_dir: str | None = None,
             progress: bool = True) -> dict[str, TrainResult]:
    schedule = FULL if full else QUICK
    out = Path(output) if output else Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}"
    start = time.perf_counter()
    print(f"deit demo -> {out}\n{schedule.describe()}", flush=True)
    common = dict(schedule.recipe, dataset="fashion-mnist", data_dir=data_dir, train_subset=schedule.train_subset,
                  progress=progress)
    teacher_warmup = min(common.get("warmup_epochs", 0), schedule.teacher_epochs - 1)
    results: dict[str, TrainResult] = {}
    print(f"[1/3] teacher {TEACHER}", flush=True)
    results["teacher"] = train(load_config(None, dict(
        common, model=TEACHER, epochs=schedule.teacher_epochs, lr=schedule.teacher_lr, warmup_epochs=teacher_warmup,
        output=str(out / "teacher"))))
    teacher_checkpoint = out / "teacher" / "best.pth"
    print(f"[2/3] student {STUDENT} with hard distillation from the teacher", flush=True)
    results["distilled"] = train(load_config(None, dict(
        common, model=STUDENT, epochs=schedule.student_epochs, lr=schedule.student_lr, teacher_model=TEACHER,
        teacher_checkpoint=str(teacher_checkpoint), distillation_type="hard", output=str(out / "deit_distilled"))))
    print(f"[3/3] control {CONTROL} without distillation", flush=True)
    results["control"] = train(load_config(None, dict(
        common, model=CONTROL, epochs=schedule.student_epochs, lr=schedule.student_lr, teacher_model=TEACHER,
        teacher_checkpoint=str(teacher_checkpoint), distillation_type="none", output=str(out / "deit_control"))))
    table = format_table(results)
    wall = time.perf_counter() - start
    report = f"{table}\n\n{schedule.describe()}; total wall time {wall / 60:.1f} min.\n" \
             f"Run directory: {out.resolve()} (checkpoints, metrics.csv, curves.png per model)"
    write_text_atomic(out / "results.md", report + "\n")
    print("\n" + report, flush=True)
    return results


def format_table(results: dict[str, TrainResult]) -> str:
    """One markdown table of final test accuracies (percent), speed and time."""
    teacher, distilled, control = results["teacher"].final, results["distilled"].final, results["control"].final
    rows = [
        ("teacher " + TEACHER, f"{teacher['val_acc1']:.2f}", "", "", "", results["teacher"]),
        ("DeiT (no distillation) " + CONTROL, f"{control['val_acc1']:.2f}", "", "", "",
         results["control"]),
        ("DeiT⚗ (hard distillation) " + STUDENT, f"{distilled['val_acc1']:.2f}", f"{distilled['val_cls_acc1']:.2f}",
         f"{distilled['val_dist_acc1']:.2f}", f"{distilled['val_dist_teacher_agreement']:.1f}",
         results["distilled"]),
    ]
    lines = ["| model | top-1 (fusion) | cls head | dist head | dist head = teacher | train images/s | wall time |",
             "|---|---|---|---|---|---|---|"]
    for name, acc, cls_acc, dist_acc, agree, result in rows:
        lines.append(f"| {name} | {acc} | {cls_acc} | {dist_acc} | {agree} | {result.train_images_per_s:.0f} | "
                     f"{result.wall_time_s:.0f} s |")
    lines.append(f"\ncontrol agreement with the teacher: {control.get('val_teacher_agreement', float('nan')):.1f}% "
                 "(top-1 predictions equal to the teacher's)")
    return "\n".join(lines)
