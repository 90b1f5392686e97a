"""ResNet for small images (He et al. 2016, arXiv 1512.03385, §4.2), a CNN teacher.

The CIFAR network of §4.2: a 3x3 stem convolution that keeps the resolution, then stages of
BasicBlocks (3x3 conv-BN-ReLU, 3x3 conv-BN, residual add, ReLU) at full, half and quarter
resolution with widths 16 / 32 / 64, global average pooling and one linear layer: 6n+2
layers for n blocks per stage (ResNet-20: n=3). The first stage has stride 1, every later
stage halves the resolution in the first convolution of its first block. Any number of
stages is accepted (``layer1`` … ``layerN``, N = ``len(depths)``).

Choices the paper leaves open, or makes differently, follow ``timm/models/resnet.py``:

* the shortcut of a block that changes the shape is a 1x1 convolution with the block's
  stride plus BN (``downsample_conv``; the paper's option B). §4.2 uses the parameter-free
  option A (identity with zero padding) on CIFAR: ResNet-20 has 272,474 parameters here at
  10 classes, 2,752 more than with option A (269,722; the paper's "0.27M", Table 6);
* the last BN of each residual branch starts with gamma = 0 (Goyal et al. 2017, "Accurate,
  Large Minibatch SGD", §5.1; timm's ``zero_init_last``): every block starts as its
  shortcut followed by the ReLU;
* convolutions are initialised Kaiming-normal with fan_out (timm's ``ResNet.init_weights``,
  as torchvision); BN and the classifier keep PyTorch's defaults;
* stochastic depth (Huang et al. 2016) drops the residual branch before the add, at rates
  rising linearly from 0 over all blocks to ``drop_path_rate`` (timm's ``make_blocks``).

State-dict keys are timm's (``conv1``, ``bn1``, ``layer1.0.conv1`` / ``.bn1`` / ``.conv2``
/ ``.bn2`` / ``.downsample.0`` / ``.downsample.1``, ``fc``), so a timm ResNet state dict of
the same shapes loads one to one; timm's ImageNet stem (7x7 stride-2 convolution and max
pooling) has other shapes and is not this network.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_image_values, check_non_negative_int, check_positive_int, check_probability
from deit.models.layers import DropPath, linear_drop_path_rates


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU (He et al. 2016, Fig. 2; timm's ``BasicBlock``)."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.act2 = nn.ReLU(inplace=True)
        # option B shortcut, only where the shape changes (timm's make_blocks / downsample_conv)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_dim != out_dim:
            self.downsample = nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_dim))
        self.drop_path = DropPath(drop_path)

    def zero_init_last(self) -> None:
        """gamma = 0 in the branch's last BN: the block starts as relu(shortcut(x))."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)  # (B, C_out, H/s, W/s)
        x = self.act1(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        x = self.bn2(self.conv2(x))  # (B, C_out, H/s, W/s)
        return self.act2(self.drop_path(x) + shortcut)  # (B, C_out, H/s, W/s)


class ResNet(nn.Module):
    """ResNet image classifier for 28–32 px images (keyword-only arguments).

    Args:
        num_classes: classifier outputs; 0 gives a feature extractor.
        in_channels: image channels.
        widths: channels per stage (16, 32, 64 in He et al. §4.2).
        depths: BasicBlocks per stage (n, n, n for the 6n+2-layer network).
        stem_width: channels of the 3x3 stem convolution; None: ``widths[0]``.
        drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
        head_dropout: dropout before the classifier (timm's ``drop_rate``).
    """

    def __init__(self, *, num_classes: int = 1000, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
                 depths: Sequence[int] = (2, 2, 2), stem_width: int | None = None, drop_path_rate: float = 0.0,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        check_non_negative_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_probability("drop_path_rate", drop_path_rate)
        check_probability("head_dropout", head_dropout)
        widths, depths = tuple(widths), tuple(depths)
        if len(widths) != len(depths) or not widths:
            raise ConfigError(f"widths={widths} and depths={depths} must be non-empty and of equal length "
                              "(one width and one block count per stage)")
        for i, (width, depth) in enumerate(zip(widths, depths)):
            check_positive_int(f"widths[{i}]", width)
            check_positive_int(f"depths[{i}]", depth)
        stem_width = widths[0] if stem_width is None else stem_width
        check_positive_int("stem_width", stem_width)
        self.config: dict[str, Any] = dict(
            num_classes=num_classes, in_channels=in_channels, widths=list(widths), depths=list(depths),
            stem_width=stem_width, drop_path_rate=drop_path_rate, head_dropout=head_dropout)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_features = widths[-1]
        self.num_stages = len(widths)

        self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        rates = linear_drop_path_rates(drop_path_rate, sum(depths))
        in_dim, block_index = stem_width, 0
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(in_dim, width, stride=2 if i > 0 and j == 0 else 1,
                                         drop_path=rates[block_index]))
                in_dim, block_index = width, block_index + 1
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))  # timm's stage names
        self.head_drop = nn.Dropout(head_dropout)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():
            if isinstance(module, BasicBlock):
                module.zero_init_last()

    def stages(self) -> list[nn.Sequential]:
        """``layer1`` … ``layerN`` in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def min_input_size(self) -> int:
        """Smallest square input that keeps at least 1x1 pixels after the last stage: 1, since
        the padded 3x3 and the 1x1 stride-2 convolutions both map H to ceil(H/2) >= 1."""
        return 1

    def no_weight_decay(self) -> set[str]:
        return set()  # BN weights and biases are 1-D: excluded by rank

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        check_non_negative_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        ref = self.bn1.weight
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.fc.to(device=ref.device, dtype=ref.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> feature map (B, widths[-1], H/2^(N-1), W/2^(N-1)), rounded up."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"expected an image batch of shape (batch, {self.in_channels}, H, W), got {shape}")
        check_image_values(x)
        x = self.act1(self.bn1(self.conv1(x)))  # (B, stem_width, H, W)
        for stage in self.stages():
            x = stage(x)  # (B, C_i, H_i, W_i)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))  # (B, C)
        return x if pre_logits else self.fc(x)  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
