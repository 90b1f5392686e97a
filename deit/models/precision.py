"""bf16 autocast on CPUs without bf16 matrix units.

PyTorch runs bf16 matmuls and convolutions through oneDNN only on CPUs with AVX512-BF16
or AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). Elsewhere — e.g. every AVX2
machine — ``torch.autocast("cpu", torch.bfloat16)`` falls back to a scalar kernel: we
measured 0.7–1.3 GFLOP/s against 150–180 GFLOP/s for fp32 on the same 2 cores, which makes
a bf16 DeiT forward ~100x slower than fp32.

On such CPUs our models compute those ops the way bf16 hardware does — operands rounded
to bf16, products accumulated in fp32, the result rounded to bf16 — but with the fp32
kernels: :class:`EmulatedBf16` intercepts ``linear``, ``conv2d``, ``matmul``/``bmm`` and
``scaled_dot_product_attention`` while a model of this library runs under CPU bf16
autocast. Every other op keeps autocast's own policy (LayerNorm and softmax in fp32,
element-wise ops in bf16). Where native kernels exist, nothing is intercepted.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, TypeVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_INTERCEPTED = frozenset({F.linear, F.conv2d, F.scaled_dot_product_attention, torch.matmul, torch.bmm,
                          torch.Tensor.matmul, torch.Tensor.__matmul__})
T = TypeVar("T", bound=Callable[..., Any])


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 matmul kernels (AVX512-BF16 / AMX) that PyTorch uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _round_bf16(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()  # bf16 operand, fp32 storage for the fp32 kernel
    return value


class EmulatedBf16(TorchFunctionMode):
    """Run the matrix ops in fp32 kernels with bf16 rounding of operands and results."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _INTERCEPTED:
            return func(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            out = func(*[_round_bf16(a) for a in args], **{k: _round_bf16(v) for k, v in kwargs.items()})
        return out.to(torch.bfloat16)


class _State(threading.local):
    enabled = True  # False inside no_bf16_emulation()
    active = False  # an outer forward of ours already emulates


_state = _State()


def bf16_emulation_needed() -> bool:
    return (_state.enabled and not _state.active and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and not native_cpu_bf16())


def cpu_bf16_emulated(method: T) -> T:
    """Decorator for a model's forward methods: emulate bf16 matrix ops when needed."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not bf16_emulation_needed() or torch.compiler.is_compiling():
            return method(*args, **kwargs)
        _state.active = True
        try:
            with EmulatedBf16():
                return method(*args, **kwargs)
        finally:
            _state.active = False
    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def no_bf16_emulation():
    """Within this context our models use PyTorch's own bf16 kernels (for comparisons)."""
    saved = _state.enabled
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = saved
