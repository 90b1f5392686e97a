"""Model definitions: ViT, DeiT, ConvNeXt and the registry of named variants."""
from deit.models.convnext import ConvNeXt
from deit.models.deit import DeiT
from deit.models.registry import create_model, list_models, register_model
from deit.models.vit import ViT

__all__ = ["ViT", "DeiT", "ConvNeXt", "create_model", "list_models", "register_model"]
