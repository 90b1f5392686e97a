"""``deit benchmark``: our models against timm and HF transformers, in one process.

Every implementation gets the *same weights* (HF's random init, converted into ours by
:func:`deit.weights.layouts.adapt_state_dict`, then ours into timm — their outputs are checked
equal before anything is timed), the same inputs, the same thread count and the same
precision mode. Timed repeats are interleaved (ours, timm, HF, ours, …) so that a noisy
neighbour on the machine slows every implementation alike; figures are reported as medians
with their spread and as ratios ours ÷ peer.

Measured in the same run:

* the machine's GEMM peak (a large square ``torch.mm``) in fp32 and in each reduced
  precision that runs, so that model throughput can be expressed as
  MFU = FLOPs/image × images/s ÷ peak;
* model FLOPs per image from :func:`deit.models.flops.count_flops` (matmuls, convolutions and
  attention; multiply-add = 2 FLOPs);
* peak memory: on CUDA ``max_memory_allocated``; on CPU the peak rise of the process's
  resident set above its level before the call, sampled every millisecond in a separate,
  untimed call (freed heap is returned to the OS with ``malloc_trim`` first).

The training step of ours is the product's: DeiT⚗ student + frozen ConvNeXt teacher
(channels-last, inference mode) + :class:`deit.distill.losses.DistillationLoss` + our AdamW. The
peer is timm's model in distilled-training mode + an identical teacher as the official
code runs it (``torch.no_grad``, default memory format) + a plain re-statement of the
official ``DistillationLoss`` + timm's ``create_optimizer_v2("adamw")``. The ``distill`` task
races, with the paper's teacher: ours with the live teacher (``ours``), ours with the
teacher's outputs from the teacher cache (``ours_cached``), ours undistilled
(``ours_undistilled``), that timm-based step (``timm``) and timm's own distillation task
(``timm_task``: :class:`timm.task.TokenDistillationTask`, ``timm/task/token_distillation.py``,
hard, weights ½ and ½, around the same teacher).

bf16 on a CPU without bf16 matrix units (:func:`deit.train.runtime.native_cpu_bf16`) is not
timed: PyTorch runs it as a scalar fallback there, and ``deit train --amp`` runs fp32 on
such a CPU (:func:`deit.train.runtime.resolve_amp`); the report names the mode as skipped.

This module is a tool, not part of the library: it imports the peers (timm's and HF
transformers' DeiT) and only the ``deit benchmark`` command imports it.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from deit.core.errors import ConfigError
from deit.core.fileio import write_text_atomic
from deit.distill.losses import DistillationLoss
from deit.models.flops import count_flops
from deit.train import distributed, runtime
from deit.train.optim import build_optimizer
from deit.train.run import resolve_device
from deit.weights.factory import create_model
from deit.weights.layouts import adapt_state_dict

if TYPE_CHECKING:
    from tempfile import TemporaryDirectory

    from deit.distill.cache import TeacherCache

DEFAULT_INFERENCE_MODEL = "deit_small_distilled_patch16_224"
DEFAULT_TRAIN_MODEL = "deit_tiny_distilled_patch16_224"
DEFAULT_TEACHER = "convnext_atto"
DEFAULT_DISTILL_TEACHER = "regnety_160"  # the paper's teacher (Table 2), a timm model with random weights
TASKS = ("inference", "train", "distill", "deploy")
PEERS = ("timm", "hf")
FLAGS = {"inference_batch": "--batch-size", "train_batch": "--train-batch-size", "repeats": "--repeats",
         "tasks": "--tasks", "peers": "--peers", "modes": "--modes"}


# --- timing and memory primitives ---------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory of one call of ``fn`` above what was in use before it (see module doc)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not Path("/proc/self/statm").exists():
        return None
    runtime.release_free_memory()
    baseline = _rss_bytes()
    peak, done = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss_bytes())
    return peak - baseline


def gemm_peak_flops(dtype: torch.dtype, device: torch.device, *, size: int = 2048, repeats: int = 10,
                    warmup: int = 3) -> float:
    """This machine's achievable matmul rate: the best FLOP/s of ``repeats`` timed
    ``size``² @ ``size``² products after ``warmup`` untimed ones (interference only ever
    slows a run down, so the best is the least disturbed). Several warm-ups: after one, a
    2-core CPU can still be cold (thread pool, pages), halving the peak and doubling the MFU."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    times = [time_once(lambda: torch.mm(a, b, out=out), device) for _ in range(repeats)]
    return 2 * size ** 3 / min(times)


# --- records -----------------------------------------------------------------------------

@dataclass
class Measurement:
    """One implementation in one mode: images/s over the timed repeats."""

    task: str  # inference | train
    mode: str  # fp32 | bf16 | fp16 | compile
    impl: str  # ours | timm | hf
    model: str
    batch_size: int
    times_s: list[float]
    flops_per_image: float | None = None
    peak_memory_mb: float | None = None
    peak_flops: float | None = None  # the GEMM peak of the mode's dtype, for MFU
    max_abs_diff_vs_ours: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.batch_size / statistics.median(self.times_s)

    @property
    def spread(self) -> tuple[float, float]:
        """(slowest, fastest) images/s over the repeats."""
        return self.batch_size / max(self.times_s), self.batch_size / min(self.times_s)

    @property
    def mfu(self) -> float | None:
        if not self.flops_per_image or not self.peak_flops:
            return None
        return self.flops_per_image * self.images_per_s / self.peak_flops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(images_per_s=self.images_per_s, images_per_s_spread=list(self.spread), mfu=self.mfu)
        return data


VARIANT_RATIOS = (
    ("distill", "ours_cached", "timm"),  # our step with the teacher's outputs from the cache ÷ timm's, live teacher
    ("distill", "ours_cached", "ours_undistilled"),  # what is left of the teacher's cost
    ("distill", "ours", "timm_task"),  # our step ÷ timm's TokenDistillationTask, live teacher both
    ("distill", "ours_cached", "timm_task"),  # from the cache ÷ timm's task, live teacher
    ("deploy", "ours_int8", "timm"),  # ours int8 (ONNX Runtime) ÷ timm fp32 eager
    ("deploy", "ours_int8", "timm_int8"),  # ÷ timm quantised by hand (torch.ao dynamic quantisation)
    ("deploy", "ours_int8", "timm_compiled"),
    ("deploy", "ours_compiled", "timm_compiled"),
)
"""Ratios between variants of an implementation: ``task/mode/<ours variant>_over_<peer>``
(``ours`` itself over a peer variant such as ``timm_task`` too)."""


@dataclass
class BenchmarkReport:
    environment: dict[str, Any]
    gemm_peak_flops: dict[str, float]
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def find(self, task: str, mode: str, impl: str) -> Measurement | None:
        for m in self.measurements:
            if (m.task, m.mode, m.impl) == (task, mode, impl):
                return m
        return None

    def ratio(self, task: str, mode: str, peer: str) -> float | None:
        """images/s of ours ÷ the peer's, measured in the same process."""
        ours, other = self.find(task, mode, "ours"), self.find(task, mode, peer)
        if ours is None or other is None:
            return None
        return ours.images_per_s / other.images_per_s

    def ratios(self) -> dict[str, float]:
        """``task/mode/ours_over_peer`` and, for the variants, ``task/mode/<variant>_over_<peer>``."""
        out = {}
        for m in self.measurements:
            if m.impl not in PEERS:  # variants (ours_int8, timm_compiled, ...) only in VARIANT_RATIOS
                continue
            value = self.ratio(m.task, m.mode, m.impl)
            if value is not None:
                out[f"{m.task}/{m.mode}/ours_over_{m.impl}"] = value
        for (task, ours, peer) in VARIANT_RATIOS:
            for m in self.measurements:
                if m.task == task and m.impl == ours:
                    other = self.find(task, m.mode, peer)
                    if other is not None:
                        out[f"{task}/{m.mode}/{ours}_over_{peer}"] = m.images_per_s / other.images_per_s
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(environment=self.environment, gemm_peak_flops=self.gemm_peak_flops,
                    measurements=[m.to_dict() for m in self.measurements], ratios=self.ratios(),
                    skipped=self.skipped)

    @staticmethod
    def _ours_column(m: Measurement) -> bool:
        """Whether the table's "ours ÷ this" column is filled for ``m``: the peers, and the
        peer variants that plain ours is raced against (``VARIANT_RATIOS``)."""
        return m.impl in PEERS or (m.task, "ours", m.impl) in VARIANT_RATIOS

    def format_table(self) -> str:
        peaks = ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in self.gemm_peak_flops.items())
        lines = [f"GEMM peak (measured now): {peaks}; {self.environment['threads']} threads, "
                 f"{self.environment['device']}",
                 "| task | mode | impl | model | batch | images/s (median) | spread (min–max) | "
                 "ours ÷ this | GFLOPs/img | MFU | peak mem MB | max |Δ| vs ours |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in self.measurements:
            plain = self.ratio(m.task, m.mode, m.impl) if self._ours_column(m) else None
            ratio = "" if plain is None else f"{plain:.2f}"
            low, high = m.spread
            lines.append(
                f"| {m.task} | {m.mode} | {m.impl} | {m.model} | {m.batch_size} | "
                f"{m.images_per_s:.1f} | "
                f"{low:.1f}–{high:.1f} | {ratio} | "
                f"{'' if m.flops_per_image is None else f'{m.flops_per_image / 1e9:.2f}'} | "
                f"{'' if m.mfu is None else f'{m.mfu:.2f}'} | "
                f"{'' if m.peak_memory_mb is None else f'{m.peak_memory_mb:.0f}'} | "
                f"{'' if m.max_abs_diff_vs_ours is None else f'{m.max_abs_diff_vs_ours:.1e}'} |")
        variants = {k: v for k, v in self.ratios().items() if k.split("/")[-1].split("_over_")[0] != "ours"}
        if variants:
            lines.append("variants: " + ", ".join(f"{k} ×{v:.2f}" for k, v in variants.items()))
        for note in self.skipped:
            lines.append(f"note: {note}")
        return "\n".join(lines)


# --- the implementations, with one set of weights --------------------------------------------

def build_hf_deit(ours: nn.Module) -> nn.Module:
    """HF transformers' ``DeiTForImageClassificationWithTeacher`` shaped like ``ours``."""
    import transformers

    cfg = transformers.DeiTConfig(
        hidden_size=ours.embed_dim, num_hidden_layers=len(ours.blocks),
        num_attention_heads=ours.blocks[0].attn.num_heads,
        intermediate_size=ours.blocks[0].mlp.fc1.out_features, image_size=ours.image_size,
        patch_size=ours.patch_embed.patch_size, num_channels=ours.in_channels, num_labels=ours.num_classes,
        layer_norm_eps=ours.norm.eps, hidden_act="gelu")
    return transformers.DeiTForImageClassificationWithTeacher(cfg)


def timm_equivalent(ours: nn.Module) -> nn.Module:
    """timm's ``VisionTransformer`` / ``VisionTransformerDistilled`` with our model's shape
    (the classes behind timm's ``deit_*`` names; also covers our small-image variants)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls = VisionTransformerDistilled if getattr(ours, "num_prefix_tokens", 1) == 2 else VisionTransformer
    block = ours.blocks[0]
    return cls(img_size=ours.image_size, patch_size=ours.patch_embed.patch_size, in_chans=ours.in_channels,
               num_classes=ours.num_classes, embed_dim=ours.embed_dim, depth=len(ours.blocks),
               num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / ours.embed_dim)


def same_weights(model_name: str, *, with_hf: bool) -> tuple[dict[str, nn.Module], list[str]]:
    """``{"ours", "timm", "hf"}`` models holding identical weights (HF's init converted)."""
    skipped: list[str] = []
    ours = create_model(model_name)
    impls: dict[str, nn.Module] = {"ours": ours}
    if with_hf and getattr(ours, "num_prefix_tokens", 1) == 2:
        hf = build_hf_deit(ours)
        sd, keep = adapt_state_dict(hf.state_dict(), ours)
        assert not keep, f"HF weights left {keep} at init"
        ours.load_state_dict(sd, strict=True)
        impls["hf"] = hf
    elif with_hf:
        skipped.append(f"HF transformers: {model_name} has no distillation token; HF's DeiT classes always "
                       "carry one (use a *_distilled_* model to compare with HF)")
    peer = timm_equivalent(ours)
    peer.load_state_dict(ours.state_dict(), strict=True)
    impls["timm"] = peer
    return impls, skipped


def _logits(impl: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if impl == "hf":
        return model(pixel_values=x).logits
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def _autocast(mode: str, device: torch.device):
    if mode in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


# --- the benchmark ---------------------------------------------------------------------------

@dataclass
class BenchmarkConfig:
    inference_model: str = DEFAULT_INFERENCE_MODEL
    train_model: str = DEFAULT_TRAIN_MODEL
    teacher: str = DEFAULT_TEACHER
    inference_batch: int = 32
    train_batch: int = 32
    modes: tuple[str, ...] | None = None  # None: fp32 + bf16 on CPU; + fp16 and compile on CUDA
    tasks: tuple[str, ...] = TASKS
    distill_teacher: str = DEFAULT_DISTILL_TEACHER
    distill_image_size: int | None = None  # None: the train model's own
    deploy_compile: bool = True  # deploy: also torch.compile ours and timm's (about a minute each on CPU)
    peers: tuple[str, ...] = ("timm", "hf")
    warmup: int = 1
    repeats: int = 5
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def validate(self) -> "BenchmarkConfig":
        """Raise :class:`deit.core.errors.ConfigError` naming the first invalid setting and its flag."""
        for name in ("inference_batch", "train_batch", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"benchmark {name}={value!r} is invalid; expected an integer >= 1 "
                                  f"({FLAGS[name]})")
        if self.warmup < 0:
            raise ConfigError(f"benchmark warmup={self.warmup!r} is invalid; expected an integer >= 0 (--warmup)")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"benchmark threads={self.threads!r} is invalid; expected an integer >= 1 (--threads)")
        for name, allowed in (("tasks", TASKS), ("peers", PEERS),
                              ("modes", ("fp32", "bf16", "fp16", "compile"))):
            bad = [v for v in getattr(self, name) or () if v not in allowed]
            if bad:
                raise ConfigError(f"benchmark {name} has {', '.join(map(repr, bad))}; expected a subset of "
                                  f"{', '.join(allowed)} ({FLAGS[name]})")
        return self


def default_modes(device: torch.device) -> tuple[str, ...]:
    return ("fp32", "bf16", "fp16", "compile") if device.type == "cuda" else ("fp32", "bf16")


def environment(device: torch.device) -> dict[str, Any]:
    import timm

    env = dict(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
               python=platform.python_version(), machine=platform.machine(), processor=platform.processor(),
               cpu_count=os.cpu_count(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
               native_cpu_bf16=runtime.native_cpu_bf16())
    with contextlib.suppress(ImportError):
        import transformers
        env["transformers"] = transformers.__version__
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
                       repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def _maybe_compile(model: nn.Module, mode: str) -> nn.Module:
    return torch.compile(model) if mode == "compile" else model


class _Phase:
    """One (task, mode) cell of the benchmark."""

    def __init__(self, cfg: BenchmarkConfig, device: torch.device, mode: str, report: BenchmarkReport,
                 flops: dict[tuple[str, str], float]) -> None:
        self.cfg, self.device, self.mode = cfg, device, mode
        self.report, self.flops = report, flops
        self.peak = report.gemm_peak_flops.get(mode if mode in ("bf16", "fp16") else "fp32")

    def record(self, task: str, model: str, batch: int, fns: dict[str, Callable[[], Any]],
               diffs: dict[str, float] | None = None, flops_from: dict[str, str] | None = None) -> None:
        """Time ``fns`` interleaved and record them. ``flops_from`` maps an implementation
        whose FLOPs cannot be counted (ONNX Runtime, compiled code) to the eager one it
        computes the same function as."""
        times = _interleaved_times(fns, self.device, self.cfg.warmup, self.cfg.repeats)
        for impl, fn in fns.items():
            key = (task, (flops_from or {}).get(impl, impl))
            if key not in self.flops and self.mode != "compile":  # compiled code: eager's count
                self.flops[key] = count_flops(fns[key[1]]) / batch
            memory = peak_memory_bytes(fn, self.device)
            self.report.measurements.append(Measurement(
                task, self.mode, impl, model, batch, times[impl], flops_per_image=self.flops.get(key),
                peak_memory_mb=None if memory is None else memory / 2 ** 20,
                peak_flops=None if impl.endswith("_int8") else self.peak,  # no int8 GEMM peak measured: no MFU
                max_abs_diff_vs_ours=(diffs or {}).get(impl)))


def bench_inference(phase: _Phase) -> None:
    cfg, device, mode = phase.cfg, phase.device, phase.mode
    impls, skipped = same_weights(cfg.inference_model, with_hf="hf" in cfg.peers)
    phase.report.skipped.extend(s for s in skipped if s not in phase.report.skipped)
    impls = {k: v for k, v in impls.items() if k == "ours" or k in cfg.peers}
    batch = cfg.inference_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    ref = impls["ours"]
    x = torch.randn(batch, ref.in_channels, ref.image_size, ref.image_size, generator=gen).to(device)
    models = {k: _maybe_compile(v.to(device).eval(), mode) for k, v in impls.items()}

    def runner(impl: str) -> Callable[[], torch.Tensor]:
        model = models[impl]

        def run() -> torch.Tensor:
            with torch.inference_mode(), _autocast(mode, device):
                return _logits(impl, model, x)
        return run

    fns = {impl: runner(impl) for impl in models}
    outputs = {impl: fn().float() for impl, fn in fns.items()}
    diffs = {impl: (out - outputs["ours"]).abs().max().item() for impl, out in outputs.items() if impl != "ours"}
    phase.record("inference", cfg.inference_model, batch, fns, diffs)


class OfficialDistillationLoss(nn.Module):
    """The official repository's ``DistillationLoss`` restated plainly (hard and soft), as
    the peer's objective. Note the official soft term divides by ``numel`` and runs the
    teacher under ``torch.no_grad`` in the default memory format."""

    def __init__(self, base_criterion: nn.Module, teacher: nn.Module, distillation_type: str, alpha: float,
                 tau: float) -> None:
        super().__init__()
        self.base_criterion, self.teacher = base_criterion, teacher
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor],
                labels: torch.Tensor) -> torch.Tensor:
        outputs, outputs_kd = outputs
        base_loss = self.base_criterion(outputs, labels)
        with torch.no_grad():
            teacher_outputs = self.teacher(inputs)
        if self.distillation_type == "soft":
            T = self.tau
            distillation_loss = F.kl_div(F.log_softmax(outputs_kd / T, dim=1),
                                         F.log_softmax(teacher_outputs / T, dim=1),
                                         reduction="sum", log_target=True) * (T * T) / outputs_kd.numel()
        else:
            distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
        return base_loss * (1 - self.alpha) + distillation_loss * self.alpha


def official_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, mode: str, device: torch.device) -> Callable[[], torch.Tensor]:
    """The peer's training step: timm's model, the official loss (teacher inside), timm's AdamW.
    The step returns its loss (detached)."""
    def step() -> torch.Tensor:
        with _autocast(mode, device):
            loss = criterion(x, model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def timm_token_distillation_task(student: nn.Module, teacher: nn.Module, criterion: nn.Module,
                                 device: torch.device) -> nn.Module:
    """timm's own DeiT⚗ objective around ``student`` (a ``VisionTransformerDistilled``):
    :class:`timm.task.TokenDistillationTask` (``timm/task/token_distillation.py``) with the hard
    distillation of the paper, λ = ½ on both terms, i.e. ½ ``criterion``(class head, labels) +
    ½ CE(distillation head, argmax of ``teacher``) — ours with ``alpha=0.5``. The task runs
    ``teacher`` under ``torch.no_grad`` on the inputs moved from the student's normalisation
    (``pretrained_cfg`` mean/std) to the teacher's; the student is given the teacher's, so that
    move is the identity and both see the same pixels, as in the other rows."""
    from timm.task import TokenDistillationTask

    cfg = getattr(teacher, "pretrained_cfg", None) or {}
    # the student gets the teacher's mean/std, so the task's move of the inputs to the teacher's normalisation is
    # the identity: the teacher sees x as is, as in the other rows (defaults: DistillationTeacher's, for a teacher
    # without a pretrained_cfg); checked below
    student.pretrained_cfg = {**(getattr(student, "pretrained_cfg", None) or {}),
                              "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                              "std": tuple(cfg.get("std", (0.229, 0.224, 0.225)))}
    task = TokenDistillationTask(student, teacher, criterion=criterion, distill_type="hard", task_loss_weight=0.5,
                                 distill_loss_weight=0.5, device=device, verbose=False)
    same = (torch.equal(task.student_mean, task.teacher.mean_kd)  # (1, C, 1, 1) each
            and torch.equal(task.student_std, task.teacher.std_kd))
    if not same:
        raise RuntimeError("timm's distillation task would renormalise the teacher's inputs")
    return task.train()


def task_step(task: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, mode: str,
              device: torch.device) -> Callable[[], torch.Tensor]:
    """A training step of a timm task (``task(x, y)["loss"]``, teacher inside) with timm's
    AdamW, as :func:`official_step` times it. The step returns its loss (detached)."""
    def step() -> torch.Tensor:
        with _autocast(mode, device):
            loss = task(x, y)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def bench_train(phase: _Phase) -> None:
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    cfg, device, mode = phase.cfg, phase.device, phase.mode
    impls, _ = same_weights(cfg.train_model, with_hf=False)
    ours, peer = impls["ours"].to(device), impls["timm"].to(device)
    if getattr(ours, "num_prefix_tokens", 1) != 2:
        raise ConfigError(f"the training benchmark needs a distilled model (*_distilled_*), got {cfg.train_model} "
                          "(--train-model)")
    teacher = create_model(cfg.teacher, num_classes=ours.num_classes, in_channels=ours.in_channels).eval()
    peer_teacher = copy.deepcopy(teacher).to(device).requires_grad_(False)  # as the official code: NCHW, no_grad
    ours.set_teacher(teacher, inputs="student")  # ours: frozen, channels-last, inference mode
    peer.set_distilled_training(True)
    criterion = DistillationLoss(LabelSmoothingCrossEntropy(0.1), distillation_type="hard")
    peer_criterion = OfficialDistillationLoss(LabelSmoothingCrossEntropy(0.1), peer_teacher, "hard", 0.5, 3.0)
    optimizer = build_optimizer(ours, lr=1e-4, weight_decay=0.05)
    peer_optimizer = create_optimizer_v2(peer, "adamw", lr=1e-4, weight_decay=0.05)
    ours_train, peer_train = _maybe_compile(ours.train(), mode), _maybe_compile(peer.train(), mode)
    batch = cfg.train_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(batch, ours.in_channels, ours.image_size, ours.image_size, generator=gen).to(device)
    y = torch.randint(0, ours.num_classes, (batch,), generator=gen).to(device)

    def ours_step() -> None:
        with _autocast(mode, device):
            student, teacher_logits = ours_train(x)
            loss = criterion(x, student, y, teacher_outputs=teacher_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    peer_step = official_step(peer_train, peer_criterion, peer_optimizer, x, y, mode, device)
    phase.record("train", f"{cfg.train_model} + {cfg.teacher} teacher", batch, {"ours": ours_step, "timm": peer_step})


def distill_steps(cfg: BenchmarkConfig, device: torch.device, mode: str,
                  skipped: list[str]) -> tuple[dict[str, Callable[[], torch.Tensor]], TeacherCache, TemporaryDirectory]:
    """The steps :func:`bench_distill` races, all from the same student weights on the same
    batch with the same teacher, each returning its loss (detached): ``(steps, cache, folder)``
    with the :class:`deit.distill.cache.TeacherCache` the cached step reads and the temporary
    folder of its shard (the caller cleans it up). A row that cannot run is left out with a
    reason appended to ``skipped``."""
    import tempfile

    import timm
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    from deit.distill.cache import TeacherCache

    overrides = {} if cfg.distill_image_size is None else {"image_size": cfg.distill_image_size}
    reference = create_model(cfg.train_model, **overrides)
    if getattr(reference, "num_prefix_tokens", 1) != 2:
        raise ConfigError(f"the distillation benchmark needs a distilled model (*_distilled_*), got "
                          f"{cfg.train_model} (--train-model)")
    students = {}
    for impl in ("ours", "ours_cached", "ours_undistilled"):
        students[impl] = create_model(cfg.train_model, **overrides)
        students[impl].load_state_dict(reference.state_dict())
        students[impl].to(device).train()
    peer = timm_equivalent(reference)
    peer.load_state_dict(reference.state_dict(), strict=True)
    peer.to(device).train().set_distilled_training(True)
    teacher = timm.create_model(cfg.distill_teacher, num_classes=reference.num_classes,
                                in_chans=reference.in_channels).eval().requires_grad_(False)
    peer_teacher = copy.deepcopy(teacher).to(device)  # as the official code: NCHW, torch.no_grad
    students["ours"].set_teacher(teacher, inputs="student")  # frozen, channels-last, inference mode
    batch = cfg.train_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    size = reference.image_size
    x = torch.randn(batch, reference.in_channels, size, size, generator=gen).to(device)
    y = torch.randint(0, reference.num_classes, (batch,), generator=gen).to(device)
    keys = torch.stack([torch.zeros(batch, dtype=torch.int64), torch.arange(batch)], dim=1)  # (B, 2)
    folder = tempfile.TemporaryDirectory(prefix="deit-bench-cache-")
    cache = TeacherCache(directory=Path(folder.name), identity={"benchmark": cfg.distill_teacher}, teacher=teacher,
                         num_classes=reference.num_classes, kind="hard", batch_size=batch, samples_per_epoch=batch,
                         machine="benchmark")
    with torch.inference_mode():
        cache.targets(x, keys)  # a miss: the teacher runs once and the shard is written
    cache.release()
    hard = DistillationLoss(LabelSmoothingCrossEntropy(0.1), distillation_type="hard")
    plain = DistillationLoss(LabelSmoothingCrossEntropy(0.1), distillation_type="none")
    optimizers = {impl: build_optimizer(model, lr=1e-4, weight_decay=0.05) for impl, model in students.items()}
    peer_criterion = OfficialDistillationLoss(LabelSmoothingCrossEntropy(0.1), peer_teacher, "hard", 0.5, 3.0)
    peer_optimizer = create_optimizer_v2(peer, "adamw", lr=1e-4, weight_decay=0.05)

    def ours_step(impl: str) -> Callable[[], torch.Tensor]:
        model, optimizer = students[impl], optimizers[impl]

        def step() -> torch.Tensor:
            with _autocast(mode, device):
                student, teacher_out = model(x)
                if impl == "ours_cached":
                    teacher_out = cache.targets(x, keys)  # (B, K) from the shard file
                    cache.release()  # re-read from disk next step: no help from memory
                loss = (plain if impl == "ours_undistilled" else hard)(x, student, y, teacher_outputs=teacher_out)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()
        return step

    fns = {impl: ours_step(impl) for impl in students}
    fns["timm"] = official_step(peer, peer_criterion, peer_optimizer, x, y, mode, device)
    try:
        import timm.task  # noqa: F401 (older timm has no tasks)
    except ImportError:
        skipped.append(f"distill row 'timm_task': timm {timm.__version__} has no timm.task (TokenDistillationTask)")
    else:
        task_student = timm_equivalent(reference)  # its own copy of the weights, as every row
        task_student.load_state_dict(reference.state_dict(), strict=True)
        task_student.to(device)
        task = timm_token_distillation_task(task_student, peer_teacher, LabelSmoothingCrossEntropy(0.1), device)
        task_optimizer = create_optimizer_v2(task_student, "adamw", lr=1e-4, weight_decay=0.05)
        fns["timm_task"] = task_step(task, task_optimizer, x, y, mode, device)
    return fns, cache, folder


def bench_distill(phase: _Phase) -> None:
    """A DeiT⚗ training step with the paper's teacher (RegNetY-16GF through timm, random
    weights): ours with the live teacher, ours with the teacher's outputs from a
    :class:`deit.distill.cache.TeacherCache` (read from its shard file on disk at every
    step), ours without distillation, the timm-based equivalent with the live teacher as the
    official code runs it, and timm's own :class:`timm.task.TokenDistillationTask` with the
    same live teacher (:func:`distill_steps`)."""
    cfg = phase.cfg
    fns, cache, folder = distill_steps(cfg, phase.device, phase.mode, phase.report.skipped)
    try:
        phase.record("distill", f"{cfg.train_model} + {cfg.distill_teacher} teacher", cfg.train_batch, fns)
    finally:
        folder.cleanup()
    hits = cache.stats.hits
    if cache.stats.misses != cfg.train_batch or hits < 1:
        raise RuntimeError(f"the cached step did not read the cache ({cache.stats})")


def bench_deploy(phase: _Phase) -> None:
    """CPU inference as deployed: ours and timm's in fp32 eager, int8 (ours: the ONNX Runtime
    file of ``deit export --quantize int8``; timm: quantised by hand with
    ``torch.ao.quantization.quantize_dynamic``, deprecated in torch 2.14 but what a timm
    user reaches for) and ``torch.compile``-d (``deploy_compile``)."""
    import tempfile
    import warnings

    import onnxruntime as ort

    from deit.deploy.export import ExportHead, export_model

    cfg, device = phase.cfg, phase.device
    if device.type != "cpu":
        phase.report.skipped.append("task 'deploy': int8 through ONNX Runtime's CPU kernels is a CPU measurement")
        return
    impls, _ = same_weights(cfg.inference_model, with_hf=False)
    ours, peer = ExportHead(impls["ours"].eval()), impls["timm"].eval()
    batch = cfg.inference_batch
    gen = torch.Generator().manual_seed(cfg.seed)
    ref = impls["ours"]
    x = torch.randn(batch, ref.in_channels, ref.image_size, ref.image_size, generator=gen)
    with tempfile.TemporaryDirectory(prefix="deit-bench-int8-") as folder:
        path, _ = export_model(ref, Path(folder) / "int8.onnx", quantize="int8")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch's implementations
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        from torch.ao.quantization import quantize_dynamic

        peer_int8 = quantize_dynamic(copy.deepcopy(peer), {nn.Linear}, dtype=torch.qint8)
    models: dict[str, Callable[[], torch.Tensor]] = {}

    def eager(model: nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                out = model(x)
            return out[0] if isinstance(out, tuple) else out
        return run

    models["ours"], models["timm"] = eager(ours), eager(peer)
    x_numpy = x.numpy()
    models["ours_int8"] = lambda: torch.from_numpy(session.run(None, {"images": x_numpy})[0])
    models["timm_int8"] = eager(peer_int8)
    flops_from = {"ours_int8": "ours", "timm_int8": "timm"}
    if cfg.deploy_compile:
        models["ours_compiled"], models["timm_compiled"] = eager(torch.compile(ours)), eager(torch.compile(peer))
        flops_from.update(ours_compiled="ours", timm_compiled="timm")
    outputs = {impl: fn().float() for impl, fn in models.items()}  # compiles here, before any timing
    diffs = {impl: (out - outputs["ours"]).abs().max().item() for impl, out in outputs.items() if impl != "ours"}
    phase.record("deploy", cfg.inference_model, batch, models, diffs, flops_from=flops_from)


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = print) -> BenchmarkReport:
    """Run every (task, mode) cell; see the module docstring."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device, distributed.detect())
    modes = list(cfg.modes or default_modes(device))
    skipped = []
    if "bf16" in modes and device.type == "cpu" and not runtime.native_cpu_bf16():
        modes.remove("bf16")
        skipped.append(f"mode 'bf16': this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 matrix "
                       "units (AVX512-BF16 / AMX), PyTorch's bf16 kernels are a scalar fallback here and deit "
                       "train --amp runs fp32 on it; not timed")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    peaks = {name: gemm_peak_flops(dtype, device) for name, dtype in dtypes.items() if name == "fp32" or name in modes}
    report = BenchmarkReport(environment(device), peaks, skipped=skipped)
    log("GEMM peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()))
    flops: dict[tuple[str, str], float] = {}
    report.environment["allocator"] = {name: os.environ[name] for name in runtime.ALLOCATOR_ENV if name in os.environ}
    for mode in modes:
        for task in cfg.tasks:
            if task in ("distill", "deploy") and mode != "fp32":
                continue  # the long ones: fp32 only
            log(f"{task} {mode} ...")
            BENCHES[task](_Phase(cfg, device, mode, report, flops))
    heavy = [task for task in cfg.tasks if task in ("distill", "deploy")]
    if heavy and "fp32" not in modes:
        report.skipped.append(f"task(s) {', '.join(heavy)}: measured in fp32 only, and no fp32 cell ran (--modes)")
    return report


BENCHES = {"inference": bench_inference, "train": bench_train, "distill": bench_distill, "deploy": bench_deploy}


def write_json(report: BenchmarkReport, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=2, default=str)
    write_text_atomic(path, text + "\n")
    return path
