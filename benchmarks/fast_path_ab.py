"""A/B of the no-grad Block fast path (``deit.models.layers.Block.forward_no_grad``) against the
plain forward, and of ours against timm, in separate processes.

    .venv/bin/python benchmarks/fast_path_ab.py                   # DeiT-S⚗ fp32 inference, batch 32, 5 rounds
    .venv/bin/python benchmarks/fast_path_ab.py --json benchmarks/results/fast_path_ab.json

Each process builds ``--model`` (ours) or timm's model of the same name with the same weights
(``deit.bench.harness.same_weights``), runs ``--warmup`` batches and times ``--steps`` batches of
fp32 inference under ``torch.inference_mode`` (the median per process). The arms are

``fast``   ours as shipped (the no-grad fast path on)
``plain``  ours under ``deit.models.layers.plain_forward()`` (the fast path off)
``timm``   timm's ``VisionTransformerDistilled`` with the same weights

and one round runs each once, in that order, strictly one process at a time, so that load from
other tenants drifts over every arm alike; the verdicts are the medians over rounds of the
per-round ratios plain ÷ fast (what the fast path gains) and timm ÷ fast (ours against timm;
> 1 means ours is faster). Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ARMS = ("fast", "plain", "timm")


def worker(args: argparse.Namespace) -> None:
    import contextlib

    import torch

    from deit.bench.harness import same_weights
    from deit.models import layers

    torch.manual_seed(0)
    impls, _ = same_weights(args.model, with_hf=False)
    model = impls["timm" if args.arm == "timm" else "ours"].eval()
    size = impls["ours"].image_size
    x = torch.randn(args.batch_size, 3, size, size)  # (B, 3, H, W)
    context = layers.plain_forward if args.arm == "plain" else contextlib.nullcontext
    with torch.inference_mode(), context():
        for _ in range(args.warmup):
            model(x)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    print(json.dumps(dict(arm=args.arm, step_s=statistics.median(times), times_s=times,
                          threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability())))


def run_one(args: argparse.Namespace, arm: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--arm", arm, "--model", args.model,
           "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_distilled_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed batches per process (median taken)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write every process's numbers here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{args.model}, fp32 inference, batch {args.batch_size}; {args.warmup} warm-up + {args.steps} timed "
          f"batches per process, {args.rounds} rounds of ({', '.join(ARMS)})", flush=True)
    rounds = []
    for i in range(args.rounds):
        results = {arm: run_one(args, arm) for arm in ARMS}
        fast = results["fast"]["step_s"]
        ratios = dict(plain_over_fast=results["plain"]["step_s"] / fast, timm_over_fast=results["timm"]["step_s"] / fast)
        rounds.append(dict(results=results, **ratios))
        print(f"round {i + 1}: " + ", ".join(f"{arm} {r['step_s']:.3f} s" for arm, r in results.items())
              + f"; plain / fast {ratios['plain_over_fast']:.3f}, timm / fast {ratios['timm_over_fast']:.3f}",
              flush=True)
    summary = {key: statistics.median(r[key] for r in rounds) for key in ("plain_over_fast", "timm_over_fast")}
    spread = {key: (min(r[key] for r in rounds), max(r[key] for r in rounds)) for key in summary}
    print(f"median over {len(rounds)} rounds: the fast path gains ×{summary['plain_over_fast']:.3f} "
          f"({spread['plain_over_fast'][0]:.3f}–{spread['plain_over_fast'][1]:.3f}; it stays only at >= 1.05); "
          f"ours ÷ timm ×{summary['timm_over_fast']:.3f} ({spread['timm_over_fast'][0]:.3f}–"
          f"{spread['timm_over_fast'][1]:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings={k: v for k, v in vars(args).items() if k not in ("worker", "arm")},
                           rounds=rounds, medians=summary, spreads=spread), f, indent=2)


if __name__ == "__main__":
    main()
