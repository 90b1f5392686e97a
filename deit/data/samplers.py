"""Samplers for training (repeated augmentation) and exact sharded evaluation.

Every sampler here has ``set_epoch(epoch)``, so the engine can call it on any loader.
"""
from __future__ import annotations

from typing import Iterator, Sized

from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import Sampler

from deit.core.errors import ConfigError
from deit.core.validation import check_non_negative_int, check_positive_int

__all__ = ["SeededRepeatAugSampler", "ShardSampler"]


def _check_rank(world_size: int, rank: int) -> None:
    check_positive_int("world_size", world_size)
    check_non_negative_int("rank", rank)
    if rank >= world_size:
        raise ConfigError(f"rank={rank} is invalid for world_size={world_size}; expected 0 <= rank < world_size")


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of an evaluation set: indices ``rank, rank + world_size, ...``
    in order.

    Unlike ``DistributedSampler`` nothing is padded or repeated: every index is seen by
    exactly one rank, so counts of correct predictions summed over ranks are exact (ranks
    may differ by one sample). ``set_epoch`` is accepted and changes nothing.
    """

    def __init__(self, dataset: Sized, world_size: int = 1, rank: int = 0):
        _check_rank(world_size, rank)
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """No-op: the evaluation order never changes."""


class SeededRepeatAugSampler(RepeatAugSampler):
    """timm's ``RepeatAugSampler`` (DeiT's RASampler) whose shuffle also depends on ``seed``.

    Each epoch shuffles the data set, repeats every index ``num_repeats`` times in a row
    ([a, a, a, b, b, b, ...]), pads by wrapping around, deals the list out to the ranks and
    keeps the first ``len(self)`` entries of this rank's share. In one process the copies
    of an image thus sit in the same batch, each augmented differently — as across ranks
    in a distributed step.

    timm seeds that shuffle with ``torch.Generator().manual_seed(self.epoch)`` and has no
    seed argument; here ``set_epoch(epoch)`` stores ``seed + epoch`` in ``self.epoch`` (the
    value ``DistributedSampler`` seeds with), so the order is a pure function of
    ``seed + epoch``, independent of any global RNG.
    """

    def __init__(self, dataset: Sized, *, num_replicas: int = 1, rank: int = 0, num_repeats: int = 3,
                 seed: int = 0, selected_round: int = 256):
        _check_rank(num_replicas, rank)
        check_positive_int("num_repeats", num_repeats)
        check_non_negative_int("seed", seed)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         num_repeats=num_repeats, selected_round=selected_round)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` for the next iteration (generator seed ``seed + epoch``)."""
        super().set_epoch(self.seed + epoch)
