"""The loops' contract: one host synchronisation per optimizer update (one per evaluation
pass), and a non-finite loss stops the run before that update touches the weights.

A host sync is any call that makes the host wait for a tensor's value (``.item()``,
``.tolist()``, ``bool(t)``, ``float(t)``, ...). On CUDA each one stalls the launch queue;
on the CPU the same calls mark where a GPU run would stall, so they are counted here on a
tiny distilled DeiT with a teacher (the paper's hard-distillation setting, §5.1) on random
32-px images.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from deit.core.errors import DeitError
from deit.distill.losses import DistillationLoss, LossTerms, build_base_criterion
from deit.models import create_model
from deit.train.engine import NonFiniteLossError, evaluate, train_one_epoch
from deit.train.optim import build_optimizer

DEIT_PACKAGE = str(Path(__import__("deit").__file__).resolve().parent)
# Tensor methods that copy a value to the host (waiting for the device to finish)
SYNCING_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__")


INPUT_CHECK = str(Path(DEIT_PACKAGE) / "core" / "validation.py")


@functools.lru_cache(maxsize=None)
def _counted(filename: str) -> bool:
    path = str(Path(filename).resolve())
    return path.startswith(DEIT_PACKAGE) and path != INPUT_CHECK


class SyncCounter:
    """Counts host syncs made from code inside the ``deit`` package (not from torch's own
    optimizer or timm, which keep their bookkeeping tensors on the host).

    The models' NaN/Inf scan of their input batch (``deit.core.validation.check_image_values``)
    is not counted: on a CPU it synchronises nothing, and on CUDA the engine's loops skip it
    (``engine_loop``, tested at the end of this file).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in SYNCING_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name, method):
        def counted(tensor, *args, **kwargs):
            if _counted(sys._getframe(1).f_code.co_filename):
                frame = sys._getframe(1)
                self.calls.append(f"{name} in {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            return method(tensor, *args, **kwargs)

        return counted


def tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    student = create_model("deit_pico_distilled_patch4_32", num_classes=10)
    teacher = create_model("deit_pico_patch4_32", num_classes=10).eval()
    student.set_teacher(teacher, inputs="student")
    criterion = DistillationLoss(build_base_criterion(mixup_active=False, smoothing=0.1), distillation_type="hard")
    optimizer = build_optimizer(student, 1e-3, 0.05)
    return student, criterion, optimizer


def random_batches(count: int, batch: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=generator),  # (B, 3, 32, 32)
             torch.randint(0, 10, (batch,), generator=generator))  # (B,)
            for _ in range(count)]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_one_host_sync_per_optimizer_update(accum_steps, monkeypatch):
    student, criterion, optimizer = tiny_setup()
    loaders = {updates: random_batches(updates * accum_steps, batch=2) for updates in (1, 3)}
    counts = {}
    for updates, loader in loaders.items():
        counter = SyncCounter(monkeypatch)
        _, done = train_one_epoch(student, criterion, loader, optimizer, device=torch.device("cpu"), epoch=0,
                                  num_updates=0, accum_steps=accum_steps)
        assert done == updates
        counts[updates] = counter.calls
        monkeypatch.undo()
    per_update = (len(counts[3]) - len(counts[1])) / 2  # the epoch's fixed cost cancels out
    assert per_update <= 1, counts[3]
    assert len(counts[1]) - per_update <= 1, counts[1]  # per epoch: reading the final metrics


def poison_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss becomes NaN from its ``calls``-th computation on (0-based)."""
    original = DistillationLoss.compute
    seen = []

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        seen.append(1)
        if len(seen) > calls:
            return LossTerms(terms.total * float("nan"), terms.base, terms.distillation)
        return terms

    monkeypatch.setattr(DistillationLoss, "compute", poisoned)


@pytest.mark.parametrize("accum_steps, poisoned_from, expected_step", [(1, 2, 2), (2, 3, 3)])
def test_non_finite_loss_stops_before_the_update(accum_steps, poisoned_from, expected_step, monkeypatch):
    """The update whose micro-batch gave a NaN loss never reaches the weights or the
    optimizer state: they are those left by the previous, finite update."""
    student, criterion, optimizer = tiny_setup()
    loader = random_batches(4 * accum_steps)
    finite_updates = poisoned_from // accum_steps
    train_one_epoch(student, criterion, loader[: finite_updates * accum_steps], optimizer,
                    device=torch.device("cpu"), epoch=0, num_updates=0, accum_steps=accum_steps)
    before = snapshot(student)
    optimizer_steps = [int(s["step"]) for s in optimizer.state.values()]

    student, criterion, optimizer = tiny_setup()
    poison_after(poisoned_from, monkeypatch)
    with pytest.raises(NonFiniteLossError, match=f"loss is nan at epoch 3, step {expected_step} ") as caught:
        train_one_epoch(student, criterion, loader, optimizer, device=torch.device("cpu"), epoch=3,
                        num_updates=0, accum_steps=accum_steps)
    assert isinstance(caught.value, DeitError) and isinstance(caught.value, RuntimeError)
    assert "--clip-grad" in str(caught.value) and "distillation" in str(caught.value)
    after = snapshot(student)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [int(s["step"]) for s in optimizer.state.values()] == optimizer_steps


def test_evaluation_reads_the_device_once_per_pass(monkeypatch):
    student, _, _ = tiny_setup()
    teacher = student.teacher
    counts = {}
    for batches in (1, 3):
        loader = random_batches(batches, batch=8)
        counter = SyncCounter(monkeypatch)
        metrics = evaluate(student, loader, device=torch.device("cpu"), teacher=teacher)
        counts[batches] = counter.calls
        monkeypatch.undo()
    assert len(counts[3]) == len(counts[1]) <= 1, counts
    # the counts match a direct computation: fusion of the two heads (paper §5.2), teacher argmax
    images = torch.cat([x for x, _ in loader])  # (24, 3, 32, 32)
    targets = torch.cat([y for _, y in loader])  # (24,)
    with torch.no_grad():
        fused = student.eval().student_model(images)  # (24, 10)
        agree = fused.argmax(1) == teacher(images).argmax(1)  # (24,)
        top5 = fused.topk(5, dim=1).indices.eq(targets[:, None]).any(1)  # (24,)
    assert metrics["count"] == 24
    assert metrics["acc1"] == pytest.approx(100 * (fused.argmax(1) == targets).float().mean().item())
    assert metrics["acc5"] == pytest.approx(100 * top5.float().mean().item())
    assert metrics["teacher_agreement"] == pytest.approx(100 * agree.float().mean().item())
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(fused, targets).item(), rel=1e-5)


def test_cuda_forwards_inside_the_engine_loops_skip_the_input_scan(monkeypatch):
    """The teacher and evaluation run without gradients, so only the loop marker keeps their
    NaN/Inf input scan (a device synchronisation on CUDA) out of the loops."""
    from deit.core import validation as _validation

    class CudaBatch:  # what check_image_values looks at, without a GPU
        shape = (2, 3, 32, 32)
        device = torch.device("cuda")

        def is_floating_point(self):
            return True

    scanned = []
    monkeypatch.setattr(_validation, "_check_finite", scanned.append)
    batch = CudaBatch()
    with torch.no_grad():
        _validation.check_image_values(batch)  # inference: scanned
        with _validation.engine_loop():
            _validation.check_image_values(batch)  # inside a training or evaluation loop: not scanned
    cpu = torch.zeros(2, 3, 4, 4)
    with _validation.engine_loop():
        _validation.check_image_values(cpu)  # on CPU the scan costs no synchronisation: always done
    assert scanned == [batch, cpu]
