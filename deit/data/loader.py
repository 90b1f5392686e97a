"""DataLoader construction for training and evaluation.

Determinism (what resuming a run relies on):

* Sample ORDER depends only on ``seed`` and the epoch: the engine calls
  ``loader.sampler.set_epoch(epoch)`` before each epoch, and both training samplers seed
  their own ``torch.Generator`` with ``seed + epoch``.
* AUGMENTATION randomness (timm uses Python's ``random``, NumPy and torch) comes, with
  ``replay=True`` (what ``deit train`` uses), from ``(seed, epoch, position)`` alone
  (:mod:`deit.data.replay`); without it, from:

  - ``num_workers=0``: the main process's global RNGs, which the training loop also
    consumes; a resumed run matches only if those states are restored.
  - ``num_workers>0``: no ``worker_init_fn`` is needed. When an iterator is created,
    PyTorch draws ``base_seed`` from the global torch generator, and worker ``i`` seeds
    ``random``, ``torch`` and NumPy from ``base_seed`` and ``i``. So the streams follow
    from the global torch RNG state at the moment the workers start. Workers are NOT
    persistent: every epoch starts fresh workers seeded from the global state, which the
    training checkpoint saves and restores, so a run resumed at epoch k draws exactly the
    augmentations of an uninterrupted run (persistent workers would carry RNG state from
    one epoch to the next that no checkpoint holds).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Sized

from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from deit.core.errors import ConfigError
from deit.core.validation import check_non_negative_int, check_positive_int
from deit.data.replay import ReplayDataset, ReplaySampler
from deit.data.samplers import SeededRepeatAugSampler, ShardSampler

__all__ = ["RA_ROUND", "RA_ROUND_MIN_DATASET", "build_loader", "build_sampler", "collate_readable"]

RA_ROUND = 256
"""timm's (and DeiT's) repeated-augmentation rounding: an epoch keeps
``len(dataset) // 256 * 256 / world_size`` samples per rank."""
RA_ROUND_MIN_DATASET = 20 * RA_ROUND
"""Below this many images the rounding is off (it would drop more than 5% of each epoch,
e.g. 157 of digits' 1437): an epoch then keeps ``ceil(len(dataset) / world_size)`` samples."""


def build_sampler(dataset: Sized, *, is_train: bool, repeated_aug: int = 3, world_size: int = 1, rank: int = 0,
                  seed: int = 0):
    """The sampler :func:`build_loader` uses; every one has ``set_epoch(epoch)``.

    * training, ``repeated_aug > 1``: :class:`~deit.data.samplers.SeededRepeatAugSampler`
      (timm's RepeatAugSampler) — also with ``world_size=1``, unlike the official DeiT
      code, which uses it only across several processes;
    * training, ``repeated_aug`` of 0 or 1: ``DistributedSampler(shuffle=True, seed=seed)``
      (fine with ``world_size=1``; pads by wrapping so all ranks get equal counts);
    * evaluation: :class:`~deit.data.samplers.ShardSampler`, in order, nothing padded.
    """
    check_non_negative_int("repeated_aug", repeated_aug)
    check_positive_int("world_size", world_size)
    check_non_negative_int("rank", rank)
    check_non_negative_int("seed", seed)
    if not is_train:
        return ShardSampler(dataset, world_size=world_size, rank=rank)
    if repeated_aug > 1:
        selected_round = RA_ROUND if len(dataset) >= RA_ROUND_MIN_DATASET else 0
        return SeededRepeatAugSampler(dataset, num_replicas=world_size, rank=rank, num_repeats=repeated_aug,
                                      seed=seed, selected_round=selected_round)
    if rank >= world_size:
        raise ConfigError(f"rank={rank} is invalid for world_size={world_size}; expected 0 <= rank < world_size")
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def collate_readable(batch: Sequence[Any]) -> Any:
    """The batch of the samples that are not ``None`` (``default_collate``), or ``None`` when no
    sample is left: an image folder loaded with ``fill_skipped=False`` serves ``None`` for an
    unreadable file it skips (:class:`~deit.data.datasets.FolderDataset`), so an evaluation
    counts each readable file once and a skipped one not at all. Drop the ``None`` batches."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


def build_loader(dataset: Dataset, *, batch_size: int, is_train: bool, repeated_aug: int = 3,
                 num_workers: int = 0, world_size: int = 1, rank: int = 0, seed: int = 0,
                 pin_memory: bool = False, replay: bool = False,
                 collate_fn: Callable[[Sequence[Any]], Any] | None = None) -> DataLoader:
    """A DataLoader over this rank's share of ``dataset`` (sampler: :func:`build_sampler`).

    Training drops the last incomplete batch (``drop_last=True``): Mixup/CutMix in batch
    mode need an even batch size, and equal batch counts keep distributed ranks in step.
    A training epoch with fewer samples than ``batch_size`` is an error rather than an
    epoch of zero batches. Evaluation keeps every sample (last batch may be smaller).

    Call ``loader.sampler.set_epoch(epoch)`` before each epoch; see the module docstring
    for what makes the sample order and the augmentations reproducible.

    ``replay=True`` (training only) makes every augmentation a function of ``(seed, epoch,
    position in the epoch's order)`` (:mod:`deit.data.replay`), independent of the global
    RNGs and of ``num_workers``: batches are then ``(images, targets, keys)``, ``keys`` a
    (B, 2) tensor of ``(epoch, position)``, which is what a teacher-output cache looks up.

    ``collate_fn``: how samples make a batch (default: ``default_collate``), e.g.
    :func:`collate_readable` for an evaluation that leaves unreadable files out.
    """
    check_positive_int("batch_size", batch_size)
    check_non_negative_int("num_workers", num_workers)
    sampler = build_sampler(dataset, is_train=is_train, repeated_aug=repeated_aug, world_size=world_size,
                            rank=rank, seed=seed)
    if is_train and len(sampler) < batch_size:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the {len(sampler)} training samples per epoch on "
            f"rank {rank} (data set of {len(dataset)}, world_size={world_size}, repeated_aug={repeated_aug}); "
            f"with drop_last=True that would give 0 batches. Expected batch_size <= {len(sampler)}: lower "
            "--batch-size (or use more training images)")
    if replay:
        if not is_train:
            raise ConfigError("replay=True is for training loaders: evaluation has no random draws")
        sampler = ReplaySampler(sampler, world_size=world_size, rank=rank)
        dataset = ReplayDataset(dataset, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=is_train, persistent_workers=False, collate_fn=collate_fn)
