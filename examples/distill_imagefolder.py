"""Distillation on an image folder through the Python API: a ConvNeXt teacher, then a DeiT
student with hard distillation from it (paper §4), then evaluation and prediction.

What it shows:

1. ``deit.train.run.train(deit.train.settings.load_config(None, {...}))`` — one settings dict per run
   (every key is a field of ``deit.train.settings.TrainConfig`` and a flag of ``deit train``) — first
   for the teacher, ``convnext_atto_32`` by default;
2. the same call for the student, ``deit_pico_distilled_patch4_32`` by default, with
   ``teacher_model`` + ``teacher_checkpoint`` (the teacher run's ``best.pth``) and
   ``distillation_type="hard"``: the class head learns from the labels, the distillation
   head from the teacher's argmax;
3. ``deit.deploy.predict.evaluate_checkpoint`` on the student's ``best.pth`` (top-1 of the class
   head, the distillation head and their fusion; writes a confusion matrix PNG and a JSON
   next to the checkpoint) and ``deit.deploy.predict.Predictor`` on two validation images.

The data is an image folder as torchvision's ``ImageFolder``: ``ROOT/train/<class>/*.png``
and ``ROOT/val/<class>/*.png`` (the same class folders in both). With ``--make-demo-folder``
the script first writes one from scikit-learn's digits (8x8 grey PNGs, 1,437 train / 360
val, the split of ``deit train --dataset digits``)::

    python examples/distill_imagefolder.py --data runs/examples/digits-folder --make-demo-folder \\
        --output runs/examples/distill

    python examples/distill_imagefolder.py --data /path/to/my/folder --image-size 32 \\
        --teacher-epochs 30 --student-epochs 100 --output runs/my-distill

The recipe is the light one for small data and few epochs (no Mixup / CutMix /
RandAugment / random erasing / repeated augmentation, no EMA; see docs/training.md): the
paper's heavy augmentation is meant for 300 ImageNet epochs. On the digits folder the
defaults (4 teacher epochs, 20 student epochs) take about two minutes on one CPU core and
give a ~96 % teacher and a ~93 % student; ``--tiny`` is a half-minute smoke run for tests
(see its help).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from deit.deploy.predict import Predictor, evaluate_checkpoint
from deit.train.run import train
from deit.train.settings import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder root holding train/ and val/ class folders")
    p.add_argument("--make-demo-folder", action="store_true",
                   help="first write scikit-learn's digits as PNGs into --data (which must not exist or be empty)")
    p.add_argument("--output", default="runs/examples/distill",
                   help="directory of the two runs: OUTPUT/teacher and OUTPUT/student (default: %(default)s)")
    p.add_argument("--teacher-model", default="convnext_atto_32", help="default: %(default)s")
    p.add_argument("--student-model", default="deit_pico_distilled_patch4_32", help="default: %(default)s")
    p.add_argument("--image-size", type=int, default=16,
                   help="training / evaluation size in pixels (default: %(default)s; 32 suits the *_32 models "
                        "on CIFAR-sized folders)")
    p.add_argument("--teacher-epochs", type=int, default=4, help="default: %(default)s")
    p.add_argument("--student-epochs", type=int, default=20, help="default: %(default)s")
    p.add_argument("--teacher-lr", type=float, default=4e-3, help="per 512 images (default: %(default)s)")
    p.add_argument("--student-lr", type=float, default=5e-3, help="per 512 images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--hflip", type=float, default=None,
                   help="horizontal-flip probability; default 0.5, but 0 with --make-demo-folder (a flipped "
                        "digit is another shape)")
    p.add_argument("--demo-train-per-class", type=int, default=None,
                   help="--make-demo-folder: at most N training images per class (default: all, ~144)")
    p.add_argument("--demo-val-per-class", type=int, default=None,
                   help="--make-demo-folder: at most N validation images per class (default: all, ~36)")
    p.add_argument("--tiny", action="store_true",
                   help="smoke run in about 30 s: 2 teacher and 8 student epochs of batches of 32 at a higher "
                        "learning rate; with --make-demo-folder 60 train and 10 val images per class. The "
                        "teacher still reaches ~90 %%, the student only ~30 %% (a ViT needs more updates)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.teacher_epochs, args.student_epochs, args.batch_size = 2, 8, 32
        args.teacher_lr, args.student_lr = 1e-2, 2e-2
        if args.demo_train_per_class is None:
            args.demo_train_per_class = 60
        if args.demo_val_per_class is None:
            args.demo_val_per_class = 10
    return args


# --- the demo folder -------------------------------------------------------------------------

def make_digits_folder(root: Path, train_per_class: int | None = None, val_per_class: int | None = None) -> None:
    """scikit-learn's digits as ROOT/{train,val}/<digit>/<index>.png (8x8, grey, 0..255),
    optionally at most N images per class and split (the first ones by index)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"--make-demo-folder: {root} exists and is not empty; choose another --data")
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    # the split of `deit train --dataset digits` (stratified, 20 % validation)
    train_idx, val_idx = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0,
                                          stratify=bunch.target)
    written = {}
    for split, indices, limit in (("train", train_idx, train_per_class), ("val", val_idx, val_per_class)):
        per_class: dict[int, int] = {}
        for index in np.sort(indices):
            label = int(bunch.target[index])
            if limit is not None and per_class.get(label, 0) >= limit:
                continue
            per_class[label] = per_class.get(label, 0) + 1
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(folder / f"{index:04d}.png")
        written[split] = sum(per_class.values())
    print(f"wrote {written['train']} train and {written['val']} val PNGs of 10 classes under {root}")


# --- the two runs ----------------------------------------------------------------------------

def light_recipe(args: argparse.Namespace, root: Path) -> dict:
    """Settings shared by both runs (keys are TrainConfig fields)."""
    return dict(dataset=str(root), image_size=args.image_size, batch_size=args.batch_size, hflip=args.hflip,
                seed=args.seed, progress=False, model_ema=False,
                mixup=0.0, cutmix=0.0, reprob=0.0, auto_augment=None, scale=(1.0, 1.0), repeated_aug=1,
                warmup_epochs=1, drop_path=0.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library logs one line per epoch
    root, output = Path(args.data).resolve(), Path(args.output)
    if args.make_demo_folder:
        make_digits_folder(root, args.demo_train_per_class, args.demo_val_per_class)
        if args.hflip is None:
            args.hflip = 0.0
    recipe = light_recipe(args, root)

    # 1. the teacher: any registered model, here a small ConvNeXt
    teacher_cfg = load_config(None, {**recipe, "model": args.teacher_model, "epochs": args.teacher_epochs,
                                     "lr": args.teacher_lr, "output": str(output / "teacher")})
    teacher_run = train(teacher_cfg)
    teacher_ckpt = output / "teacher" / "best.pth"
    print(f"teacher {args.teacher_model}: best val top-1 {teacher_run.best_acc1:.2f}% "
          f"({teacher_run.wall_time_s:.1f} s) -> {teacher_ckpt}")

    # 2. the student, hard-distilled from the teacher's best checkpoint
    student_cfg = load_config(None, {**recipe, "model": args.student_model, "epochs": args.student_epochs,
                                     "lr": args.student_lr, "output": str(output / "student"),
                                     "teacher_model": args.teacher_model, "teacher_checkpoint": str(teacher_ckpt),
                                     "distillation_type": "hard"})
    student_run = train(student_cfg)
    final = student_run.final
    print(f"student {args.student_model}: best val top-1 {student_run.best_acc1:.2f}% "
          f"({student_run.wall_time_s:.1f} s); last epoch: distillation head agrees with the teacher on "
          f"{final['val_dist_teacher_agreement']:.1f}% of val images, class head on "
          f"{final['val_cls_teacher_agreement']:.1f}%")

    # 3. evaluate the student's best checkpoint: each head and their fusion
    student_ckpt = output / "student" / "best.pth"
    report = evaluate_checkpoint(student_ckpt)
    print(report.format())
    m = report.metrics
    print(f"student top-1: cls {m['cls_acc1']:.2f}%  dist {m['dist_acc1']:.2f}%  fusion {m['acc1']:.2f}%")

    # 4. predict two validation images of different classes (the checkpoint carries its own
    #    class names and preprocessing)
    val_dirs = sorted(d for d in (root / "val").iterdir() if d.is_dir())
    images = [min(val_dirs[i].iterdir()) for i in (0, len(val_dirs) - 1)]
    predictor = Predictor.from_checkpoint(student_ckpt)
    for result in predictor.predict_files(images, topk=3):
        top = ", ".join(f"{t['class']} ({t['probability']:.2f})" for t in result["top"])
        print(f"predict {result['image']} (true class {Path(result['image']).parent.name}): {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
