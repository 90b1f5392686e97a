"""A replayable training data path: every random draw is a function of where a sample sits.

A teacher-output cache (:mod:`deit.teacher_cache`) can only stand in for the live teacher
if the student sees exactly the views the teacher saw. TinyViT's fast distillation (Wu et
al. 2022, §3.2; ``microsoft/Cream`` ``TinyViT/data/augmentation``) makes that possible
by storing each sample's augmentation seed and replaying it; here the seed needs no
storing, because it is derived:

* the sample order comes from the samplers of :mod:`deit.data.samplers`, already a pure
  function of ``(seed, epoch)``;
* a sample's augmentation (random-resized crop, flip, RandAugment, colour jitter,
  erasing) is drawn from Python's ``random``, NumPy's global generator and torch's global
  generator — whatever timm and torchvision use — each seeded for that one call from
  ``(seed, epoch, position)``, where ``position`` is the sample's place in the epoch's
  order over all processes (``local position × world_size + rank``: both training
  samplers deal the order out round-robin). It is not the data set index: with repeated
  augmentation an image appears several times per epoch, each copy a different view;
* a batch's Mixup/CutMix (timm's ``Mixup`` draws λ, the switch and the box from NumPy's
  generator; the pairing is the batch reversed) is seeded from ``(seed, epoch, first
  position of the batch)``, which names the batch and the rank.

timm's transforms are used as they are: :class:`ReplayDataset` wraps the data set's
``__getitem__`` and :class:`ReplayMixup` wraps timm's ``Mixup`` in :func:`seeded_rngs`,
which seeds the three global generators and restores their previous states afterwards, so
the training loop's own stream (drop path, the order of DataLoader workers) is untouched.
The result is the same in the main process and in any DataLoader worker.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deit._validation import check_non_negative_int, check_positive_int

__all__ = ["ReplayDataset", "ReplayMixup", "ReplaySampler", "sample_keys_positions", "seeded_rngs"]

_SAMPLE_STREAM, _MIXUP_STREAM = 0, 1


@contextlib.contextmanager
def seeded_rngs(*key: int):
    """Seed ``random``, NumPy's and torch's global generators from the integers ``key``
    (through NumPy's ``SeedSequence``, so nearby keys give unrelated streams), run the
    block, then put the three generators back in their previous states."""
    words = np.random.SeedSequence([int(k) for k in key]).generate_state(4, dtype=np.uint32)
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(int(words[0]) << 32 | int(words[1]))
    np.random.seed(words[:2])
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class ReplaySampler(Sampler[tuple[int, int, int]]):
    """Yields ``(index, epoch, position)`` for each index of ``sampler`` (a training sampler
    with ``set_epoch``), ``position`` being the sample's place in the epoch's order over
    all ``world_size`` processes: ``local position × world_size + rank``."""

    def __init__(self, sampler: Sampler[int], *, world_size: int = 1, rank: int = 0):
        check_positive_int("world_size", world_size)
        check_non_negative_int("rank", rank)
        self.sampler = sampler
        self.world_size = world_size
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The order of epoch ``epoch`` (passed on to the wrapped sampler)."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for local, index in enumerate(self.sampler):
            yield int(index), self.epoch, local * self.world_size + self.rank

    def __len__(self) -> int:
        return len(self.sampler)


class ReplayDataset(Dataset):
    """``dataset`` whose item ``(index, epoch, position)`` is ``dataset[index]`` drawn under
    :func:`seeded_rngs` ``(seed, epoch, position)``, returned as ``(image, target, key)``
    with ``key = tensor([epoch, position])`` (batched: a (B, 2) tensor naming each view)."""

    def __init__(self, dataset: Dataset, seed: int):
        check_non_negative_int("seed", seed)
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[Any, Any, torch.Tensor]:
        index, epoch, position = item
        with seeded_rngs(_SAMPLE_STREAM, self.seed, epoch, position):
            image, target = self.dataset[index]
        return image, target, torch.tensor([epoch, position], dtype=torch.int64)

    def __getattr__(self, name: str) -> Any:  # classes, targets, skipped, ... of the wrapped set
        if name in ("dataset", "seed") or name.startswith("__"):  # not a Subset's __getitems__ (index lists)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ReplayMixup:
    """timm's ``Mixup`` (``mode="batch"``) drawn under :func:`seeded_rngs` ``(seed, epoch,
    first position of the batch)``; called as ``mixup(images, targets, keys)`` with the
    batch's (B, 2) keys from :class:`ReplayDataset`."""

    def __init__(self, mixup: Callable, seed: int):
        self.mixup = mixup
        self.seed = seed

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor):
        epoch, position = (int(v) for v in keys[0].tolist())
        with seeded_rngs(_MIXUP_STREAM, self.seed, epoch, position):
            return self.mixup(images, targets)

    def __getattr__(self, name: str) -> Any:  # mixup_alpha, cutmix_alpha, label_smoothing, ...
        if name in ("mixup", "seed") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.mixup, name)


def sample_keys_positions(keys: torch.Tensor, world_size: int) -> tuple[int, torch.Tensor]:
    """The epoch of a batch's (B, 2) keys and each sample's position in this process's
    share of the epoch (``position // world_size``), (B,)."""
    epoch = int(keys[0, 0])
    return epoch, keys[:, 1] // world_size  # (B,)

