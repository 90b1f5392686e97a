"""The architecture of a weights file, read off its raw tensor shapes.

A file without this library's metadata (the official DeiT ``{'model': …}`` files, timm
state dicts, HF folders after renaming) is described by an :class:`Architecture` read
from the shapes *before* any load-time adaptation, then matched against the registered
variants, which are described by the same reader from their own (meta-device) state
dicts. Nothing is resampled or re-initialised while guessing: the returned name and
overrides build a model with exactly the file's shapes, e.g. a 24x24 position grid of
``deit_base_distilled_patch16_384`` builds at 384 px.

What the shapes give (timm layout, see :func:`deit.weights.layouts.to_timm_layout`):

* ViT / DeiT: width and patch size from ``patch_embed.proj.weight`` (D, C, p, p), or,
  with a convolutional stem (``patch_embed.stem.i``), 2 ** steps x the kernel of ``proj``;
  prefix rows = 1 + (``dist_token`` present); grid = sqrt(pos_embed rows - prefix);
  image size = grid * patch; depth = number of ``blocks.N``; MLP width from ``fc1``;
  classes from ``head.weight`` (0 without a head). The number of attention heads is not
  in any shape (``qkv`` is (3D, D) for every head count): it comes from the caller (an
  HF ``config.json``) or from the registered variants of the same width.
* ConvNeXt: stem patch size and channels from ``stem.0.weight``, per-stage widths from
  the depthwise convolutions, depths by counting ``stages.i.blocks.j``.
* ResNet (timm's keys, :mod:`deit.models.resnet`): stem width and channels from
  ``conv1.weight``, per-stage widths from ``layerI.0.conv2``, depths by counting
  ``layerI.J``, classes from ``fc.weight``. Only the small-image network (3x3 stem,
  BasicBlocks) is this library's; timm's ImageNet stems and bottleneck blocks are refused
  by name.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

from deit.core.errors import CheckpointError
from deit.models.registry import build_model, list_models

# Architecture field -> constructor argument of ViT / DeiT (deit/models/vit.py).
_VIT_ARGS = {"width": "d_model", "depth": "num_encoder_blocks", "heads": "encoder_num_heads",
             "patch_size": "patch_size", "image_size": "image_size", "mlp_width": "encoder_mlp_d",
             "in_channels": "in_channels", "num_classes": "num_classes",
             "patchify_technique": "patchify_technique", "classifier_mlp_d": "classifier_mlp_d"}
# ... and of ConvNeXt (deit/models/convnext.py).
_CONVNEXT_ARGS = {"depths": "depths", "dims": "dims", "stem_stride": "stem_stride",
                  "in_channels": "in_channels", "num_classes": "num_classes"}
# ... and of ResNet (deit/models/resnet.py).
_RESNET_ARGS = {"depths": "depths", "widths": "widths", "stem_width": "stem_width",
                "in_channels": "in_channels", "num_classes": "num_classes"}
_ARGS = {"vit": _VIT_ARGS, "convnext": _CONVNEXT_ARGS, "resnet": _RESNET_ARGS}
# Fields that name an architecture; the others (size, channels, classes) are overrides.
_CORE = {"vit": ("distilled", "width", "depth", "heads", "patch_size"),
         "convnext": ("depths", "dims", "stem_stride"),
         "resnet": ("depths", "widths", "stem_width")}


@dataclass(frozen=True)
class Architecture:
    """Shapes of a ViT / DeiT, ConvNeXt or ResNet weights file; ``heads=None``: not known."""

    family: str  # "vit" (ViT and DeiT), "convnext" or "resnet"
    num_classes: int
    in_channels: int
    distilled: bool = False
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    patch_size: int | None = None
    grid: int | None = None
    mlp_width: int | None = None
    patchify_technique: str = "convolutional"
    classifier_mlp_d: int | None = None
    layer_scale: bool = False
    depths: tuple[int, ...] | None = None
    dims: tuple[int, ...] | None = None
    stem_stride: int | None = None
    widths: tuple[int, ...] | None = None  # ResNet stage widths
    stem_width: int | None = None

    @property
    def image_size(self) -> int | None:
        return self.grid * self.patch_size if self.grid and self.patch_size else None

    def describe(self) -> str:
        """One line naming every inferred value, for error messages and notes."""
        if self.family == "convnext":
            parts = [f"ConvNeXt depths={list(self.depths)}", f"dims={list(self.dims)}",
                     f"stem_stride={self.stem_stride}"]
        elif self.family == "resnet":
            parts = [f"ResNet widths={list(self.widths)}", f"depths={list(self.depths)}",
                     f"stem_width={self.stem_width}"]
        else:
            heads = self.heads if self.heads is not None else "unknown"
            parts = [("DeiT (distillation token)" if self.distilled else "ViT") + f" width={self.width}",
                     f"depth={self.depth}", f"heads={heads}", f"patch={self.patch_size}",
                     f"grid={self.grid}x{self.grid} (image {self.image_size}"
                     + (" or a few px less: a convolutional stem keeps the border)" if self.patchify_technique
                        == "conv_stem" else ")"), f"mlp={self.mlp_width}"]
        parts += [f"in_channels={self.in_channels}", f"num_classes={self.num_classes}"]
        return ", ".join(parts)


def _count_indexed(state_dict: Mapping[str, torch.Tensor], pattern: str, what: str, start: int = 0) -> int:
    """Number of consecutive indices ``N`` (from ``start``) in keys matching ``pattern`` (one group)."""
    found = {int(m[1]) for key in state_dict if (m := re.match(pattern, key))}
    if found and found != set(range(start, max(found) + 1)):
        raise CheckpointError(f"{what} indices {sorted(found)} are not consecutive from {start}: the file is "
                              "incomplete")
    return len(found)


def _head_rows(state_dict: Mapping[str, torch.Tensor], key: str) -> int:
    return int(state_dict[key].shape[0]) if key in state_dict else 0


def infer_architecture(state_dict: Mapping[str, torch.Tensor], *, heads: int | None = None) -> Architecture:
    """Describe a timm-layout state dict from its shapes alone.

    Args:
        heads: attention heads when the caller knows them (an HF ``config.json``);
            otherwise left unknown.
    Raises:
        CheckpointError: the layout is neither a ViT / DeiT, a ConvNeXt nor a ResNet, or its
            shapes are inconsistent (e.g. a position embedding that is not a square grid).
    """
    if "patch_embed.proj.weight" in state_dict and "pos_embed" in state_dict:
        return _infer_vit(state_dict, heads)
    if "stem.0.weight" in state_dict:
        return _infer_convnext(state_dict)
    if "layer1.0.conv1.weight" in state_dict:
        return _infer_resnet(state_dict)
    shown = ", ".join(list(state_dict)[:6])
    raise CheckpointError(f"the weights match no registered model exactly: neither a ViT / DeiT "
                          f"(patch_embed.proj.weight, pos_embed), a ConvNeXt (stem.0.weight) nor a ResNet "
                          f"(conv1.weight, layer1.0.conv1.weight) layout; first keys: {shown}. Name the architecture "
                          "(--model NAME, with --num-classes / --image-size if they differ)")


def _infer_vit(sd: Mapping[str, torch.Tensor], heads: int | None) -> Architecture:
    proj, pos = sd["patch_embed.proj.weight"], sd["pos_embed"]
    width = int(pos.shape[-1])
    distilled = "dist_token" in sd
    if "head_dist.weight" in sd and not distilled:
        raise CheckpointError("the file has a distillation head (head_dist) but no distillation token (dist_token)")
    prefix = 1 + distilled  # class token (+ distillation token), DeiT paper §4
    patches = int(pos.shape[1]) - prefix
    grid = math.isqrt(max(patches, 0))
    if patches <= 0 or grid * grid != patches:
        raise CheckpointError(f"pos_embed has {pos.shape[1]} rows = {prefix} prefix row(s) + {patches} patch rows, "
                              "which is not a square grid")
    technique = "convolutional"
    stem_depth = _count_indexed(sd, r"patch_embed\.stem\.(\d+)\.", "convolutional stem step")
    if stem_depth:  # Xiao et al.'s stem: stride-2 3x3 steps, then proj with what remains of the patch
        technique, in_channels = "conv_stem", int(sd["patch_embed.stem.0.conv.weight"].shape[1])
        patch = (2 ** stem_depth) * int(proj.shape[-1])
    elif proj.ndim == 4:  # Conv2d (D, C, p, p)
        in_channels, patch, patch_w = int(proj.shape[1]), int(proj.shape[2]), int(proj.shape[3])
        if patch != patch_w:
            raise CheckpointError(f"patch_embed.proj.weight has a {patch}x{patch_w} kernel; only square patches "
                                  "are supported")
    else:  # this library's linear patchify: (D, C*p*p); the channels are the ones giving a square patch
        technique, area = "linear", int(proj.shape[1])
        in_channels = next((c for c in (3, 1, 4, 2) if area % c == 0 and math.isqrt(area // c) ** 2 == area // c),
                           0)
        if not in_channels:
            raise CheckpointError(f"patch_embed.proj.weight {tuple(proj.shape)}: cannot split {area} into "
                                  "channels x patch x patch")
        patch = math.isqrt(area // in_channels)
    depth = _count_indexed(sd, r"blocks\.(\d+)\.", "transformer block")
    if depth == 0:
        raise CheckpointError("the file has a patch embedding but no transformer blocks (blocks.N.*)")
    pre_logits = sd.get("pre_logits.fc.weight")
    return Architecture(
        family="vit", num_classes=_head_rows(sd, "head.weight"), in_channels=in_channels, distilled=distilled,
        width=width, depth=depth, heads=heads, patch_size=patch, grid=grid,
        mlp_width=int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else None,
        patchify_technique=technique, classifier_mlp_d=int(pre_logits.shape[0]) if pre_logits is not None else None,
        layer_scale="blocks.0.ls1.gamma" in sd)


def _infer_convnext(sd: Mapping[str, torch.Tensor]) -> Architecture:
    stem = sd["stem.0.weight"]  # (dims[0], C, s, s)
    num_stages = _count_indexed(sd, r"stages\.(\d+)\.", "ConvNeXt stage")
    depths = tuple(_count_indexed(sd, rf"stages\.{i}\.blocks\.(\d+)\.", f"stage {i} block")
                   for i in range(num_stages))
    dims = tuple(int(sd[f"stages.{i}.blocks.0.conv_dw.weight"].shape[0]) if depths[i] else 0
                 for i in range(num_stages))
    return Architecture(family="convnext", num_classes=_head_rows(sd, "head.fc.weight"),
                        in_channels=int(stem.shape[1]), depths=depths, dims=dims, stem_stride=int(stem.shape[-1]),
                        layer_scale=any(k.endswith(".gamma") for k in sd))


_TIMM_TEACHER = "load it as a teacher with --teacher-model timm:<name> (timm builds its own ResNets)"


def _infer_resnet(sd: Mapping[str, torch.Tensor]) -> Architecture:
    stem = sd.get("conv1.weight")  # (stem_width, C, 3, 3)
    if stem is None or stem.ndim != 4:
        raise CheckpointError("the ResNet has no single stem convolution conv1.weight (timm's deep stems are "
                              "conv1.0 / conv1.3 / conv1.6): not this library's small-image ResNet (3x3 stem); "
                              + _TIMM_TEACHER)
    if tuple(stem.shape[-2:]) != (3, 3):
        raise CheckpointError(f"conv1.weight {tuple(stem.shape)} is a {stem.shape[-2]}x{stem.shape[-1]} stem (timm's "
                              "ImageNet ResNets: 7x7 stride 2 with max pooling), not the 3x3 stem of this library's "
                              "small-image ResNet (He et al. 2016, §4.2); " + _TIMM_TEACHER)
    if any(re.match(r"layer\d+\.\d+\.conv3\.", key) for key in sd):
        raise CheckpointError("the ResNet has bottleneck blocks (layerI.J.conv3); this library's ResNet has "
                              "BasicBlocks only; " + _TIMM_TEACHER)
    num_stages = _count_indexed(sd, r"layer(\d+)\.", "ResNet stage (layerN)", start=1)
    depths = tuple(_count_indexed(sd, rf"layer{i}\.(\d+)\.", f"layer{i} block") for i in range(1, num_stages + 1))
    missing = [f"layer{i}.0.conv2.weight" for i in range(1, num_stages + 1) if f"layer{i}.0.conv2.weight" not in sd]
    if missing:
        raise CheckpointError(f"the ResNet state dict has no {missing[0]}: every stage's first block needs its "
                              "second convolution (layerI.0.conv2), which gives the stage's width")
    widths = tuple(int(sd[f"layer{i}.0.conv2.weight"].shape[0]) for i in range(1, num_stages + 1))
    return Architecture(family="resnet", num_classes=_head_rows(sd, "fc.weight"), in_channels=int(stem.shape[1]),
                        depths=depths, widths=widths, stem_width=int(stem.shape[0]))


_REGISTERED: dict[tuple[str, ...], dict[str, Architecture]] = {}


def registered_architectures() -> dict[str, Architecture]:
    """Every registered variant described by :func:`infer_architecture` from its own
    state dict on the meta device (no memory, no init), with its known head count."""
    names = tuple(list_models())
    if names not in _REGISTERED:
        described = {}
        for name in names:
            try:
                with torch.device("meta"):
                    model = build_model(name)
            except (ValueError, TypeError, RuntimeError):  # a user-registered variant that needs arguments
                continue
            heads = getattr(model, "config", {}).get("encoder_num_heads")
            described[name] = infer_architecture(model.state_dict(), heads=heads)
        _REGISTERED.clear()
        _REGISTERED[names] = described
    return _REGISTERED[names]


def _overrides(arch: Architecture, base: Architecture) -> dict[str, Any]:
    """Constructor arguments that turn the registered ``base`` into ``arch``'s shapes."""
    out: dict[str, Any] = {}
    for field_name, arg in _ARGS[arch.family].items():
        want, have = getattr(arch, field_name), getattr(base, field_name)
        if field_name == "image_size" and arch.patchify_technique == "conv_stem":
            # a stem keeps the border: 28, 30 and 32 px all give a 4x4 grid at patch 8, so the
            # shapes give the grid, not the size; the registered size stands when the grids agree
            want, have = (None, None) if arch.grid == base.grid else (want, have)
        if want is not None and want != have:
            out[arg] = list(want) if isinstance(want, tuple) else want
    if arch.layer_scale != base.layer_scale:
        # the init value is irrelevant once the file's gammas are loaded; None removes LayerScale
        key = "layer_scale_init" if arch.family == "convnext" else "layer_scale"
        out[key] = (1e-6 if arch.family == "convnext" else 1e-5) if arch.layer_scale else None
    return out


def _same_core(arch: Architecture, other: Architecture) -> bool:
    if arch.family != other.family:
        return False
    if (arch.patchify_technique == "conv_stem") != (other.patchify_technique == "conv_stem"):
        return False  # a stem is another architecture; "linear" and "convolutional" are one function
    return all(getattr(arch, f) is None or getattr(arch, f) == getattr(other, f) for f in _CORE[arch.family])


def match_registered(arch: Architecture) -> tuple[str, dict[str, Any], list[str]]:
    """The registered name and constructor overrides that build ``arch`` exactly.

    Exact match on the architecture (ViT/DeiT: distilled, width, depth, heads, patch;
    ConvNeXt: depths, dims, stem stride; ResNet: widths, depths, stem width); the image
    size decides between variants that differ only there and is an override otherwise;
    channels, classes and MLP width are overrides. Without an exact match the closest
    variant of the same family and width is built with explicit overrides (said in the
    returned notes).

    Returns ``(name, overrides, notes)``.
    Raises:
        CheckpointError: several variants fit equally (the message lists them), or none
            does and the head count cannot be derived.
    """
    registered = registered_architectures()
    candidates = [name for name, reg in registered.items() if _same_core(arch, reg)]
    if len(candidates) > 1 and arch.image_size is not None:
        same_size = [n for n in candidates if registered[n].grid == arch.grid] \
            if arch.patchify_technique == "conv_stem" else \
            [n for n in candidates if registered[n].image_size == arch.image_size]
        candidates = same_size or candidates
    if len(candidates) > 1:
        raise CheckpointError(f"the weights fit several registered models: {', '.join(candidates)} (inferred: "
                              f"{arch.describe()}); name one (--model NAME / model_name=)")
    if candidates:
        name = candidates[0]
        return name, _overrides(arch, registered[name]), []
    name, resolved = _closest(arch, registered)
    overrides = _overrides(resolved, registered[name])
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return name, overrides, [f"no registered model has these shapes ({arch.describe()}); built {name} with "
                             f"explicit overrides {shown}"]


def _closest(arch: Architecture, registered: Mapping[str, Architecture]) -> tuple[str, Architecture]:
    """Registered variant of the same family (ViT/DeiT: same distillation; ConvNeXt and
    ResNet: same stage widths) with the most fields equal. Without a known head count only
    variants of the same width qualify, and the head count is theirs."""
    if arch.family == "convnext":
        pool = [n for n, r in registered.items() if r.family == "convnext" and r.dims == arch.dims]
        score_fields: tuple[str, ...] = ("depths", "stem_stride")
    elif arch.family == "resnet":
        pool = [n for n, r in registered.items() if r.family == "resnet" and r.widths == arch.widths]
        score_fields = ("depths", "stem_width")
    else:
        pool = [n for n, r in registered.items() if r.family == "vit" and r.distilled == arch.distilled
                and (r.patchify_technique == "conv_stem") == (arch.patchify_technique == "conv_stem")
                and (arch.heads is not None or r.width == arch.width)]
        score_fields = ("width", "heads", "depth", "patch_size", "image_size", "mlp_width")
    if not pool:
        why = {"convnext": "no registered ConvNeXt has these stage widths",
               "resnet": "no registered ResNet has these stage widths"}.get(
            arch.family, "no registered variant has that width, so the number of attention heads cannot be derived")
        raise CheckpointError(f"the weights match no registered model exactly (inferred: {arch.describe()}) and "
                              f"{why}; build the model yourself (DeiT(...) / ViT(...) / ConvNeXt(...) / ResNet(...)) "
                              "and load the file with load_pretrained")
    if arch.family == "vit" and arch.heads is None and len({registered[n].heads for n in pool}) > 1:
        raise CheckpointError(f"the weights match no registered model exactly (inferred: {arch.describe()}); "
                              f"registered variants of width {arch.width} disagree on the number of heads: "
                              f"{', '.join(pool)}")

    def score(name: str) -> tuple[int, int, str]:
        reg = registered[name]
        equal = sum(getattr(arch, f) == getattr(reg, f) for f in score_fields)
        # convnets (same stage widths, so as many stages): then the nearest block counts
        blocks_apart = (sum(abs(a - b) for a, b in zip(arch.depths, reg.depths))
                        if arch.depths is not None and reg.depths is not None else 0)
        return (-equal, blocks_apart, name)

    name = min(pool, key=score)
    if arch.family == "vit" and arch.heads is None:
        return name, replace(arch, heads=registered[name].heads)
    return name, arch
