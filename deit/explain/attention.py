"""What a ViT / DeiT looks at: attention maps, attention rollout and cls/dist similarity.

* :func:`attention_maps` — every block's softmax attention probabilities, recomputed from
  the block's own ``qkv`` weights and the very input its attention received in a forward
  pass of the model (captured with forward hooks; the model code is not changed).
* :func:`attention_rollout` — Abnar & Zuidema (2020), "Quantifying Attention Flow in
  Transformers", §3: the residual connection is accounted for by ``Â = 0.5·A + 0.5·I``
  (rows re-normalised), and the attention of the output tokens to the input tokens is
  approximated by the product ``Â_L · … · Â_1``. The row of the class token (or of DeiT's
  distillation token) over the patch columns is a saliency map of the image. Heads are
  fused by mean (the paper), max or min; optionally the lowest weights are discarded
  first (a common denoising step of rollout implementations).
* :func:`token_similarity` — cosine similarity of DeiT's class and distillation tokens
  through the encoder. The DeiT paper (Touvron et al. 2021, §4, "Distillation token")
  reports 0.06 for the learned tokens at the input and 0.93 at the last layer: the two
  embeddings start nearly orthogonal and become similar through the network, yet not
  identical. (Our input value is taken after the position embedding is added, so it can
  differ a little from the similarity of the bare token parameters.)
* :func:`overlay` and :func:`visualize` — PNG overlays for an image file and a checkpoint
  (``deit visualize``), with the checkpoint's own preprocessing, as ``deit predict``.

Token layout: ViT ``[cls, patches…]`` (``num_prefix_tokens = 1``), DeiT
``[cls, dist, patches…]`` (``num_prefix_tokens = 2``); patches in row-major grid order.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deit.core.errors import ConfigError
from deit.core.figures import new_figure
from deit.core.fileio import atomic_write
from deit.core.validation import check_choice
from deit.data import load_image
from deit.deploy.predict import Predictor, load_for_inference
from deit.models.layers import Block, plain_forward

__all__ = [
    "COLORMAPS",
    "HEAD_FUSIONS",
    "VisualizeReport",
    "attention_maps",
    "attention_rollout",
    "discard_lowest",
    "format_similarity",
    "fuse_heads",
    "overlay",
    "readable",
    "token_similarity",
    "unit_range",
    "visualize",
]

HEAD_FUSIONS = ("mean", "max", "min")
COLORMAPS = ("jet", "inferno")
TOKEN_NAMES = ("cls", "dist")  # sequence index 0 and 1
PER_LAYER_PANEL_PIXELS = 224  # the image in each panel of the per-layer grid is at most this size
READABLE_PIXELS = 224  # overlays are written with at least this shorter side (small images enlarged)


# --- capturing what the model computes ---------------------------------------------------

def _check_transformer(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a ViT / DeiT of this library."""

    blocks = getattr(model, "blocks", None)
    if (not isinstance(model, nn.Module) or not hasattr(model, "forward_features")
            or not isinstance(blocks, nn.Sequential) or len(blocks) == 0
            or not all(isinstance(b, Block) for b in blocks)):
        raise ConfigError(f"model must be a ViT or DeiT of this library (deit.models), got "
                          f"{type(model).__name__}; attention maps need its transformer blocks")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the context (no dropout: the attention is deterministic); every
    submodule's own training flag is restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


@dataclass
class _Trace:
    attention: list[torch.Tensor] = field(default_factory=list)  # per block, (B, H, N, N)
    tokens: list[torch.Tensor] = field(default_factory=list)  # encoder input, then each block's output (B, N, D)
    features: torch.Tensor | None = None  # forward_features output, (B, N, D)


def _model_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"x must be an image tensor (B, C, H, W), got {type(x).__name__}")
    ref = model.pos_embed
    return x.to(device=ref.device, dtype=ref.dtype if x.is_floating_point() else None)


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor, *, attention: bool = True, tokens: bool = True) -> _Trace:
    """One forward pass of ``model.forward_features`` recording, through forward hooks,
    each block's attention probabilities and the token representations.

    :func:`deit.models.layers.plain_forward` makes every block take its plain forward,
    which calls ``block.attn`` as a module (the no-grad fast path computes the same
    function inline, so attention hooks would not fire there).
    """

    _check_transformer(model)
    trace = _Trace()

    def record_attention(attn: nn.Module, args: tuple) -> None:
        trace.attention.append(attn.attention_map(args[0]))  # args[0]: norm1 output (B, N, D) -> (B, H, N, N)

    def record_input(block: nn.Module, args: tuple) -> None:
        trace.tokens.append(args[0].detach().clone())  # (B, N, D)

    def record_output(block: nn.Module, args: tuple, output: torch.Tensor) -> None:
        trace.tokens.append(output.detach().clone())  # clone: a later in-place op must not change it

    handles = []
    try:
        for i, block in enumerate(model.blocks):
            if attention:
                handles.append(block.attn.register_forward_pre_hook(record_attention))
            if tokens:
                if i == 0:
                    handles.append(block.register_forward_pre_hook(record_input))
                handles.append(block.register_forward_hook(record_output))
        with _eval_mode(model), plain_forward():
            trace.features = model.forward_features(_model_input(model, x))  # (B, N, D)
    finally:
        for handle in handles:
            handle.remove()
    depth = len(model.blocks)
    if (attention and len(trace.attention) != depth) or (tokens and len(trace.tokens) != depth + 1):
        raise RuntimeError(f"captured {len(trace.attention)} attention maps and {len(trace.tokens)} token states "
                           f"for {depth} blocks: a block bypassed its attention module")
    return trace


def attention_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per block, the attention probabilities (B, heads, N, N) the model uses on ``x``.

    ``x`` is a preprocessed image batch (B, C, H, W); ``N = num_prefix_tokens + num_patches``.
    Row ``i`` is the distribution of token ``i``'s attention over all tokens (rows sum to 1).
    Runs without gradients and in eval mode (dropout off); the model's modes are restored.
    """
    return _trace(model, x, tokens=False).attention


def token_similarity(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Cosine similarity of the class and distillation tokens, averaged over the batch:
    at the encoder input (after the position embedding) and after each block, so
    ``num_blocks + 1`` values. The final LayerNorm is not applied.

    Raises ``ValueError`` for a model without a distillation token (a ViT).
    """
    _check_distilled(model)
    return _cls_dist_similarity(_trace(model, x, attention=False).tokens)


def _cls_dist_similarity(states: Sequence[torch.Tensor]) -> list[float]:
    """Batch-mean cosine similarity of tokens 0 and 1 in each (B, N, D) state."""
    return [float(F.cosine_similarity(s[:, 0].float(), s[:, 1].float(), dim=-1).mean()) for s in states]


def _check_distilled(model: nn.Module) -> None:
    if getattr(model, "num_prefix_tokens", 1) < 2 or not hasattr(model, "dist_token"):
        raise ConfigError(f"model ({type(model).__name__}) has no distillation token; the cls/dist token "
                          "similarity needs a DeiT with a distillation token (a *_distilled_* model)")


# --- attention rollout -------------------------------------------------------------------

def _check_maps(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """Validate a list of (B, H, N, N) attention maps; returns ``(B, N)``."""
    if isinstance(maps, torch.Tensor) or not isinstance(maps, Sequence) or len(maps) == 0:
        raise ConfigError(f"maps must be a non-empty list of attention tensors of shape (B, heads, N, N), "
                          f"one per block, got {type(maps).__name__}")
    first = maps[0]
    for i, a in enumerate(maps):
        if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ConfigError(f"maps[{i}] has shape {shape}; expected (B, heads, N, N)")
        if (a.shape[0], a.shape[-1]) != (first.shape[0], first.shape[-1]):
            raise ConfigError(f"maps[{i}] has shape {tuple(a.shape)} but maps[0] has {tuple(first.shape)}; expected "
                              "the same batch size B and token count N in every layer")
        if not a.is_floating_point():
            raise ConfigError(f"maps[{i}] has dtype {a.dtype}; expected floating-point attention probabilities")
    return first.shape[0], first.shape[-1]


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N): mean, max or min over the heads."""
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    if head_fusion == "mean":
        return attention.mean(dim=1)  # (B, N, N)
    if head_fusion == "max":
        return attention.amax(dim=1)  # (B, N, N)
    return attention.amin(dim=1)  # (B, N, N)


def discard_lowest(attention: torch.Tensor, discard_ratio: float, num_prefix_tokens: int) -> torch.Tensor:
    """Zero the ``floor(discard_ratio · M)`` smallest weights of each (N, N) matrix of a
    (B, N, N) batch, where the M candidates are all entries except the diagonal (a token's
    attention to itself) and the prefix columns (attention to the cls / dist tokens),
    which are never discarded. Returns a new tensor; rows are not re-normalised here."""
    B, N, _ = attention.shape
    protected = torch.eye(N, dtype=torch.bool, device=attention.device)  # (N, N)
    protected[:, :num_prefix_tokens] = True
    candidates = (~protected).flatten().nonzero().squeeze(1)  # (M,) flat indices
    count = int(discard_ratio * candidates.numel())
    flat = attention.reshape(B, N * N).clone()  # (B, N·N)
    if count == 0:
        return flat.view(B, N, N)
    lowest = flat[:, candidates].topk(count, dim=-1, largest=False).indices  # (B, count) into candidates
    flat.scatter_(1, candidates[lowest], 0.0)
    return flat.view(B, N, N)  # (B, N, N)


def _check_rollout_args(token_index: Any, head_fusion: Any, discard_ratio: Any, num_prefix_tokens: Any,
                        num_tokens: int) -> None:
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) \
            or not 1 <= num_prefix_tokens < num_tokens:
        raise ConfigError(f"num_prefix_tokens={num_prefix_tokens!r} is invalid; expected an integer from 1 "
                          f"(cls) or 2 (cls, dist) up to N-1 = {num_tokens - 1}")
    if isinstance(token_index, bool) or not isinstance(token_index, int) \
            or not 0 <= token_index < num_prefix_tokens:
        raise ConfigError(f"token_index={token_index!r} is invalid; expected the index of a prefix token, "
                          f"0 (cls){' or 1 (dist)' if num_prefix_tokens > 1 else ''}, below "
                          f"num_prefix_tokens={num_prefix_tokens}")
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    _check_discard_ratio(discard_ratio)


def _check_discard_ratio(discard_ratio: Any) -> None:
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) \
            or not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio={discard_ratio!r} is invalid; expected a fraction in [0, 1)")


def attention_rollout(maps: Sequence[torch.Tensor], token_index: int = 0, *, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, num_prefix_tokens: int) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of token ``token_index`` over the patches.

    Per layer: fuse the heads (``head_fusion``), zero the ``discard_ratio`` lowest weights
    (:func:`discard_lowest`), add the residual ``Â = 0.5·A + 0.5·I`` and re-normalise the
    rows; then ``R = Â_L · … · Â_1`` (``maps`` in block order). Returns row ``token_index``
    of ``R`` (0 = cls, 1 = dist) restricted to the patch columns, shape (B, gh·gw), each
    row scaled so its maximum is 1 (ratios kept; all zeros stay zeros).
    """
    B, N = _check_maps(maps)
    _check_rollout_args(token_index, head_fusion, discard_ratio, num_prefix_tokens, N)
    identity = torch.eye(N, dtype=torch.float64, device=maps[0].device)  # (N, N)
    rollout = identity.expand(B, N, N)  # (B, N, N)
    for attention in maps:
        a = fuse_heads(attention, head_fusion).double()  # (B, N, N)
        if discard_ratio > 0:
            a = discard_lowest(a, discard_ratio, num_prefix_tokens)  # (B, N, N)
        a = 0.5 * a + 0.5 * identity  # (B, N, N)
        a = a / a.sum(dim=-1, keepdim=True)  # (B, N, N), rows sum to 1
        rollout = a @ rollout  # (B, N, N) = Â_l · … · Â_1
    flow = rollout[:, token_index, num_prefix_tokens:]  # (B, gh·gw)
    return unit_range(flow).to(maps[0].dtype)  # (B, gh·gw)


def unit_range(values: torch.Tensor) -> torch.Tensor:
    """Min-max scale each row of a (B, M) tensor to [0, 1]; a constant row (no patch stands
    out, e.g. identity or uniform attention) becomes all zeros."""
    low = values.amin(dim=-1, keepdim=True)  # (B, 1)
    span = values.amax(dim=-1, keepdim=True) - low  # (B, 1)
    scale = 1e-9 * values.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(values.dtype).tiny)  # (B, 1)
    flat = span <= scale  # rounding noise only: treat as constant
    return torch.where(flat, torch.zeros_like(values), (values - low) / torch.where(flat, 1.0, span))  # (B, M)


def _patch_row(attention: torch.Tensor, token_index: int, num_prefix_tokens: int, head_fusion: str) -> torch.Tensor:
    """One layer's attention of a token to the patches, heads fused, scaled to [0, 1]: (B, gh·gw)."""
    row = fuse_heads(attention.double(), head_fusion)[:, token_index, num_prefix_tokens:]  # (B, gh·gw)
    return unit_range(row).float()  # (B, gh·gw)


# --- images ------------------------------------------------------------------------------

def overlay(image: Image.Image, mask_2d: torch.Tensor, alpha: float = 0.5, *, cmap: str = "jet") -> Image.Image:
    """Blend a colour-mapped (gh, gw) mask over ``image``: an RGB image of ``image``'s size.

    The mask (values in [0, 1]; clamped) is upsampled bilinearly to the image size, mapped
    through the matplotlib colormap ``cmap`` (``"jet"`` or ``"inferno"``) and blended as
    ``(1 - alpha)·image + alpha·colour``.
    """
    import matplotlib

    if not isinstance(image, Image.Image):
        raise ConfigError(f"image must be a PIL.Image, got {type(image).__name__}")
    if not isinstance(mask_2d, torch.Tensor) or mask_2d.ndim != 2 or mask_2d.numel() == 0:
        shape = tuple(mask_2d.shape) if isinstance(mask_2d, torch.Tensor) else type(mask_2d).__name__
        raise ConfigError(f"mask_2d has shape {shape}; expected a 2-D (gh, gw) tensor")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha!r} is invalid; expected a blending weight in [0, 1]")
    check_choice("cmap", cmap, COLORMAPS)
    width, height = image.size
    mask = mask_2d.detach().float().cpu().clamp(0.0, 1.0)[None, None]  # (1, 1, gh, gw)
    mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    colour = matplotlib.colormaps[cmap](mask.clamp(0.0, 1.0).numpy(), bytes=True)[..., :3]  # (H, W, 3) uint8
    heat = Image.fromarray(colour.copy(), mode="RGB")  # uint8 all the way: light on large photos
    return Image.blend(image.convert("RGB"), heat, float(alpha))


def _rgb_array(image: Image.Image):
    import numpy as np

    return np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3), a writable copy


def _model_view_box(size: tuple[int, int], preprocessing: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """The part of an image the evaluation transform keeps (timm's resize and centre crop,
    :func:`deit.data.build_transform`): the shorter side (``crop_mode`` ``center``) or both
    sides (``squash``) resized to ``floor(image_size / crop_pct)``, then the centred
    ``image_size`` square. Returns that square in the image's own pixels as a PIL box
    (left, top, right, bottom)."""
    width, height = size
    crop = int(preprocessing["image_size"])
    scale = math.floor(crop / float(preprocessing.get("crop_pct", 1.0)))
    if preprocessing.get("crop_mode", "center") == "squash":
        resized_w, resized_h = scale, scale
    elif width <= height:
        resized_w, resized_h = scale, int(scale * height / width)
    else:
        resized_w, resized_h = int(scale * width / height), scale
    left, top = round((resized_w - crop) / 2), round((resized_h - crop) / 2)
    sx, sy = width / resized_w, height / resized_h
    box = (round(left * sx), round(top * sy), round((left + crop) * sx), round((top + crop) * sy))
    return max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)


def readable(image: Image.Image, min_side: int = READABLE_PIXELS) -> tuple[Image.Image, int]:
    """``image`` enlarged by the smallest whole factor that makes its shorter side at least
    ``min_side`` pixels (nearest neighbour: a 28 px digit keeps sharp pixels), and that
    factor (1 for images already large enough)."""
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    if factor == 1:
        return image, 1
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST), factor


def _overlay_on_view(image: Image.Image, mask_2d: torch.Tensor, alpha: float,
                     box: tuple[int, int, int, int]) -> Image.Image:
    """:func:`overlay` on ``box``, the part the model saw, pasted into the full image (the
    parts the centre crop cut away are shown darkened, without a heat map)."""
    full = Image.fromarray((_rgb_array(image) // 2), mode="RGB")  # darkened: outside the model's view
    full.paste(overlay(image.crop(box), mask_2d, alpha), box[:2])
    return full


# --- files -------------------------------------------------------------------------------

def _save_png(image: Image.Image, path: Path) -> Path:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _save_figure(figure: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return path


def _plot_similarity(sims: Sequence[float], path: Path, title: str) -> Path:
    figure = new_figure(figsize=(5.0, 3.5))
    ax = figure.add_subplot()
    ax.plot(range(len(sims)), sims, marker="o")
    ax.set_xticks(range(len(sims)), labels=["input"] + [str(i) for i in range(1, len(sims))])
    ax.set_xlabel("after block")
    ax.set_ylabel("cosine similarity")
    ax.set_ylim(min(-0.05, min(sims) - 0.05), 1.05)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return _save_figure(figure, path)


def _plot_per_layer(view: Image.Image, maps: Sequence[torch.Tensor], tokens: Sequence[int], grid: tuple[int, int],
                    num_prefix_tokens: int, head_fusion: str, path: Path, title: str) -> Path:
    """Grid PNG: one row per token (cls, dist), one column per block, each panel the
    layer's attention of that token to the patches over the model's view of the image."""
    rows, cols = len(tokens), len(maps)
    figure = new_figure(figsize=(1.6 * cols + 0.6, 1.7 * rows + 0.5))
    for r, token in enumerate(tokens):
        for c, attention in enumerate(maps):
            mask = _patch_row(attention, token, num_prefix_tokens, head_fusion)[0].reshape(grid)  # (gh, gw)
            ax = figure.add_subplot(rows, cols, r * cols + c + 1)
            ax.imshow(overlay(view, mask, 0.6))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"block {c + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(TOKEN_NAMES[token], fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save_figure(figure, path)


@dataclass
class VisualizeReport:
    """What :func:`visualize` wrote and found."""

    image: Path
    rollout_cls: Path
    rollout_dist: Path | None = None  # DeiT only
    per_layer: Path | None = None  # with per_layer=True
    similarity_plot: Path | None = None  # DeiT only
    similarity: list[float] = field(default_factory=list)  # cls/dist cosine, input + each block (DeiT only)
    predicted_class: str = ""
    predicted_index: int = -1
    probability: float = 0.0

    @property
    def paths(self) -> list[Path]:
        """Every PNG written."""
        return [p for p in (self.rollout_cls, self.rollout_dist, self.per_layer, self.similarity_plot) if p]

    def format(self) -> str:
        lines = [(f"{self.image}: predicted {self.predicted_class} (index {self.predicted_index}, "
                 f"p={self.probability:.3f})")]
        lines += [f"  wrote {p}" for p in self.paths]
        return "\n".join(lines)


def format_similarity(sims: Sequence[float]) -> str:
    """One line per layer: ``input`` then ``block i``, with the cls/dist cosine similarity."""
    if not sims:
        return "cls/dist similarity: the model has no distillation token"
    lines = ["cls/dist token cosine similarity"]
    for i, value in enumerate(sims):
        lines.append(f"  {'input' if i == 0 else f'block {i}':>9s}  {value:+.4f}")
    return "\n".join(lines)


def _load(checkpoint_or_model: str | os.PathLike | nn.Module, data_config: Mapping[str, Any] | None,
          classes: Sequence[str] | None, model_name: str | None, use_ema: bool
          ) -> tuple[nn.Module, list[str] | None, dict[str, Any]]:
    if isinstance(checkpoint_or_model, nn.Module):
        model, meta = checkpoint_or_model, {"classes": None, "data_config": {}}
    elif isinstance(checkpoint_or_model, (str, os.PathLike)):
        model, meta = load_for_inference(checkpoint_or_model, model_name=model_name, use_ema=use_ema)
    else:
        raise ConfigError(f"checkpoint_or_model must be a checkpoint path or an nn.Module, got "
                          f"{type(checkpoint_or_model).__name__}")
    _check_transformer(model)
    config = dict(meta["data_config"] or {})
    config.update(data_config or {})
    names = classes or meta["classes"]  # None: the variant's labels or the indices (deit.deploy.preprocessing)
    return model, (list(names) if names else None), config


def visualize(checkpoint_or_model: str | os.PathLike | nn.Module, image_path: str | os.PathLike,
              output_dir: str | os.PathLike, *, per_layer: bool = False, head_fusion: str = "mean",
              discard_ratio: float = 0.0, data_config: Mapping[str, Any] | None = None,
              classes: Sequence[str] | None = None, model_name: str | None = None, use_ema: bool = False,
              alpha: float = 0.5) -> VisualizeReport:
    """Attention rollout overlays (and, for DeiT, the cls/dist similarity plot) of one image.

    ``checkpoint_or_model``: a checkpoint path (any format :func:`deit.deploy.predict.load_for_inference`
    reads; ``model_name`` for foreign files) or a ViT / DeiT module, with ``data_config``
    (``image_size``, ``in_channels``, ``mean``, ``std``; defaults as ``deit predict``). The image
    is preprocessed exactly as :class:`deit.deploy.predict.Predictor` does. Writes to ``output_dir``:
    ``<stem>-rollout-cls.png``, for DeiT ``<stem>-rollout-dist.png`` and
    ``<stem>-cls-dist-similarity.png``, and with ``per_layer`` ``<stem>-attention-per-layer.png``
    (each file written atomically). The overlays have the image's size, enlarged by a whole
    factor when its shorter side is below :data:`READABLE_PIXELS` (:func:`readable`).
    """
    check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
    _check_discard_ratio(discard_ratio)
    if not isinstance(per_layer, bool):
        raise ConfigError(f"per_layer={per_layer!r} is invalid; expected True or False")
    model, names, config = _load(checkpoint_or_model, data_config, classes, model_name, use_ema)
    image, x, predictor = _preprocess(model, names, config, image_path)  # PIL image, (1, C, H, W)
    names = predictor.classes
    prefix = model.num_prefix_tokens
    trace = _trace(model, x, tokens=prefix >= 2)
    index, probability = _top1(model, trace.features)

    out, stem = Path(output_dir), Path(image_path).stem
    out.mkdir(parents=True, exist_ok=True)
    tokens = list(range(min(prefix, len(TOKEN_NAMES))))  # 0 = cls, 1 = dist
    grid = model.patch_embed.grid_size
    box = _model_view_box(image.size, predictor.preprocessing)
    shown, factor = readable(image)
    shown_box = tuple(v * factor for v in box)
    written = {}
    for token in tokens:
        flow = attention_rollout(trace.attention, token, head_fusion=head_fusion, discard_ratio=discard_ratio,
                                 num_prefix_tokens=prefix)[0].reshape(grid)  # (gh, gw)
        path = out / f"{stem}-rollout-{TOKEN_NAMES[token]}.png"
        written[token] = _save_png(_overlay_on_view(shown, flow, alpha, shown_box), path)
    report = VisualizeReport(image=Path(image_path), rollout_cls=written[0], rollout_dist=written.get(1),
                             predicted_class=str(names[index]) if index < len(names) else str(index),
                             predicted_index=index, probability=probability)
    label = f"{Path(image_path).name}: {getattr(model, 'model_name', type(model).__name__)}"
    if per_layer:
        view, _ = readable(image.crop(box), PER_LAYER_PANEL_PIXELS)  # the square the model saw
        if view.width > PER_LAYER_PANEL_PIXELS:  # small panels: no need for a photo's pixels
            view = view.resize((PER_LAYER_PANEL_PIXELS, PER_LAYER_PANEL_PIXELS), Image.Resampling.BICUBIC)
        report.per_layer = _plot_per_layer(view, trace.attention, tokens, grid, prefix, head_fusion,
                                           out / f"{stem}-attention-per-layer.png",
                                           f"{label}, per-layer attention ({head_fusion} over heads)")
    if prefix >= 2:
        report.similarity = _cls_dist_similarity(trace.tokens)
        report.similarity_plot = _plot_similarity(report.similarity, out / f"{stem}-cls-dist-similarity.png",
                                                  f"{label}, cls vs dist token")
    return report


def _preprocess(model: nn.Module, names: Sequence[str] | None, config: Mapping[str, Any],
                image_path: str | os.PathLike) -> tuple[Image.Image, torch.Tensor, Any]:
    """The image as ``deit predict`` reads and transforms it: (PIL image, (1, C, H, W) batch,
    the :class:`~deit.deploy.predict.Predictor` holding the resolved preprocessing and labels)."""

    with _eval_mode(model):  # Predictor puts the model in eval mode; the caller's mode is kept
        predictor = Predictor(model, names, config)
    image = load_image(image_path, predictor.in_channels)
    return image, predictor.transform(image).unsqueeze(0), predictor  # (1, C, H, W)


@torch.no_grad()
def _top1(model: nn.Module, features: torch.Tensor) -> tuple[int, float]:
    """Top class and its probability from the traced features, with the head
    :class:`~deit.deploy.predict.Predictor` uses (DeiT: ``return_logits_type``, fusion by default)."""
    with _eval_mode(model):
        logits = model.forward_head(features)  # (1, K)
    probabilities = logits.float().softmax(dim=-1)[0]  # (K,)
    index = int(probabilities.argmax())
    return index, float(probabilities[index])
