"""Accuracy against minutes for every small-image teacher, on Fashion-MNIST, 2 cores.

Each teacher is one ``deit train --recipe small-data`` run on all 60,000 training images
with the CNN learning rate of the demo (0.012 per 512 images) for ``--epochs`` epochs (one
for the slow ones, ``--one-epoch``),
evaluated on the 10,000 test images after every epoch; the table gives test top-1 and the
minutes since the run's start (``metrics.csv``'s ``elapsed_s``) after each epoch, so a
teacher can be chosen for a budget. Runs are kept under ``--work`` and skipped when done.

    .venv/bin/python benchmarks/teacher_zoo.py                # ~20 min alone: 2 epochs, the slow ones 1
    .venv/bin/python benchmarks/teacher_zoo.py --models resnet8_32 --epochs 1

The table is written to ``benchmarks/results/teacher_zoo.md``; docs/models.md copies it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deit.cli.demo import TEACHER_LR
from deit.core.fileio import write_text_atomic
from deit.models.registry import build_model
from deit.train.run import train
from deit.train.run_log import read_metrics
from deit.train.settings import load_config

HERE = Path(__file__).resolve().parent
TEACHERS = ("resnet8_32", "resnet14_32", "resnet20_32", "resnet14w2_32", "resnet8w4_32", "convnext_atto_32")


def run(name: str, epochs: int, work: Path) -> Path:
    """``work/<name>/e<epochs>``: finished runs are kept, interrupted ones continued."""
    out = work / name / f"e{epochs}"
    if not (out / "summary.json").is_file():
        train(load_config(None, dict(recipe="small-data", dataset="fashion-mnist", model=name, epochs=epochs,
                                     lr=TEACHER_LR, output=str(out), progress=False,
                                     resume=(out / "last.pth").is_file())))
    return out


def table(runs: dict[str, tuple[Path, int]]) -> str:
    columns = max(epochs for _, epochs in runs.values())
    lines = [f"Fashion-MNIST, all 60,000 training images, `deit train --recipe small-data --lr {TEACHER_LR}` with "
             f"a cosine schedule of the run's length, {torch.get_num_threads()} threads, CPU capability "
             f"{torch.backends.cpu.get_cpu_capability()}; test top-1 on the 10,000 test images after each epoch "
             "(minutes since the run's start, evaluation included).", "",
             "| teacher | parameters (10 classes) | epochs | " +
             " | ".join(f"after epoch {e + 1}" for e in range(columns)) + " |",
             "|---|---|---|" + "---|" * columns]
    for name, (out, epochs) in runs.items():
        rows = [r for r in read_metrics(out / "metrics.csv") if r.get("val_acc1") not in (None, "")]
        params = sum(p.numel() for p in build_model(name, num_classes=10, in_channels=1).parameters())
        cells = [f"{float(r['val_acc1']):.2f} % ({float(r['elapsed_s']) / 60:.1f} min)" for r in rows]
        cells += [""] * (columns - len(cells))
        lines.append(f"| `{name}` | {params / 1e6:.2f} M | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(TEACHERS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--one-epoch", nargs="*", default=["resnet14w2_32", "resnet8w4_32", "convnext_atto_32"],
                        help="models trained for one epoch only (the slow ones)")
    parser.add_argument("--work", type=Path, default=Path("runs/teacher_zoo"))
    parser.add_argument("--output", type=Path, default=HERE / "results" / "teacher_zoo.md")
    args = parser.parse_args()
    schedule = {name: 1 if name in args.one_epoch else args.epochs for name in args.models}
    runs = {name: (run(name, epochs, args.work), epochs) for name, epochs in schedule.items()}
    write_text_atomic(args.output, table(runs))
    print(args.output.read_text())


if __name__ == "__main__":
    main()
