"""Where the time goes: torch.profiler op tables for inference and a training step.

    .venv/bin/python benchmarks/profile_ops.py                       # ours, DeiT-S inference + DeiT-Ti step
    .venv/bin/python benchmarks/profile_ops.py --impl timm --rows 12

Prints the ops sorted by self CPU time and the process's page faults / kernel time per
call, the two views that guided the speed work (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import resource

import torch
from torch.profiler import ProfilerActivity, profile

from deit.bench.harness import same_weights


def _logits_pair(model, x):
    out = model.student_model(x) if hasattr(model, "student_model") else model(x)
    return out if isinstance(out, tuple) else (out, out)


def profile_call(label: str, fn, rows: int) -> None:
    fn()  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\n== {label}: {after.ru_minflt - before.ru_minflt} minor page faults, "
          f"{after.ru_stime - before.ru_stime:.2f} s kernel time, {after.ru_utime - before.ru_utime:.2f} s user time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("ours", "timm"), default="ours")
    parser.add_argument("--inference-model", default="deit_small_distilled_patch16_224")
    parser.add_argument("--train-model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    impls = same_weights(args.inference_model, with_hf=False)[0]
    model, size = impls[args.impl].eval(), impls["ours"].image_size
    x = torch.randn(args.batch_size, impls["ours"].in_channels, size, size)

    def infer() -> None:
        with torch.inference_mode():
            _logits_pair(model, x)
    profile_call(f"{args.impl} {args.inference_model} inference, batch {args.batch_size}", infer, args.rows)

    train_impls = same_weights(args.train_model, with_hf=False)[0]
    student, ref = train_impls[args.impl].train(), train_impls["ours"]
    x = torch.randn(args.batch_size, ref.in_channels, ref.image_size, ref.image_size)
    if args.impl == "timm":
        student.set_distilled_training(True)

    def step() -> None:
        cls_logits, dist_logits = _logits_pair(student, x)
        (cls_logits.logsumexp(-1).mean() + dist_logits.logsumexp(-1).mean()).backward()
    profile_call(f"{args.impl} {args.train_model} forward + backward, batch {args.batch_size}", step, args.rows)


if __name__ == "__main__":
    main()
