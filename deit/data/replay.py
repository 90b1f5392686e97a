"""A replayable training data path: every random draw is a function of where a sample sits.

A teacher-output cache (:mod:`deit.distill.cache`) can only stand in for the live teacher
if the student sees exactly the views the teacher saw. TinyViT's fast distillation (Wu et
al. 2022, §3.2; ``microsoft/Cream`` ``TinyViT/data/augmentation``) makes that possible
by storing each sample's augmentation seed and replaying it; here the seed needs no
storing, because it is derived:

* the sample order comes from the samplers of :mod:`deit.data.samplers`, already a pure
  function of ``(seed, epoch)``;
* a sample's augmentation (random-resized crop, flip, RandAugment, colour jitter,
  erasing) is drawn from Python's ``random``, NumPy's global generator and torch's CPU
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
which seeds the three global generators and puts torch's back afterwards, so the training
loop's own stream (drop path, the seeds of DataLoader workers) is untouched. The result
is the same in the main process and in any DataLoader worker.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deit.core.validation import check_non_negative_int, check_positive_int

__all__ = ["ReplayDataset", "ReplayMixup", "ReplaySampler", "key_seed", "seeded_rngs"]

_SAMPLE_STREAM, _MIXUP_STREAM = 0, 1


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele et al. 2014): a bijective 64-bit mix, so that nearby
    keys give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def key_seed(*key: int) -> int:
    """A 64-bit seed for the integers ``key`` (each folded in with SplitMix64)."""
    h = 0
    for k in key:
        h = _splitmix64(h ^ (int(k) & _MASK64))
    return h


@contextlib.contextmanager
def seeded_rngs(*key: int):
    """Seed ``random``, NumPy's global generator and torch's CPU generator from the integers
    ``key`` and run the block; torch's generator is then put back in its previous state.

    Only torch's is restored: the training loop draws from it (drop path, dropout), while
    nothing it runs outside the replayed data path and :class:`ReplayMixup` draws from
    Python's or NumPy's global generator, which stay seeded from the last key: saving and
    restoring their 624-word states would cost more than augmenting a small image
    (``benchmarks/README.md``, the replayable data path).
    """
    seed = key_seed(*key)
    generator = torch.default_generator
    saved = generator.get_state()
    random.seed(seed)
    np.random.seed(seed >> 32)  # a 32-bit seed
    generator.manual_seed(_splitmix64(seed) >> 1)  # another 63-bit seed (torch takes signed 64-bit)
    try:
        yield
    finally:
        generator.set_state(saved)


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
