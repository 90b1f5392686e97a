"""FLOPs of a model call, from ``torch.utils.flop_counter.FlopCounterMode``.

Counts matmuls, convolutions and attention, a multiply-add as 2 FLOPs (so DeiT-S at 224
gives 9.2 GFLOPs, the paper's "4.6 GFLOPs" of Table 1 being multiply-adds). Used by
``deit list-models --flops`` and by the benchmark's MFU.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from deit.models.layers import plain_forward


def _register_cpu_attention_flops() -> None:
    """torch's flop counter knows the CUDA attention kernels but not the CPU flash kernel
    that ``scaled_dot_product_attention`` runs: give it the formulas torch uses for the CUDA
    ones (``torch/utils/flop_counter.py`` ``sdpa_flop_count``), so that attention is counted
    on every device."""
    from torch.utils import flop_counter as fc

    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in fc.flop_registry and fwd.default not in fc.flop_registry:
        @fc.register_flop_formula(fwd)
        def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if bwd is not None and bwd not in fc.flop_registry and bwd.default not in fc.flop_registry:
        @fc.register_flop_formula(bwd)
        def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``. Our blocks run their plain forward meanwhile
    (:func:`deit.models.layers.plain_forward`): the no-grad path computes the same function
    with in-place kernels (``addmm_``) the counter does not see."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    counter = FlopCounterMode(display=False)
    with plain_forward(), counter:
        fn()
    return int(counter.get_total_flops())
