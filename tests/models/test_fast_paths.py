"""The speed paths of issue 4 compute the same function as the plain code:
no-grad block fast path, bf16 emulation on CPUs without bf16 units, allocator tuning."""
import pytest
import torch
import torch.nn.functional as F

from deit.models import layers, precision
from deit.models.registry import create_model


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


def test_emulated_bf16_linear_is_bf16_operands_with_fp32_accumulation():
    x, w, b = torch.randn(5, 64), torch.randn(32, 64), torch.randn(32)
    with torch.autocast("cpu", dtype=torch.bfloat16), precision.EmulatedBf16():
        out = F.linear(x, w, b)
    r = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, (r(x) @ r(w).T + r(b)).to(torch.bfloat16), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["deit_pico_distilled_patch4_32", "convnext_atto_32"])
def test_bf16_autocast_matches_pytorch_kernels(name):
    """Our bf16 path (emulated where the CPU has no bf16 units) against PyTorch's own bf16
    kernels and against fp32: the same numbers up to bf16 rounding."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        fp32 = model(x)[0] if isinstance(model(x), tuple) else model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(x)
            with precision.no_bf16_emulation():
                native = model(x)
    ours, native = (o[0] if isinstance(o, tuple) else o for o in (ours, native))
    assert ours.dtype == native.dtype
    scale = fp32.abs().max().item()
    assert (ours.float() - native.float()).abs().max().item() < 0.05 * scale
    assert (ours.float() - fp32).abs().max().item() < 0.05 * scale
    assert precision.bf16_emulation_needed() is False  # outside autocast


def test_allocator_tuning_is_idempotent_and_optional(monkeypatch):
    from deit import runtime

    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("DEIT_MALLOC_TUNING", "0")
    assert runtime.tune_cpu_allocator() is False
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.delenv("DEIT_MALLOC_TUNING")
    first = runtime.tune_cpu_allocator()
    assert runtime.tune_cpu_allocator() is first
    assert runtime.cpu_allocator_tuned() is first


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
