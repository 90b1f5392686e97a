"""deit: Data-efficient Image Transformers (Touvron et al. 2021, arXiv 2012.12877)."""
# deit.models first: its registry must be complete before the factory, which it re-exports
from deit.models import ConvNeXt, DeiT, ResNet, ViT, create_model, get_pretrained_cfg, list_models, register_model
from deit.checkpoint import load_pretrained, save_model  # noqa: I001
from deit.errors import CheckpointError, DeitError, MissingCheckpointError
from deit.factory import build_from_checkpoint, convert_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ViT", "DeiT", "ConvNeXt", "ResNet", "create_model", "list_models", "register_model", "get_pretrained_cfg",
    "load_pretrained", "save_model", "build_from_checkpoint", "convert_checkpoint",
    "DeitError", "CheckpointError", "MissingCheckpointError", "__version__",
]
