"""deit: Data-efficient Image Transformers (Touvron et al. 2021, arXiv 2012.12877)."""
from deit.core.errors import CheckpointError, DeitError, MissingCheckpointError

# deit.models before the factory: its registry must be complete before the factory it re-exports
from deit.models import ConvNeXt, DeiT, ResNet, ViT, create_model, get_pretrained_cfg, list_models, register_model
from deit.models.teacher_output import TeacherInputNorm
from deit.weights.factory import build_from_checkpoint, convert_checkpoint
from deit.weights.layouts import load_pretrained, save_model

__version__ = "0.1.0"

__all__ = [
    "ViT", "DeiT", "ConvNeXt", "ResNet", "create_model", "list_models", "register_model", "get_pretrained_cfg",
    "load_pretrained", "save_model", "build_from_checkpoint", "convert_checkpoint", "TeacherInputNorm",
    "DeitError", "CheckpointError", "MissingCheckpointError", "__version__",
]
