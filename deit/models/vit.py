"""Vision Transformer (Dosovitskiy et al. 2021) with the constructor API of the seed
(`shared/seed/deit-api.txt`) and the timm module interface.

Dropout mapping of the seed's three rates (timm's names in brackets):

* ``dropout`` — after adding the position embedding and before the classifier
  (``pos_drop`` / ``head_drop``, timm ``drop_rate``);
* ``encoder_dropout`` — after the attention projection and inside the MLP of every
  block (timm ``proj_drop_rate``);
* ``encoder_attention_dropout`` — on the attention probabilities (timm ``attn_drop_rate``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from deit.core.errors import ConfigError
from deit.core.validation import check_divisible, check_non_negative_int, check_positive_int, check_probability
from deit.models.layers import Block, PatchEmbed, linear_drop_path_rates


def _init_linear_and_norm(module: nn.Module) -> None:
    """timm's ViT init: truncated normal (std 0.02) for Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Vision Transformer with a class token.

    All arguments are keyword-only (lucidrains style); the defaults are ViT-B/16 at
    224 px with DeiT's regularisation (no dropout). See the module docstring for the
    meaning of the three dropout rates.

    Args:
        num_classes: classifier outputs; ``0`` gives a feature extractor (no head).
        d_model: token width D.
        image_size: input side in pixels; must be divisible by ``patch_size`` (any size at
            least ``patch_size`` with ``"conv_stem"``).
        patch_size: patch side in pixels.
        classifier_mlp_d: hidden units of the tanh pre-logits layer of the original ViT
            pre-training head; ``None`` gives a single linear head.
        encoder_mlp_d: hidden units of every block's MLP.
        encoder_num_heads: attention heads; must divide ``d_model``.
        num_encoder_blocks: depth.
        patchify_technique: ``"convolutional"`` (Conv2d), ``"linear"`` (unfold + Linear), the
            seed's two, which compute the same function; or ``"conv_stem"``, a few stride-2
            3x3 convolutions (Xiao et al. 2021; :class:`~deit.models.layers.PatchEmbed`).
        stochastic_depth: enable drop-path; the rate rises linearly from 0 at the first
            block to ``stochastic_depth_mp`` at the last (Huang et al. 2016; DeiT Table 9).
        layer_scale: LayerScale init value (CaiT); ``None`` disables LayerScale.
        in_channels: image channels.
        norm_eps: LayerNorm epsilon; 1e-6 as timm and the official DeiT weights.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        d_model: int = 768,
        image_size: int = 224,
        patch_size: int = 16,
        classifier_mlp_d: int | None = None,
        encoder_mlp_d: int = 3072,
        encoder_num_heads: int = 12,
        num_encoder_blocks: int = 12,
        dropout: float = 0.0,
        encoder_dropout: float = 0.0,
        encoder_attention_dropout: float = 0.0,
        patchify_technique: str = "convolutional",
        stochastic_depth: bool = False,
        stochastic_depth_mp: float = 0.0,
        layer_scale: float | None = None,
        in_channels: int = 3,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        check_non_negative_int("num_classes", num_classes)
        for name, value in (("d_model", d_model), ("image_size", image_size), ("patch_size", patch_size),
                            ("encoder_mlp_d", encoder_mlp_d), ("encoder_num_heads", encoder_num_heads),
                            ("num_encoder_blocks", num_encoder_blocks), ("in_channels", in_channels)):
            check_positive_int(name, value)
        if classifier_mlp_d is not None:
            check_positive_int("classifier_mlp_d", classifier_mlp_d)
        if patchify_technique == "conv_stem":  # strided convolutions keep the border: any size >= the patch
            if image_size < patch_size:
                raise ConfigError(f"image_size={image_size} is smaller than patch_size={patch_size}: the "
                                  "convolutional stem would leave no token; use a smaller patch_size")
        else:
            check_divisible("image_size", image_size, "patch_size", patch_size)
        check_divisible("d_model", d_model, "encoder_num_heads", encoder_num_heads)
        for name, value in (("dropout", dropout), ("encoder_dropout", encoder_dropout),
                            ("encoder_attention_dropout", encoder_attention_dropout),
                            ("stochastic_depth_mp", stochastic_depth_mp)):
            check_probability(name, value)
        if not isinstance(stochastic_depth, bool):
            raise ConfigError(f"stochastic_depth={stochastic_depth!r} is invalid; expected True or False")
        if not stochastic_depth and stochastic_depth_mp > 0:
            raise ConfigError(
                f"stochastic_depth_mp={stochastic_depth_mp} has no effect with stochastic_depth=False; "
                "set stochastic_depth=True or stochastic_depth_mp=0.0"
            )
        if layer_scale is not None and (isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float))
                                        or not layer_scale > 0):
            raise ConfigError(f"layer_scale={layer_scale!r} is invalid; expected a positive float or None")

        self.config: dict[str, Any] = dict(
            num_classes=num_classes, d_model=d_model, image_size=image_size, patch_size=patch_size,
            classifier_mlp_d=classifier_mlp_d, encoder_mlp_d=encoder_mlp_d,
            encoder_num_heads=encoder_num_heads, num_encoder_blocks=num_encoder_blocks, dropout=dropout,
            encoder_dropout=encoder_dropout, encoder_attention_dropout=encoder_attention_dropout,
            patchify_technique=patchify_technique, stochastic_depth=stochastic_depth,
            stochastic_depth_mp=stochastic_depth_mp, layer_scale=layer_scale, in_channels=in_channels,
            norm_eps=norm_eps,
        )
        self.num_classes = num_classes
        self.embed_dim = self.num_features = d_model
        self.image_size = image_size
        self.in_channels = in_channels

        self.patch_embed = PatchEmbed(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                                      d_model=d_model, technique=patchify_technique)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self._init_extra_tokens(d_model)
        num_positions = self.patch_embed.num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, d_model))  # (1, P+N, D)
        self.pos_drop = nn.Dropout(dropout)

        rates = linear_drop_path_rates(stochastic_depth_mp if stochastic_depth else 0.0, num_encoder_blocks)
        self.blocks = nn.Sequential(*[
            Block(dim=d_model, num_heads=encoder_num_heads, mlp_dim=encoder_mlp_d, proj_drop=encoder_dropout,
                  attn_drop=encoder_attention_dropout, drop_path=rate, layer_scale=layer_scale, norm_eps=norm_eps)
            for rate in rates
        ])
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.head_drop = nn.Dropout(dropout)
        self._build_heads(num_classes, classifier_mlp_d)
        self.init_weights()

    # --- construction hooks (overridden by DeiT) -------------------------------------
    def _init_extra_tokens(self, d_model: int) -> None:
        """Prefix tokens besides the class token; ViT has none."""

    def _build_heads(self, num_classes: int, classifier_mlp_d: int | None) -> None:
        d_model = self.embed_dim
        if classifier_mlp_d is None:
            self.pre_logits: nn.Module = nn.Identity()
            head_in = d_model
        else:
            self.pre_logits = nn.Sequential(OrderedDict(fc=nn.Linear(d_model, classifier_mlp_d), act=nn.Tanh()))
            head_in = classifier_mlp_d
        self.head = nn.Linear(head_in, num_classes) if num_classes > 0 else nn.Identity()

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) tokens, position embedding and Linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in self.prefix_token_parameters():
            nn.init.trunc_normal_(token, std=0.02)
        self.apply(_init_linear_and_norm)
        # Same init for both patchify techniques, so they agree at initialisation too.
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight, std=0.02)
        nn.init.zeros_(proj.bias)

    def prefix_token_parameters(self) -> list[nn.Parameter]:
        """The learned tokens prepended to the patch tokens, in sequence order."""
        return [self.cls_token]

    # --- timm-style interface ---------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (tokens and position embedding)."""
        return {"pos_embed", "cls_token"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes``."""
        check_non_negative_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.config["num_classes"] = num_classes
        for name in self._classifier_names():
            head = nn.Linear(self._head_in_features(), num_classes) if num_classes > 0 else nn.Identity()
            head.apply(_init_linear_and_norm)
            self._to_model_device(head)
            setattr(self, name, head)

    def _classifier_names(self) -> tuple[str, ...]:
        return ("head",)

    def _head_in_features(self) -> int:
        return self.config["classifier_mlp_d"] or self.embed_dim

    def _to_model_device(self, module: nn.Module) -> None:
        ref = self.pos_embed
        module.to(device=ref.device, dtype=ref.dtype)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the prefix tokens and add the position embedding."""
        B = x.shape[0]
        P = self.num_prefix_tokens
        prefix = torch.cat(self.prefix_token_parameters(), dim=1) + self.pos_embed[:, :P]  # (1, P, D)
        x = x + self.pos_embed[:, P:]  # (B, N, D)
        x = torch.cat([prefix.expand(B, -1, -1), x], dim=1)  # (B, P+N, D)
        return self.pos_drop(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, P+N, D)."""
        x = self.patch_embed(x)  # (B, N, D)
        x = self._pos_embed(x)  # (B, P+N, D)
        x = self.blocks(x)  # (B, P+N, D)
        return self.norm(x)  # (B, P+N, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, P+N, D) -> logits (B, num_classes) from the class token."""
        x = self.pre_logits(self.head_drop(x[:, 0]))  # (B, D) or (B, classifier_mlp_d)
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
