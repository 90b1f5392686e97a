"""Process-level CPU settings: whether bf16 autocast pays on this CPU, and glibc's allocator.

**bf16 on CPU.** PyTorch runs bf16 matmuls and convolutions through oneDNN's bf16 kernels
only on CPUs with AVX512-BF16 or AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``);
elsewhere (every AVX2 machine) ``torch.autocast("cpu", torch.bfloat16)`` falls back to
scalar kernels that are far slower than fp32 (numbers in ``benchmarks/README.md``).
:func:`resolve_amp` therefore turns ``--amp`` with bf16 into plain fp32 on such a CPU,
saying so once (the training and evaluation loops ask it through
:meth:`deit.train.engine.Amp.for_device`); ``deit benchmark`` skips bf16 there.

**The allocator.** glibc serves every allocation above its mmap threshold (at most 32 MB
by default, ``mallopt(3)``) with a fresh ``mmap`` and returns it with ``munmap`` on free, so
a training step can fault in and zero its activations again. glibc reads its own settings
from the environment at start-up, so no code is needed to change them::

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 deit train ...

keeps allocations up to 1 GiB in the heap and up to 2 GiB of freed heap for reuse
(:data:`ALLOCATOR_ENV`; the separate-process A/B of ``benchmarks/allocator_ab.py`` and its
verdict are in ``benchmarks/README.md``). :func:`release_free_memory` hands freed heap back
(``malloc_trim``), e.g. before measuring a baseline resident set.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

import torch

log = logging.getLogger(__name__)

# glibc's tunables as environment variables (mallopt(3), "ENVIRONMENT"): what they are set to, to keep
# a training step's activations in the heap (see the module docstring)
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1)}

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
