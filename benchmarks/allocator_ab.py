"""A/B of glibc's allocator settings (``deit.train.runtime.ALLOCATOR_ENV``) in separate processes.

    .venv/bin/python benchmarks/allocator_ab.py                 # 5 pairs, DeiT-Ti⚗ + ConvNeXt-Atto step, batch 32
    .venv/bin/python benchmarks/allocator_ab.py --pairs 7 --steps 10

Each process times the training step of ``deit benchmark`` (distilled student + frozen
ConvNeXt teacher + ``DistillationLoss`` hard + our AdamW, fp32) after a few warm-up steps,
with glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set as ``ALLOCATOR_ENV`` says
(tuned) or unset (the process as Python starts it). Processes
run one at a time, strictly alternating tuned / untuned, so that load from other tenants
of the machine drifts over both arms alike; each pair gives one ratio
(untuned step time ÷ tuned step time, > 1 means the tuning is faster) and the verdict is
their median. Per process it also reports the process's CPU time per step (user + kernel,
all threads: less sensitive than wall-clock time to other tenants taking the cores), and
minor page faults and kernel time per step, the two numbers the tuning is meant to change
(see ``deit/train/runtime.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def worker(args: argparse.Namespace) -> None:
    import torch
    from timm.loss import LabelSmoothingCrossEntropy

    from deit.distill.losses import DistillationLoss
    from deit.models import create_model
    from deit.train.optim import build_optimizer

    torch.manual_seed(0)
    student = create_model(args.model)
    teacher = create_model(args.teacher, num_classes=student.num_classes).eval()
    student.set_teacher(teacher, inputs="student")
    student.train()
    criterion = DistillationLoss(LabelSmoothingCrossEntropy(0.1), distillation_type="hard")
    optimizer = build_optimizer(student, lr=1e-4, weight_decay=0.05)
    x = torch.randn(args.batch_size, 3, student.image_size, student.image_size)  # (B, 3, H, W)
    y = torch.randint(0, student.num_classes, (args.batch_size,))  # (B,)

    def step() -> None:
        outputs, teacher_logits = student(x)
        loss = criterion(x, outputs, y, teacher_outputs=teacher_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)  # user + kernel time of all threads
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(dict(step_s=statistics.median(times), times_s=times,
                          cpu_s=statistics.median(cpu_times), cpu_times_s=cpu_times,
                          minor_faults_per_step=(after.ru_minflt - before.ru_minflt) / args.steps,
                          kernel_s_per_step=(after.ru_stime - before.ru_stime) / args.steps,
                          threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability())))


def run_one(args: argparse.Namespace, tuning: bool) -> dict:
    from deit.train.runtime import ALLOCATOR_ENV

    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    if tuning:
        env.update(ALLOCATOR_ENV)
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--teacher", args.teacher,
           "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    parser.add_argument("--teacher", default="convnext_atto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (median taken)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--json", help="also write every process's numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.model} + {args.teacher} teacher, batch {args.batch_size}, fp32 training step; "
          f"{args.warmup} warm-up + {args.steps} timed steps per process, {args.pairs} pairs (tuned, untuned)",
          flush=True)
    pairs = []
    for i in range(args.pairs):
        on, off = run_one(args, True), run_one(args, False)
        ratio, cpu_ratio = off["step_s"] / on["step_s"], off["cpu_s"] / on["cpu_s"]
        pairs.append(dict(tuned=on, untuned=off, ratio=ratio, cpu_ratio=cpu_ratio))
        print(f"pair {i + 1}: tuned {on['step_s']:.3f} s/step (CPU {on['cpu_s']:.2f} s, "
              f"{on['minor_faults_per_step']:.0f} faults, {on['kernel_s_per_step']:.2f} s kernel), "
              f"untuned {off['step_s']:.3f} s/step (CPU {off['cpu_s']:.2f} s, {off['minor_faults_per_step']:.0f} "
              f"faults, {off['kernel_s_per_step']:.2f} s kernel): untuned / tuned = {ratio:.3f} wall, "
              f"{cpu_ratio:.3f} CPU", flush=True)
    median = statistics.median(p["ratio"] for p in pairs)
    cpu_median = statistics.median(p["cpu_ratio"] for p in pairs)
    print(f"median ratio untuned / tuned over {len(pairs)} pairs: {median:.3f} wall-clock "
          f"({'>=' if median >= 1.05 else '<'} 1.05), {cpu_median:.3f} process CPU time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings=vars(args), pairs=pairs, median_ratio=median, median_cpu_ratio=cpu_median), f,
                      indent=2)


if __name__ == "__main__":
    main()
