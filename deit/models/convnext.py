"""ConvNeXt (Liu et al. 2022), the default convnet teacher of this library.

State-dict keys are timm's (``stem.0``, ``stages.i.downsample.1``,
``stages.i.blocks.j.conv_dw`` / ``.norm`` / ``.mlp.fc1`` / ``.mlp.fc2`` / ``.gamma``,
``head.norm``, ``head.fc``). The block MLP is always computed channels-last with
``nn.Linear``; timm's small variants (atto…nano, ``conv_mlp=True``) store those weights as
1x1 convolutions, which :func:`deit.weights.layouts.adapt_state_dict` reshapes at load time.

``stem_stride`` is the stem's patch size: 4 in the paper (for 224 px images); the
``*_32`` variants of the registry use 2 so that 28–32 px images keep a spatial extent
of at least 1x1 after the three 2x downsamplings (28 → 14 → 7 → 3 → 1).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_image_values, check_non_negative_int, check_positive_int, check_probability
from deit.models.layers import DropPath, linear_drop_path_rates


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXtMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LN -> Linear(4C) -> GELU -> Linear(C) -> LayerScale, residual."""

    def __init__(self, dim: int, *, drop_path: float = 0.0, layer_scale_init: float | None = 1e-6,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ConvNeXtMlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init is not None else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x  # (B, C, H, W)
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.mlp(self.norm(x))  # (B, H, W, C)
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        return shortcut + self.drop_path(x)


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int, *, downsample: bool, drop_path_rates: Sequence[float],
                 layer_scale_init: float | None, norm_eps: float) -> None:
        super().__init__()
        if downsample:
            self.downsample: nn.Module = nn.Sequential(
                LayerNorm2d(in_dim, eps=norm_eps), nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            ConvNeXtBlock(out_dim, drop_path=rate, layer_scale_init=layer_scale_init, norm_eps=norm_eps)
            for rate in drop_path_rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtHead(nn.Module):
    """Global average pool -> LayerNorm -> dropout -> Linear (timm's NormMlpClassifierHead)."""

    def __init__(self, dim: int, num_classes: int, *, dropout: float, norm_eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(2, 3)))  # (B, C)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)  # (B, K)


class ConvNeXt(nn.Module):
    """ConvNeXt image classifier (keyword-only arguments).

    Args:
        num_classes: classifier outputs; 0 gives a feature extractor.
        in_channels: image channels.
        depths: blocks per stage (4 stages).
        dims: channels per stage.
        stem_stride: patch size of the stem convolution (4 for 224 px, 2 for 28–32 px).
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        layer_scale_init: LayerScale init value (1e-6 in the paper); None disables it.
        head_dropout: dropout before the classifier.
    """

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3,
                 depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                 stem_stride: int = 4, drop_path_rate: float = 0.0, layer_scale_init: float | None = 1e-6,
                 head_dropout: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        check_non_negative_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("stem_stride", stem_stride)
        check_probability("drop_path_rate", drop_path_rate)
        check_probability("head_dropout", head_dropout)
        depths, dims = tuple(depths), tuple(dims)
        if len(depths) != len(dims) or not depths:
            raise ConfigError(f"depths={depths} and dims={dims} must be non-empty and of equal length")
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            check_positive_int(f"depths[{i}]", depth)
            check_positive_int(f"dims[{i}]", dim)
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, in_channels=in_channels, depths=list(depths), dims=list(dims),
            stem_stride=stem_stride, drop_path_rate=drop_path_rate, layer_scale_init=layer_scale_init,
            head_dropout=head_dropout, norm_eps=norm_eps)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_features = dims[-1]

        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=stem_stride, stride=stem_stride),
                                  LayerNorm2d(dims[0], eps=norm_eps))
        rates = linear_drop_path_rates(drop_path_rate, sum(depths))
        stages, in_dim = [], dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stage_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            stages.append(ConvNeXtStage(in_dim, dim, depth, downsample=i > 0, drop_path_rates=stage_rates,
                                        layer_scale_init=layer_scale_init, norm_eps=norm_eps))
            in_dim = dim
        self.stages = nn.Sequential(*stages)
        self.head = ConvNeXtHead(dims[-1], num_classes, dropout=head_dropout, norm_eps=norm_eps)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def min_input_size(self) -> int:
        """Smallest square input that keeps at least 1x1 pixels after the last stage."""
        return self.config["stem_stride"] * 2 ** (len(self.config["dims"]) - 1)

    def no_weight_decay(self) -> set[str]:
        return set()  # norms, biases and layer-scale gammas are 1-D: excluded by rank

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        check_non_negative_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        ref = self.head.norm.weight
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.fc.apply(self._init_weights)
        self.head.fc.to(device=ref.device, dtype=ref.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> feature map (B, C_last, H/(s*8), W/(s*8))."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"expected an image batch of shape (batch, {self.in_channels}, H, W), got {shape}")
        if min(x.shape[2:]) < self.min_input_size():
            raise ConfigError(f"images of {x.shape[2]}x{x.shape[3]} px are too small for this ConvNeXt "
                              f"(stem_stride={self.config['stem_stride']}): need at least "
                              f"{self.min_input_size()} px; use a *_32 variant (stem_stride=2) for small images")
        check_image_values(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
