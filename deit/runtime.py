"""Process-level CPU settings: whether bf16 autocast pays on this CPU, and glibc's allocator.

**bf16 on CPU.** PyTorch runs bf16 matmuls and convolutions through oneDNN's bf16 kernels
only on CPUs with AVX512-BF16 or AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``);
elsewhere (every AVX2 machine) ``torch.autocast("cpu", torch.bfloat16)`` falls back to
scalar kernels that are far slower than fp32 (numbers in ``benchmarks/README.md``).
:func:`resolve_amp` therefore turns ``--amp`` with bf16 into plain fp32 on such a CPU,
saying so once (the training and evaluation loops ask it through
:meth:`deit.engine.Amp.for_device`); ``deit benchmark`` skips bf16 there.

**The allocator.** glibc serves every allocation above its mmap threshold (at most 32 MB
by default, ``mallopt(3)``) with a fresh ``mmap`` and returns it with ``munmap`` on free.
A DeiT training step allocates activations of tens of MB, so each step can fault in and
zero its activations again. :func:`tune_cpu_allocator` raises the mmap and trim
thresholds so that this memory stays in the heap and is reused; the process then keeps
its peak heap instead of returning it to the OS between steps. The settings are
process-wide, so a library import never applies them; ``deit train|eval|predict|demo``
call :func:`tune_cpu_allocator`, which follows ``DEIT_MALLOC_TUNING`` (``1`` on, ``0``
off; unset: :data:`TUNING_DEFAULT`, set from the separate-process A/B of
``benchmarks/allocator_ab.py`` recorded in ``benchmarks/README.md``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of freed heap for reuse
TUNING_ENV = "DEIT_MALLOC_TUNING"
TUNING_DEFAULT = False  # without DEIT_MALLOC_TUNING; decided by benchmarks/allocator_ab.py (benchmarks/README.md)

_applied = False
_bf16_fallback_reported = False


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether PyTorch has bf16 matrix kernels on this CPU (AVX512-BF16 / AMX via oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(enabled: bool, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``--amp`` with ``dtype`` should autocast on ``device``.

    bf16 on a CPU without bf16 matrix units runs fp32 instead (autocast off): PyTorch's
    scalar fallback there would make every step many times slower than fp32. A warning
    naming the CPU capability says so, once per process."""
    global _bf16_fallback_reported
    if not (enabled and device.type == "cpu" and dtype == torch.bfloat16) or native_cpu_bf16():
        return enabled
    if not _bf16_fallback_reported:
        _bf16_fallback_reported = True
        log.warning("--amp: this CPU (%s) has no bf16 matrix units (AVX512-BF16 / AMX), where PyTorch's bf16 "
                    "kernels are a slow scalar fallback; running in fp32 instead",
                    torch.backends.cpu.get_cpu_capability())
    return False


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``), e.g. before measuring a
    baseline resident set; a no-op elsewhere."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def allocator_tuning_requested() -> bool:
    """``DEIT_MALLOC_TUNING=1`` asks for the allocator settings, ``=0`` declines them; unset
    (or empty), :data:`TUNING_DEFAULT` decides."""
    value = os.environ.get(TUNING_ENV, "").strip()
    return TUNING_DEFAULT if value == "" else value != "0"


def tune_cpu_allocator(enabled: bool | None = None) -> bool:
    """Raise glibc's mmap/trim thresholds (see module doc), once per process; ``enabled=None``
    follows ``DEIT_MALLOC_TUNING`` (the command-line entry points), ``True`` applies them
    regardless (the benchmark, which prices them). Returns whether they are now in effect:
    ``False`` when not asked for or when the C library is not glibc."""
    global _applied
    if _applied:
        return True
    if not (allocator_tuning_requested() if enabled is None else enabled):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (musl, macOS)
        return False
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def cpu_allocator_tuned() -> bool:
    return bool(_applied)
