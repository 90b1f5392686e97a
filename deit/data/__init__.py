"""The data layer for distillation training: decoding, data sets, transforms, samplers, loaders."""
from deit.data.datasets import (
    BUILTIN_DATASETS,
    DATASET_INFO,
    ArrayImageDataset,
    CorruptDatasetError,
    DatasetInfo,
    DatasetNotFoundError,
    FolderDataset,
    dataset_info,
    dataset_mean_std,
    load_dataset,
    read_idx,
    stratified_indices,
)
from deit.data.decode import load_image
from deit.data.loader import build_loader, build_sampler
from deit.data.samplers import SeededRepeatAugSampler, ShardSampler
from deit.data.torch_datasets import PYTHON_DATASET_PREFIX, TorchImageDataset
from deit.data.transforms import build_transform, stats_for_channels

__all__ = [
    "BUILTIN_DATASETS", "DATASET_INFO", "ArrayImageDataset", "CorruptDatasetError", "DatasetInfo",
    "DatasetNotFoundError", "FolderDataset", "dataset_info", "dataset_mean_std", "load_dataset", "read_idx",
    "stratified_indices", "build_transform", "load_image", "stats_for_channels", "build_loader", "build_sampler",
    "SeededRepeatAugSampler", "ShardSampler", "PYTHON_DATASET_PREFIX", "TorchImageDataset",
]
