"""Model definitions: ViT, DeiT, ConvNeXt, ResNet and the registry of named variants."""
from deit.models.convnext import ConvNeXt
from deit.models.deit import DeiT
from deit.models.pretrained import PretrainedCfg, WeightFile, class_names
from deit.models.registry import get_pretrained_cfg, list_models, register_model
from deit.models.resnet import ResNet
from deit.models.vit import ViT

# The factory (weights from files) sits above the registry; re-exported here after the
# registry is complete so that ``from deit.models import create_model`` keeps working.
from deit.weights.factory import create_model  # noqa: E402

__all__ = ["ViT", "DeiT", "ConvNeXt", "ResNet", "create_model", "list_models", "register_model",
           "get_pretrained_cfg", "PretrainedCfg", "WeightFile", "class_names"]
