"""Samplers and loaders: repeated augmentation, epoch seeding, exact eval shards."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DistributedSampler

from deit.data.datasets import load_dataset
from deit.data.loader import build_loader, build_sampler
from deit.data.samplers import SeededRepeatAugSampler, ShardSampler
from deit.data.transforms import build_transform


def test_repeat_aug_in_one_process_repeats_each_index_three_times():
    sampler = build_sampler(range(30), is_train=True, repeated_aug=3)
    assert isinstance(sampler, SeededRepeatAugSampler)
    order = list(sampler)
    assert len(order) == len(sampler) == 30          # one epoch = len(dataset) draws
    triples = [order[i:i + 3] for i in range(0, 30, 3)]
    assert all(t[0] == t[1] == t[2] for t in triples)   # each selected index 3 times in a row
    assert Counter(order) == {t[0]: 3 for t in triples}  # 10 distinct images, 3 copies each


def test_repeat_aug_small_dataset_is_not_rounded_away():
    # digits train: timm's 256-rounding would keep 1280 of 1437; we keep them all
    sampler = build_sampler(range(1437), is_train=True, repeated_aug=3)
    assert len(sampler) == len(list(sampler)) == 1437
    assert len(build_sampler(range(100), is_train=True, repeated_aug=3)) == 100
    # large data sets keep the official rounding
    assert len(build_sampler(range(6000), is_train=True, repeated_aug=3)) == 6000 // 256 * 256
    # two ranks share the epoch
    ranks = [build_sampler(range(1437), is_train=True, world_size=2, rank=r) for r in (0, 1)]
    assert [len(s) for s in ranks] == [719, 719]


@pytest.mark.parametrize("repeated_aug", [3, 1])
def test_set_epoch_changes_order_deterministically(repeated_aug):
    def order(epoch, seed=0):
        sampler = build_sampler(range(60), is_train=True, repeated_aug=repeated_aug, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(123)   # the global RNG plays no part
    first = order(0)
    torch.manual_seed(456)
    assert order(0) == first
    assert order(1) != first and order(1) == order(1)
    assert order(0, seed=5) != first
    assert order(1, seed=5) == order(1, seed=5)


def test_sampler_types():
    assert isinstance(build_sampler(range(10), is_train=True, repeated_aug=1), DistributedSampler)
    assert isinstance(build_sampler(range(10), is_train=True, repeated_aug=0), DistributedSampler)
    assert isinstance(build_sampler(range(10), is_train=False), ShardSampler)
    with pytest.raises(ValueError, match="rank=2 is invalid for world_size=2"):
        build_sampler(range(10), is_train=True, world_size=2, rank=2)
    with pytest.raises(ValueError, match="rank=1 is invalid for world_size=1"):
        build_sampler(range(10), is_train=False, rank=1)


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(range(11), world_size=2, rank=r)) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]
    assert sorted(shards[0] + shards[1]) == list(range(11))
    sampler = ShardSampler(range(11), world_size=2, rank=1)
    sampler.set_epoch(3)
    assert len(sampler) == 5 and list(sampler) == shards[1]


@pytest.fixture(scope="module")
def digits_train():
    return load_dataset("digits", "train")


def test_loader_batches(digits_train):
    digits_train.transform = build_transform(is_train=True, image_size=16, in_channels=1, mean=(0.3,),
                                             std=(0.37,), hflip=0.0)
    loader = build_loader(digits_train, batch_size=128, is_train=True)
    assert len(loader) == 1437 // 128 == 11           # drop_last: only full batches
    images, labels = next(iter(loader))
    assert images.shape == (128, 1, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (128,) and labels.dtype == torch.int64

    val = load_dataset("digits", "val", transform=build_transform(
        is_train=False, image_size=16, in_channels=1, mean=(0.3,), std=(0.37,)))
    eval_loader = build_loader(val, batch_size=100, is_train=False)
    sizes = [x.shape[0] for x, _ in eval_loader]
    assert sizes == [100, 100, 100, 60]              # every sample, none repeated
    shards = [build_loader(val, batch_size=64, is_train=False, world_size=2, rank=r) for r in (0, 1)]
    assert sum(len(s.sampler) for s in shards) == 360


def test_loader_rejects_batch_larger_than_epoch():
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 40 training samples .*0 batches"):
        build_loader(list(range(40)), batch_size=64, is_train=True)


def test_worker_loader_is_reproducible_from_global_seed(digits_train):
    """num_workers > 0: augmentation follows the global torch seed at iterator creation."""
    digits_train.transform = build_transform(is_train=True, image_size=8, in_channels=1, mean=(0.3,),
                                             std=(0.37,))

    def first_batch():
        torch.manual_seed(7)
        loader = build_loader(digits_train, batch_size=32, is_train=True, num_workers=1)
        assert not loader.persistent_workers  # fresh workers per epoch: seeded from the (checkpointed) global RNG
        loader.sampler.set_epoch(2)
        return next(iter(loader))

    (a, la), (b, lb) = first_batch(), first_batch()
    assert torch.equal(la, lb) and torch.equal(a, b)
