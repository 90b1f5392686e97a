"""A user-defined teacher: any ``nn.Module`` passed as ``DeiT(..., teacher_model_name=module)``,
and a hand-written distillation loop with ``deit.distill.losses.DistillationLoss``.

What it shows:

1. a small CNN (plain PyTorch, defined below) trained for a few epochs on scikit-learn's
   digits (8x8 grey images as tensors, the 80/20 split of ``deit train --dataset digits``);
2. ``DeiT(..., teacher_model_name=cnn, teacher_inputs="student")`` uses the module as it is:
   ``teacher_inputs="student"`` declares that the CNN was trained on the student's tensors, as
   here (a teacher trained with other statistics is wrapped in ``deit.TeacherInputNorm``
   instead). ``--attach set_teacher``: ``DeiT(...)`` then ``model.set_teacher(cnn,
   inputs="student")``, the same thing after construction. It is
   put in eval mode with ``requires_grad=False`` — in place, so train the teacher first. The
   teacher must not become part of the student; the script checks it: the teacher's tensors
   are neither in the student's ``state_dict()`` nor in its optimizer, the teacher stays in
   eval mode when the student is put in training mode, and its weights (BatchNorm
   statistics included) do not change during the student's training. A failed check ends
   the script with status 1;
3. the training loop: in training mode ``model(x)`` returns ``((cls_logits, dist_logits),
   teacher_logits)`` — the teacher runs under ``torch.inference_mode`` inside the student's
   forward — and ``DistillationLoss(..., distillation_type="hard")(x, (cls, dist), y,
   teacher_outputs=teacher_logits)`` is the paper's eq. 2 with λ = 1/2: cross-entropy of the
   class head against the labels plus cross-entropy of the distillation head against the
   teacher's argmax;
4. evaluation: ``model.eval()`` makes ``model(x)`` return ``(fused_logits, teacher_logits)``;
   ``model.forward_heads(model.forward_features(x))`` gives each head. Printed: top-1 of the
   class head, the distillation head and their fusion, and how often each head agrees
   with the teacher;
5. the student saved with ``deit.save_model`` (no teacher inside) and loaded back into a
   fresh ``DeiT`` with ``deit.load_pretrained``.

``--swap-teacher-classes 1 7`` wraps the trained CNN in another ``nn.Module`` that swaps its
logits for two classes — a teacher that is wrong on purpose, so that the distillation head
visibly follows the teacher (it calls 1s "7") while the class head follows the labels.

Run::

    python examples/custom_teacher.py                        # ~40 s on one CPU core
    python examples/custom_teacher.py --swap-teacher-classes 1 7 --attach set_teacher
    python examples/custom_teacher.py --tiny                 # ~15 s, for tests

With the defaults the teacher reaches ~99 % and the student ~97 % (each head); with
``--tiny`` ~97 % and ~65 %.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import deit
from deit import DeiT
from deit.distill.losses import DistillationLoss


class SmallCNN(nn.Module):
    """The teacher: three 3x3 convolutions and a linear classifier, (B, 1, 8, 8) -> (B, 10)."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SwapClasses(nn.Module):
    """Wraps a classifier and swaps its logits for classes ``a`` and ``b``."""

    def __init__(self, model: nn.Module, a: int, b: int) -> None:
        super().__init__()
        self.model, self.a, self.b = model, a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        order = list(range(logits.shape[1]))
        order[self.a], order[self.b] = self.b, self.a
        return logits[:, order]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/examples/custom_teacher",
                   help="where the student's weights are saved (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=8, help="default: %(default)s")
    p.add_argument("--student-epochs", type=int, default=40, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=2e-3, help="student's AdamW learning rate (default: %(default)s)")
    p.add_argument("--swap-teacher-classes", type=int, nargs=2, metavar=("A", "B"), default=None,
                   help="wrap the teacher so that its logits for classes A and B are swapped")
    p.add_argument("--attach", choices=("constructor", "set_teacher"), default="constructor",
                   help="how the teacher is given: DeiT(..., teacher_model_name=module) (default) or "
                        "DeiT(...) then model.set_teacher(module)")
    p.add_argument("--tiny", action="store_true", help="3 teacher epochs and 10 student epochs (~15 s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.tiny:
        args.teacher_epochs, args.student_epochs = 3, 10
    return args


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val); x is (N, 1, 8, 8), normalised with the train statistics."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)  # (1797,)
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=bunch.target)
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        index = order[start:start + batch_size]
        yield x[index], y[index]


def train_teacher(x, y, x_val, y_val, epochs: int, batch_size: int, generator: torch.Generator) -> SmallCNN:
    """Ordinary supervised training in plain PyTorch: nothing of this library."""
    teacher = SmallCNN()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(epochs):
        teacher.train()
        for xb, yb in batches(x, y, batch_size, generator):
            loss = nn.functional.cross_entropy(teacher(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = 100.0 * (teacher.eval()(x_val).argmax(1) == y_val).float().mean().item()
    n_params = sum(p.numel() for p in teacher.parameters())
    print(f"teacher SmallCNN ({n_params / 1e3:.0f}k parameters), {epochs} epochs: val top-1 {accuracy:.2f}%")
    return teacher


def tensor_ids(tensors) -> set[int]:
    """Storage addresses: a state_dict() entry shares its parameter's storage."""
    return {t.data_ptr() for t in tensors}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x, y, x_val, y_val = load_digits_tensors()
    print(f"digits: {len(y)} train / {len(y_val)} val images of shape {tuple(x.shape[1:])}")

    # 1. the teacher: any nn.Module mapping (B, 1, 8, 8) to (B, 10) logits
    teacher: nn.Module = train_teacher(x, y, x_val, y_val, args.teacher_epochs, args.batch_size, generator)
    if args.swap_teacher_classes:
        a, b = args.swap_teacher_classes
        teacher = SwapClasses(teacher, a, b)
        print(f"teacher wrapped in SwapClasses: its logits for classes {a} and {b} are swapped")

    # 2. the student, given the module itself as its teacher
    student_args = dict(num_classes=10, d_model=64, image_size=8, patch_size=2, in_channels=1, encoder_mlp_d=128,
                        encoder_num_heads=2, num_encoder_blocks=4, return_logits_type="fusion")
    if args.attach == "constructor":
        model = DeiT(**student_args, teacher_model_name=teacher, teacher_inputs="student")
    else:  # the same teacher attached after construction
        model = DeiT(**student_args)
        model.set_teacher(teacher, inputs="student")
    assert model.teacher is teacher
    teacher_tensors = tensor_ids([*teacher.parameters(), *teacher.buffers()])  # BatchNorm statistics too
    snapshot = copy.deepcopy(teacher.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    model.train()

    state = model.state_dict()
    leaked_keys = [k for k, v in state.items() if v.data_ptr() in teacher_tensors]
    in_optimizer = teacher_tensors & tensor_ids(p for g in optimizer.param_groups for p in g["params"])
    frozen = all(not p.requires_grad for p in teacher.parameters())
    shown = f" ({', '.join(leaked_keys[:3])}, ...)" if leaked_keys else ""
    print(f"check: teacher tensors in the student's state_dict(): {len(leaked_keys)} of {len(state)} keys{shown}")
    print(f"check: teacher tensors in the student's optimizer: {len(in_optimizer)}")
    print(f"check: teacher frozen (requires_grad=False on all {len(list(teacher.parameters()))} parameters): "
          f"{frozen}; in eval mode after student.train(): {not teacher.training}")
    if leaked_keys or in_optimizer or not frozen or teacher.training:
        print(f"FAILED: with --attach {args.attach} the teacher became part of the student (see the checks above)")
        return 1

    # 3. the distillation loop: hard distillation (paper eq. 2, λ = 1/2)
    criterion = DistillationLoss(nn.CrossEntropyLoss(), distillation_type="hard")
    steps_per_epoch = -(-len(y) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, pct_start=0.1,
                                                    total_steps=args.student_epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(args.student_epochs):
        model.train()
        totals = torch.zeros(3)
        for xb, yb in batches(x, y, args.batch_size, generator):
            (cls_logits, dist_logits), teacher_logits = model(xb)  # teacher: no gradient, eval mode
            terms = criterion.compute(xb, (cls_logits, dist_logits), yb, teacher_outputs=teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            scheduler.step()
            totals += torch.tensor([terms.total.item(), terms.base.item(), terms.distillation.item()]) * len(yb)
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch == args.student_epochs - 1:
            loss, base, distill = (totals / len(y)).tolist()
            print(f"student epoch {epoch + 1}/{args.student_epochs}: loss {loss:.4f} (labels {base:.4f}, "
                  f"teacher {distill:.4f}), {time.perf_counter() - start:.1f} s")
    unchanged = all(torch.equal(snapshot[k], v) for k, v in teacher.state_dict().items())
    print(f"check: teacher weights and BatchNorm statistics unchanged by the student's training: {unchanged}")
    if not unchanged:
        return 1

    # 4. evaluation: each head, their fusion, agreement with the teacher
    model.eval()
    with torch.no_grad():
        fused, teacher_logits = model(x_val)  # eval mode: (fused logits, teacher logits)
        cls_logits, dist_logits = model.forward_heads(model.forward_features(x_val))
    teacher_pred = teacher_logits.argmax(1)

    def pct(mask: torch.Tensor) -> float:
        return 100.0 * mask.float().mean().item()

    heads = {"cls": cls_logits, "dist": dist_logits, "fusion": fused}
    print(f"teacher val top-1 {pct(teacher_pred == y_val):.2f}%")
    print("student val top-1: " + "  ".join(f"{k} {pct(v.argmax(1) == y_val):.2f}%" for k, v in heads.items()))
    print("agreement with the teacher: " + "  ".join(f"{k} {pct(v.argmax(1) == teacher_pred):.2f}%"
                                                   for k, v in heads.items()))
    if args.swap_teacher_classes:
        a, b = args.swap_teacher_classes
        mask = y_val == a
        print(f"on the {int(mask.sum())} val images of class {a}: the teacher says {b} for "
              f"{pct(teacher_pred[mask] == b):.0f}%, the dist head for {pct(dist_logits[mask].argmax(1) == b):.0f}%, "
              f"the cls head for {pct(cls_logits[mask].argmax(1) == b):.0f}%")

    # 5. the student's weights alone; a fresh DeiT of the same arguments loads them
    path = deit.save_model(model, Path(args.output) / "student.safetensors")
    reloaded = DeiT(**student_args)
    deit.load_pretrained(reloaded, path)
    with torch.no_grad():
        same = torch.equal(reloaded.eval().student_model(x_val), fused)
    print(f"saved {path} ({len(model.state_dict())} tensors, no teacher); reloaded into DeiT(...) without a "
          f"teacher: same fused logits: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
