"""Does our ViT learn as fast as timm's, per image seen? (the accuracy-per-image check)

Trains our model and timm's ``VisionTransformer`` of the same shape side by side in one
process: identical initial weights (ours loaded into timm, strict), identical batches, the
same AdamW + one-cycle schedule and the same loss, on Fashion-MNIST (28 px, zero-padded to
the model's size, random shift and flip). Prints test top-1 of both after each epoch.

The point is to separate what the architecture and budget allow from what the
implementation does: if both reach the same accuracy after the same number of images, a
slow climb is the model's, not a bug of ours.

    .venv/bin/python benchmarks/sample_efficiency.py --model deit_pico_patch4_32 --epochs 1
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from deit.bench.harness import timm_equivalent
from deit.data.datasets import load_dataset
from deit.models import create_model


def _tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("fashion-mnist", split)
    images = torch.tensor(ds.images, dtype=torch.float32).div_(255.0)   # (N, 28, 28)
    return images, torch.from_numpy(ds.targets_array)           # (N,)


def _prepare(images: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    pad = (size - images.shape[-1]) // 2
    x = ((images - mean) / std).unsqueeze(1)                    # (B, 1, 28, 28)
    return F.pad(x, (pad, pad, pad, pad), value=-mean / std)    # (B, 1, size, size)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=generator) < 0.5
    x = torch.where(flip, x.flip(3), x)
    size = x.shape[-1]
    padded = F.pad(x, (2, 2, 2, 2), value=float(x[0, 0, 0, 0]))  # (B, 1, size+4, size+4)
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[:, :, dy:dy + size, dx:dx + size]


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 500):
        logits = model(x[start:start + 500])
        logits = logits[0] if isinstance(logits, tuple) else logits   # (B, classes)
        correct += int((logits.argmax(1) == y[start:start + 500]).sum())
    model.train()
    return 100.0 * correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deit_pico_patch4_32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    ours = create_model(args.model, num_classes=10, in_channels=1)
    peer = timm_equivalent(ours)
    peer.load_state_dict(ours.state_dict(), strict=True)
    models = {"ours": ours, "timm": peer}

    train_x, train_y = _tensors("train")
    test_x, test_y = _tensors("val")
    mean, std = float(train_x.mean()), float(train_x.std())
    size = ours.image_size
    test_x = _prepare(test_x, size, mean, std)                  # (10000, 1, size, size)

    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=0.05) for k, m in models.items()}
    schedules = {k: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=args.lr, total_steps=total, pct_start=0.1)
                 for k, o in optimizers.items()}
    generator = torch.Generator().manual_seed(args.seed)
    elapsed = dict.fromkeys(models, 0.0)
    print(f"{args.model}: {sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M parameters, "
          f"{steps_per_epoch} steps/epoch, lr {args.lr}, batch {args.batch_size}")
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = _augment(_prepare(train_x[index], size, mean, std), generator)   # (B, 1, size, size)
            y = train_y[index]
            for key, model in models.items():
                start = time.perf_counter()
                logits = model(x)
                logits = logits[0] if isinstance(logits, tuple) else logits
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
                optimizers[key].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[key].step()
                schedules[key].step()
                elapsed[key] += time.perf_counter() - start
        accs = {key: _accuracy(model, test_x, test_y) for key, model in models.items()}
        print(f"epoch {epoch + 1}: test top-1 " + ", ".join(f"{k} {a:.2f} %" for k, a in accs.items())
              + " | train s " + ", ".join(f"{k} {t:.0f}" for k, t in elapsed.items()), flush=True)


if __name__ == "__main__":
    main()
