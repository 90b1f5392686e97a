"""Building blocks of the vision transformer: patch embedding, attention, MLP, block.

Parameter names follow timm / the official DeiT code (``patch_embed.proj``,
``blocks.i.attn.qkv``, ``blocks.i.mlp.fc1`` …) so that official checkpoints load
with at most a load-time filter (:mod:`deit.weights.layouts`), never a change here.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_choice, check_image_values

PATCHIFY_TECHNIQUES = ("linear", "convolutional", "conv_stem")


class ConvBnAct(nn.Module):
    """3x3 convolution, BatchNorm, ReLU: one step of the convolutional stem (timm's
    ``ConvNormAct`` names: ``conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def conv_stem_channels(d_model: int, patch_size: int) -> list[int]:
    """Output channels of the stem's stride-2 3x3 convolutions for ``patch_size``: one per
    factor of two in it, doubling up to ``d_model`` (Xiao et al. 2021, "Early Convolutions
    Help Transformers See Better", §3: 24-48-96-192 for a width-192 ViT at patch 16)."""
    count = (patch_size & -patch_size).bit_length() - 1  # factors of two in the patch size
    return [max(d_model >> (count - 1 - i), 8) for i in range(count)]


def conv_stem_grid(image_size: int, patch_size: int) -> int:
    """Token grid side of the convolutional stem: each stride-2, padding-1 3x3 convolution
    maps a side ``n`` to ``ceil(n / 2)``, then ``proj`` floors by what remains of the patch.
    A side that is not a multiple of the patch keeps its border (28 px at patch 8: 28 -> 14
    -> 7 -> 4, a 4x4 grid), where a plain patchify would need ``image_size % patch_size == 0``."""
    side, rest = image_size, patch_size
    while rest % 2 == 0:
        side, rest = -(-side // 2), rest // 2
    return side // rest


class PatchEmbed(nn.Module):
    """Split an image into patches and project each to ``d_model``: tokens (B, N, D).

    ``technique="convolutional"``: a ``Conv2d(kernel=stride=patch_size)``; weight
    ``(D, C, p, p)`` as in timm and the official checkpoints.
    ``technique="linear"``: unfold the patches and apply ``nn.Linear``; weight
    ``(D, C*p*p)`` with the features ordered ``(C, p_h, p_w)``, i.e. exactly
    ``conv_weight.reshape(D, -1)``, so both techniques compute the same function
    given the same weights (the checkpoint filter converts between them).
    ``technique="conv_stem"``: the convolutional stem of Xiao et al. 2021 (§3): one
    stride-2 3x3 Conv-BN-ReLU (``stem.i``) per factor of two in ``patch_size``, with
    channels doubling up to ``d_model`` (:func:`conv_stem_channels`), then ``proj``, a
    ``Conv2d`` whose kernel and stride are what remains of the patch (1x1 for a power of
    two). Each token then sees overlapping 3x3 neighbourhoods instead of one patch, which
    makes small-data transformers learn far faster (Xiao et al. 2021, Fig. 1). The grid is
    :func:`conv_stem_grid`, so ``image_size`` need not be a multiple of ``patch_size``.
    """

    def __init__(self, *, image_size: int, patch_size: int, in_channels: int, d_model: int,
                 technique: str = "convolutional") -> None:
        super().__init__()
        check_choice("patchify_technique", technique, PATCHIFY_TECHNIQUES)
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.technique = technique
        side = conv_stem_grid(image_size, patch_size) if technique == "conv_stem" else image_size // patch_size
        self.grid_size = (side, side)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if technique == "convolutional":
            self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size)
        elif technique == "conv_stem":
            if patch_size % 2:
                raise ConfigError(f"patch_size={patch_size} does not fit patchify_technique='conv_stem': the stem "
                                  "halves the image with each convolution, so the patch size needs a factor of two "
                                  "(e.g. 4 for 28-32 px images, 16 for 224 px); use 'convolutional' for odd patches")
            channels = conv_stem_channels(d_model, patch_size)
            self.stem = nn.Sequential(*[ConvBnAct(c_in, c_out, stride=2)
                                        for c_in, c_out in zip([in_channels, *channels], channels)])
            rest = patch_size >> len(channels)
            self.proj = nn.Conv2d(channels[-1], d_model, kernel_size=rest, stride=rest)
        else:
            self.proj = nn.Linear(in_channels * patch_size * patch_size, d_model)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming what is wrong with an input batch."""
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"expected an image tensor, got {type(x).__name__}")
        expected = f"(batch, {self.in_channels}, {self.image_size}, {self.image_size})"
        if x.ndim != 4:
            raise ConfigError(f"expected a 4-D image batch of shape {expected}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ConfigError(
                f"expected {self.in_channels} input channel(s) (in_channels), got {x.shape[1]} "
                f"in input of shape {tuple(x.shape)}; expected {expected}"
            )
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ConfigError(
                f"expected images of {self.image_size}x{self.image_size} pixels (image_size), got "
                f"{x.shape[2]}x{x.shape[3]}; resize the input or load the weights into a model with "
                f"image_size={x.shape[2]} (positional embeddings are resampled at load time)"
            )
        check_image_values(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.technique == "conv_stem":
            x = self.stem(x)  # (B, C_k, H/2^k, W/2^k)
        if self.technique != "linear":
            x = self.proj(x)  # (B, D, H/p, W/p)
            return x.flatten(2).transpose(1, 2)  # (B, N, D)
        B, C, H, W = x.shape
        p = self.patch_size
        # b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        x = x.reshape(B, self.num_patches, C * p * p)  # (B, N, C*p*p)
        return self.proj(x)  # (B, N, D)


def linear_drop_path_rates(max_rate: float, count: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``max_rate`` over ``count`` blocks
    (plain Python, so models can also be built on the meta device)."""
    if count == 1:
        return [0.0]
    return [max_rate * i / (count - 1) for i in range(count)]


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop the residual branch per sample."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, ...)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT, Touvron et al. 2021)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA kernels."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, hd)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, hd)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention probabilities, for inspection: (B, H, N, N)."""
        q, k, _ = self.qkv_heads(x)
        return (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)  # (B, H, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv_heads(x)
        dropout_p = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Transformer feed-forward: Linear -> GELU -> Dropout -> Linear -> Dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


INFERENCE_CHUNK_ROWS = 1024  # tokens per MLP chunk in Block.forward_no_grad (a 6 MB hidden chunk for DeiT-S)


def _no_grad_eager(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether :meth:`Block.forward_no_grad` may replace the autograd-friendly forward:
    no gradient wanted, eval mode, no autocast, and no tracer / compiler / exporter looking
    (they get the plain graph, which they optimise themselves); meta tensors (shape-only
    runs, e.g. FLOP counting) take the plain path too."""
    return (not torch.is_grad_enabled() and not module.training and x.device.type != "meta"
            and not torch.is_autocast_enabled(x.device.type)
            and not torch.jit.is_scripting() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


@contextlib.contextmanager
def plain_forward():
    """Within this context every :class:`Block` uses its plain forward (e.g. to count FLOPs:
    the no-grad path's in-place kernels are invisible to torch's flop counter)."""
    saved = Block.fast_inference
    Block.fast_inference = False
    try:
        yield
    finally:
        Block.fast_inference = saved


class Block(nn.Module):
    """Pre-norm transformer encoder block: x + attn(LN(x)), then x + mlp(LN(x)).

    ``fast_inference = False`` (or :func:`plain_forward`) makes it always use the plain
    forward (the no-grad path computes the same function, see :meth:`forward_no_grad`).
    """

    fast_inference: bool = True

    def __init__(self, *, dim: int, num_heads: int, mlp_dim: int, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, layer_scale: float | None = None,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_inference and _no_grad_eager(x, self) and self._plain_linears():
            return self.forward_no_grad(x)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))  # (B, N, D)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))  # (B, N, D)
        return x

    def _plain_linears(self) -> bool:
        """Whether the layers whose weights :meth:`forward_no_grad` reads are float
        ``nn.Linear`` (a quantised model swaps in modules holding packed int8 weights, or int8
        tensor subclasses as weights)."""
        return all(type(layer) is nn.Linear and type(layer.weight) is nn.Parameter
                   for layer in (self.attn.proj, self.mlp.fc2))

    def forward_no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """The same function as :meth:`forward` in eval mode, for inference.

        Outside the GEMMs, the plain forward (timm's ``Block.forward`` in
        ``timm/models/vision_transformer.py`` computes the same) is memory traffic: the
        ``fc1`` and GELU outputs are fresh ``(B, N, 4D)`` tensors, large enough that glibc
        maps new pages for them on every call, and the bias and residual adds are extra
        passes over them. Without autograd nothing has to be kept for a backward pass, so:

        * add the attention projection straight into a new residual (``addmm``) and the
          MLP output into it in place (``addmm_``): no separate residual add;
        * run the MLP over chunks of :data:`INFERENCE_CHUNK_ROWS` tokens so its hidden
          activation stays small, cache-resident and reused, with GELU applied in place.

        The profile behind this and its effect: ``benchmarks/README.md``
        (``benchmarks/profile_ops.py``).
        """
        B, N, D = x.shape
        attn, mlp = self.attn, self.mlp
        q, k, v = attn.qkv_heads(self.norm1(x))  # 3 x (B, H, N, hd)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        a = a.transpose(1, 2).reshape(B * N, D)  # (B*N, D)
        residual = x.reshape(B * N, D)
        if isinstance(self.ls1, LayerScale):
            out = torch.addcmul(residual, attn.proj(a), self.ls1.gamma)  # (B*N, D)
        else:
            out = torch.addmm(residual, a, attn.proj.weight.t()).add_(attn.proj.bias)  # (B*N, D)
        norm2 = self.norm2
        for rows in out.split(INFERENCE_CHUNK_ROWS):  # views into `out`, updated in place
            h = F.layer_norm(rows, (D,), norm2.weight, norm2.bias, norm2.eps)  # (r, D)
            h = torch.ops.aten.gelu_(mlp.fc1(h))  # (r, 4D)
            if isinstance(self.ls2, LayerScale):
                rows.addcmul_(mlp.fc2(h), self.ls2.gamma)
            else:
                rows.addmm_(h, mlp.fc2.weight.t()).add_(mlp.fc2.bias)  # (r, D)
        return out.view(B, N, D)
