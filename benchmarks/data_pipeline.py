"""Is the data path ever the bottleneck?

Measures, in one process, images/s of
  1. the training loader of a run config alone (decode once, timm transforms, sampler) —
     the replayable loader ``deit train`` uses (every view drawn under a generator state
     seeded from seed, epoch and position: ``deit/data/replay.py``) and, for its price,
     the same loader drawing from the global generators, and
  2. the training step of the same config alone (student + teacher + loss + AdamW) on a
     batch already in memory,
and prints their ratio. With ``num_workers=0`` (the default: workers compete for the same 2
cores) the loader's time adds to the step's, so the loader costs 1/ratio of the epoch.

    .venv/bin/python benchmarks/data_pipeline.py configs/fashion/student_hard.yaml
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from deit.data import build_loader
from deit.distill.losses import DistillationLoss, build_base_criterion
from deit.distill.teachers import load_teacher
from deit.models.deit import DeiT
from deit.train import distributed
from deit.train.engine import _split_outputs
from deit.train.optim import build_optimizer
from deit.train.run import build_data, build_model
from deit.train.settings import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a deit train YAML config (its teacher checkpoint may be absent)")
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    config = load_config(args.config, {"progress": False})
    train_loader, _, classes, data = build_data(config, distributed.detect())

    def rate(loader) -> tuple[float, list]:
        start = time.perf_counter()
        batches = list(itertools.islice(iter(loader), args.batches))
        return sum(len(b[0]) for b in batches) / (time.perf_counter() - start), batches

    plain_loader = build_loader(train_loader.dataset.dataset, batch_size=config.batch_size, is_train=True,
                                repeated_aug=config.repeated_aug, seed=config.seed)  # global generators
    before, _ = rate(plain_loader)
    loader_rate, batches = rate(train_loader)
    after, _ = rate(plain_loader)  # plain before and after the replayable one: against drift on a shared machine
    plain_rate = (before + after) / 2

    model = build_model(config, len(classes), data["image_size"], data["in_channels"]).train()
    if config.teacher_model and config.distillation_type != "none":
        try:
            teacher = load_teacher(config.teacher_model, num_classes=len(classes), in_channels=data["in_channels"],
                                   image_size=data["image_size"], checkpoint=config.teacher_checkpoint)
        except Exception:  # noqa: BLE001 - speed only: random weights cost the same
            from deit.distill.teachers import resolve_teacher_name
            from deit.weights.factory import create_model

            name = resolve_teacher_name(config.teacher_model, data["image_size"])
            teacher = create_model(name, num_classes=len(classes), in_channels=data["in_channels"])
        if isinstance(model, DeiT):
            model.set_teacher(teacher, inputs="student")
    criterion = DistillationLoss(build_base_criterion(mixup_active=False, smoothing=config.smoothing),
                                 distillation_type=config.distillation_type if isinstance(model, DeiT) and
                                 model.teacher is not None else "none")
    optimizer = build_optimizer(model, 1e-4, config.weight_decay)
    images, targets = batches[0][:2]

    def step() -> None:
        student, teacher_out = _split_outputs(model, model(images))
        criterion(images, student, targets, teacher_outputs=teacher_out).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    model_rate = len(images) / statistics.median(times)
    result = {"config": args.config, "loader_images_per_s": loader_rate,
              "loader_without_replay_images_per_s": plain_rate, "replay_over_plain_loader": loader_rate / plain_rate,
              "train_step_images_per_s": model_rate,
              "loader_over_model": loader_rate / model_rate,
              "loader_share_of_epoch": model_rate / (loader_rate + model_rate)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
