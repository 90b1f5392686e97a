"""Why ``deit demo`` trains its two students side by side: training images/s of a small
student's step with 2 intra-op threads, with 1, and two 1-thread processes at once.

Each measurement is the real training step (forward, cross-entropy, backward, AdamW) of a
registered model on random 28 px grey batches of 128, timed over ``--steps`` steps after 3
untimed ones; the side-by-side figure is the two processes' images/s added up. Run it
alone on the machine:

    .venv/bin/python benchmarks/side_by_side.py                       # the demo's student and teacher
    .venv/bin/python benchmarks/side_by_side.py --models deit_nano_convstem_patch8_28
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from deit import create_model


def step_rate(name: str, threads: int, steps: int, batch: int = 128) -> float:
    """Training images/s of ``name`` on ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    start = 0.0
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def measure(name: str, steps: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        two_threads = pool.submit(step_rate, name, 2, steps).result()
        one_thread = pool.submit(step_rate, name, 1, steps).result()
        pair = [pool.submit(step_rate, name, 1, steps) for _ in range(2)]
        side_by_side = sum(f.result() for f in pair)
    return {"one process, 2 threads": two_threads, "one process, 1 thread": one_thread,
            "two processes, 1 thread each (sum)": side_by_side,
            "side by side / one process with 2 threads": side_by_side / two_threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["deit_pico_convstem_patch8_28", "resnet14_32"])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    for name in args.models:
        print(name, json.dumps({k: round(v, 2) for k, v in measure(name, args.steps).items()}), flush=True)


if __name__ == "__main__":
    main()
