"""The speed paths: the no-grad block fast path computes the same function as the plain
code; ``--amp`` with bf16 autocasts only where the CPU has bf16 units; the allocator's
environment variables do what the docs say."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from deit.distill.losses import DistillationLoss
from deit.models import layers
from deit.train import runtime
from deit.train.engine import Amp, evaluate, train_one_epoch
from deit.weights.factory import create_model


def _plain(model, x):
    with layers.plain_forward():
        return model(x)


@pytest.mark.parametrize("layer_scale", [None, 0.1])
@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
def test_no_grad_block_path_equals_plain_forward(monkeypatch, layer_scale, context):
    monkeypatch.setattr(layers, "INFERENCE_CHUNK_ROWS", 7)  # exercise several MLP chunks
    model = create_model("deit_pico_distilled_patch4_32", layer_scale=layer_scale).eval()
    x = torch.randn(3, 3, 32, 32)
    block = model.blocks[0]
    tokens = torch.randn(3, 66, model.embed_dim)
    before = tokens.clone()
    with context():
        fast, plain = block(tokens), _plain(block, tokens)
        assert torch.equal(tokens, before), "the fast path must not modify its input"
        torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
        for kind in ("classification", "distillation", "fusion"):
            model.return_logits_type = kind
            torch.testing.assert_close(model.student_model(x), _plain(model.student_model, x), atol=1e-5, rtol=1e-5)


def test_fast_path_is_not_used_with_autograd_or_in_training():
    model = create_model("deit_pico_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).requires_grad  # plain path: gradients flow
    with torch.no_grad():
        assert layers._no_grad_eager(x, model.blocks[0])
        model.train()
        assert not layers._no_grad_eager(x, model.blocks[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layers._no_grad_eager(x, model.eval().blocks[0])


@pytest.mark.parametrize("native", [False, True])
def test_bf16_amp_autocasts_only_on_a_cpu_with_bf16_units(monkeypatch, caplog, native):
    """``--amp`` (bf16) through the training and evaluation loops: without bf16 units (the
    capability check patched, so this runs on any CPU) one warning naming the CPU's
    capability and fp32 logits; with them, bf16 logits under autocast."""
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: native)
    monkeypatch.setattr(runtime, "_bf16_fallback_reported", False)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="deit.train.runtime"):
        amp = Amp.for_device(True, torch.bfloat16, cpu)
        assert Amp.for_device(True, torch.bfloat16, cpu) == amp  # a second run in the process: no new warning
    warnings = [r.getMessage() for r in caplog.records if r.name == "deit.train.runtime"]
    if native:
        assert amp.enabled and not warnings
    else:
        assert not amp.enabled and len(warnings) == 1
        assert torch.backends.cpu.get_cpu_capability() in warnings[0] and "fp32" in warnings[0]

    torch.manual_seed(0)
    model = create_model("deit_pico_patch4_32", num_classes=10)
    seen = []
    model.head.register_forward_hook(lambda m, i, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu"))))
    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))]
    criterion = DistillationLoss(nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    metrics, updates = train_one_epoch(model, criterion, loader, optimizer, device=cpu, epoch=0, num_updates=0, amp=amp)
    evaluate(model, loader, device=cpu, amp=amp)
    assert updates == 1 and metrics["train_loss"] > 0
    expected = (torch.bfloat16, True) if native else (torch.float32, False)
    assert seen == [expected, expected]  # the training step, then evaluation


def test_fp16_and_disabled_amp_are_left_as_asked(monkeypatch):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert runtime.resolve_amp(False, torch.bfloat16, cpu) is False
    assert runtime.resolve_amp(True, torch.float16, cpu) is True
    assert runtime.resolve_amp(True, torch.bfloat16, torch.device("cuda")) is True  # CUDA decides for itself


_MAPPED = """
import ctypes, numpy as np
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
a = np.ones(8 << 20)  # 64 MiB: above glibc's default mmap threshold
print(libc.mallinfo2().hblkhd >> 20)  # MiB held in mmap'ed chunks
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's environment variables")
def test_the_documented_allocator_variables_keep_activations_in_the_heap():
    """``runtime.ALLOCATOR_ENV`` (docs/training.md): a 64 MiB buffer comes from the heap, where a
    freed one is reused, instead of a fresh mapping that is faulted in and zeroed each time."""
    plain = {k: v for k, v in os.environ.items() if k not in runtime.ALLOCATOR_ENV}
    mapped = {}
    for name, env in (("default", plain), ("tuned", dict(plain, **runtime.ALLOCATOR_ENV))):
        out = subprocess.run([sys.executable, "-c", _MAPPED], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1]}")
        mapped[name] = int(out.stdout)
    assert mapped == {"default": 64, "tuned": 0}


@pytest.mark.slow
def test_torch_compile_gives_the_eager_function():
    """``--compile`` / the benchmark's compile mode: the compiled graph computes what eager does
    (compilers see the plain path: the no-grad fast path steps aside while tracing)."""
    torch.manual_seed(0)
    model = create_model("deit_pico_distilled_patch4_32", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model.student_model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model.student_model(x), atol=1e-4, rtol=1e-4)
