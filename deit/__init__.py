"""deit: Data-efficient Image Transformers (Touvron et al. 2021, arXiv 2012.12877)."""
from deit.checkpoint import (
    CheckpointError,
    MissingCheckpointError,
    build_from_checkpoint,
    convert_checkpoint,
    load_pretrained,
    save_model,
)
from deit.models import ConvNeXt, DeiT, ViT, create_model, get_pretrained_cfg, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "ViT", "DeiT", "ConvNeXt", "create_model", "list_models", "register_model", "get_pretrained_cfg",
    "load_pretrained", "save_model", "build_from_checkpoint", "convert_checkpoint",
    "CheckpointError", "MissingCheckpointError", "__version__",
]
