"""The teacher-output cache and the replayable data path (deit.distill.cache, deit.data.replay).

The reference is always the live teacher: a cached run must train exactly like a run that
computes the teacher's outputs as it goes, and a soft target rebuilt from the top-k logits
must equal the live distribution up to the truncation, which is measured.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deit.data import build_loader, build_transform, load_dataset
from deit.distill.cache import TeacherCache, TeacherCacheMismatchError
from deit.train.run import train
from deit.train.settings import TrainConfig
from deit.weights.factory import create_model
from deit.weights.layouts import save_model

# The paper's full recipe (RandAugment, Mixup/CutMix, random erasing, repeated augmentation x3,
# EMA, drop path: TrainConfig's defaults) on 192 digits at 16 px, hard distillation.
RECIPE = dict(dataset="digits", model="deit_pico_distilled_patch4_32", image_size=16, teacher_model="resnet8_32",
              distillation_type="hard", epochs=2, batch_size=32, train_subset=192, val_subset=60,
              warmup_epochs=1, lr=5e-3, progress=False)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    save_model(create_model("resnet8_32", num_classes=10, in_channels=1), path)
    return path


def _config(tmp: Path, teacher_file: Path, name: str, **changes) -> TrainConfig:
    return TrainConfig(**{**RECIPE, "teacher_checkpoint": str(teacher_file), "output": str(tmp / name), **changes})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pth", weights_only=True)["model"]


def _cache_stats(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["teacher_cache"]


# --- the replayable data path ------------------------------------------------------------------

def _batches(num_workers: int, epoch: int = 1) -> list:
    dataset = load_dataset("digits", "train", transform=build_transform(
        is_train=True, image_size=16, in_channels=1, mean=[0.5], std=[0.5]))
    loader = build_loader(dataset, batch_size=16, is_train=True, repeated_aug=3, seed=7, replay=True,
                          num_workers=num_workers)
    loader.sampler.set_epoch(epoch)
    return [batch for _, batch in zip(range(3), loader)]


def test_views_depend_on_seed_epoch_and_position_only():
    torch.manual_seed(123)
    np.random.seed(5)
    a = _batches(num_workers=0)
    torch.manual_seed(999)  # other global states, other worker seeds: the same views
    np.random.seed(6)
    b = _batches(num_workers=2)
    for (images_a, targets_a, keys_a), (images_b, targets_b, keys_b) in zip(a, b):
        assert torch.equal(images_a, images_b) and torch.equal(targets_a, targets_b) and torch.equal(keys_a, keys_b)
    images, targets, keys = a[0]
    assert keys.shape == (16, 2) and (keys[:, 0] == 1).all() and keys[:, 1].tolist() == list(range(16))
    # repeated augmentation: the 3 copies of an image are the same label but 3 different views
    assert targets[0] == targets[1] == targets[2]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[1], images[2])
    other_epoch = _batches(num_workers=0, epoch=2)[0][0]
    assert not torch.equal(other_epoch, images)


def test_replay_leaves_the_training_loops_random_stream_alone():
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    _batches(num_workers=0)
    # a DataLoader draws one base seed from torch's generator per iterator; nothing else is consumed
    torch.manual_seed(42)
    torch.empty((), dtype=torch.int64).random_()
    after_iterator = torch.rand(3)
    torch.manual_seed(42)
    _batches(num_workers=0)
    assert torch.equal(torch.rand(3), after_iterator) and not torch.equal(after_iterator, expected)


# --- exactness ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_hard_distillation_from_the_cache_trains_exactly_as_from_the_live_teacher(tmp_path, teacher_file):
    from deit.cli import main

    live = train(_config(tmp_path, teacher_file, "live"))
    cache = tmp_path / "cache"
    flags = ["--recipe", "paper",  # the paper's defaults, as RECIPE's TrainConfig (deit train would choose small-data)
             "--dataset", "digits", "--model", RECIPE["model"], "--image-size", "16", "--teacher-model",
             "resnet8_32", "--teacher-checkpoint", str(teacher_file), "--distillation-type", "hard", "--epochs", "2",
             "--batch-size", "32", "--train-subset", "192", "--teacher-cache", str(cache)]
    assert main(["cache-teacher", *flags]) == 0  # the teacher alone, ahead of training
    cached = train(_config(tmp_path, teacher_file, "cached", teacher_cache=str(cache)))
    stats = _cache_stats(cached.output)
    assert stats == {"hits": 2 * 192, "misses": 0}  # every view of both epochs came from the disk
    for part in ("model", "ema"):  # the weights and their moving average
        a = torch.load(live.output / "last.pth", weights_only=True)[part]
        b = torch.load(cached.output / "last.pth", weights_only=True)[part]
        assert a.keys() == b.keys()
        assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6, part
    assert cached.final["val_acc1"] == live.final["val_acc1"]


def test_a_run_that_fills_the_cache_equals_one_that_reads_it(tmp_path, teacher_file):
    short = dict(epochs=1, train_subset=96, model_ema=False)
    filled = train(_config(tmp_path, teacher_file, "fill", teacher_cache=str(tmp_path / "cache"), **short))
    read = train(_config(tmp_path, teacher_file, "read", teacher_cache=str(tmp_path / "cache"), **short))
    # timm's RASampler keeps an epoch at the data set's length: 96 views, a third of the images x 3
    assert _cache_stats(filled.output) == {"hits": 0, "misses": 96}
    assert _cache_stats(read.output) == {"hits": 96, "misses": 0}
    a, b = _weights(filled.output), _weights(read.output)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- soft targets: top-k with the rest spread, against the live distribution --------------------

def _soft_cache(tmp_path: Path, k: int, num_classes: int = 10, tau: float = 3.0) -> TeacherCache:
    return TeacherCache(directory=tmp_path / f"k{k}", identity={"test": k}, teacher=None, num_classes=num_classes,
                        kind="soft", batch_size=8, samples_per_epoch=8, tau=tau, topk=k, machine="cpu:test")


def test_soft_targets_rebuilt_from_all_logits_are_the_teacher_distribution(tmp_path):
    logits = torch.randn(8, 10) * 4
    cache = _soft_cache(tmp_path, k=10)
    rebuilt = cache.decode(cache.encode(logits))  # (8, 10) pseudo-logits τ·log p̂
    live = F.log_softmax(logits / 3.0, dim=1)
    assert torch.allclose(F.log_softmax(rebuilt / 3.0, dim=1), live, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_soft_targets_from_top_k_keep_the_top_k_and_spread_the_rest(tmp_path, k):
    torch.manual_seed(k)
    logits = torch.randn(8, 10) * 4
    cache = _soft_cache(tmp_path, k=k)
    target = F.softmax(cache.decode(cache.encode(logits)) / 3.0, dim=1)  # (8, 10) what the KL term sees
    live = F.softmax(logits / 3.0, dim=1)
    top = live.topk(k, dim=1).indices
    assert torch.allclose(target.gather(1, top), live.gather(1, top), atol=1e-6)  # the k kept exactly
    assert torch.allclose(target.sum(1), torch.ones(8), atol=1e-6)
    rest = torch.ones_like(live, dtype=torch.bool).scatter_(1, top, False)
    spread = target[rest].view(8, 10 - k)
    assert torch.allclose(spread, spread[:, :1].expand_as(spread), atol=1e-7)  # evenly
    assert torch.equal(target.argmax(1), live.argmax(1))


def test_top_k_truncation_error_shrinks_with_k(tmp_path):
    """The error documented in docs/training.md: KL(live || rebuilt) per sample at τ = 3."""
    torch.manual_seed(0)
    logits = torch.randn(256, 100) * 3
    live = F.log_softmax(logits / 3.0, dim=1)
    errors = []
    for k in (5, 10, 50, 100):
        cache = _soft_cache(tmp_path, k=k, num_classes=100)
        rebuilt = F.log_softmax(cache.decode(cache.encode(logits)) / 3.0, dim=1)
        errors.append(F.kl_div(rebuilt, live, reduction="batchmean", log_target=True).item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-6 and errors[0] > errors[1] > 0


# --- identity, damage, another machine ---------------------------------------------------------

def test_a_cache_made_with_other_settings_is_refused_naming_them(tmp_path, teacher_file):
    cache = str(tmp_path / "cache")
    short = dict(epochs=1, train_subset=64, model_ema=False)
    train(_config(tmp_path, teacher_file, "a", teacher_cache=cache, **short))
    with pytest.raises(TeacherCacheMismatchError, match=r"batch_size: 32 in the cache, 16 in this run"):
        train(_config(tmp_path, teacher_file, "b", teacher_cache=cache, batch_size=16, **short))
    with pytest.raises(TeacherCacheMismatchError, match=r"seed"):
        train(_config(tmp_path, teacher_file, "c", teacher_cache=cache, seed=1, **short))
    with pytest.raises(TeacherCacheMismatchError, match=r"dataset_fingerprint"):
        train(_config(tmp_path, teacher_file, "d", teacher_cache=cache, **{**short, "train_subset": 63}))
    torch.manual_seed(5)
    other = tmp_path / "other-teacher.pth"
    save_model(create_model("resnet8_32", num_classes=10, in_channels=1), other)
    with pytest.raises(TeacherCacheMismatchError, match=r"teacher_weights_sha256"):
        train(_config(tmp_path, teacher_file, "e", teacher_cache=cache, teacher_checkpoint=str(other), **short))
    with pytest.raises(TeacherCacheMismatchError, match=r"auto_augment|transform"):
        train(_config(tmp_path, teacher_file, "f", teacher_cache=cache, auto_augment=None, **short))
    for name in "bcdef":  # a refused run leaves no run directory behind
        assert not (tmp_path / name).exists()


def test_killed_writes_and_damaged_shards_are_recomputed_never_read(tmp_path, teacher_file, monkeypatch):
    monkeypatch.setattr("deit.distill.cache.DEFAULT_SHARD_BATCHES", 1)  # 5 batches per epoch: 5 shards
    cache = tmp_path / "cache"
    short = dict(epochs=1, train_subset=160, model_ema=False)
    train(_config(tmp_path, teacher_file, "fill", teacher_cache=str(cache), **short))
    shards = sorted((cache / "epoch00000").glob("*.pt"))
    assert len(shards) == 5
    # what kill -9 leaves: a shard that never got written and a write stopped half-way; plus a
    # file damaged afterwards (truncated copy) and one whose bytes changed
    shards[0].unlink()
    stale = cache / "epoch00000" / f".{shards[1].name}.0123.tmp"
    stale.write_bytes(shards[1].read_bytes()[:100])
    os.utime(stale, (0, 0))  # long ago: not a write in progress
    shards[1].write_bytes(shards[1].read_bytes()[:-50])
    payload = torch.load(shards[2], weights_only=True)
    first = next(iter(payload["rows"]))
    payload["rows"][first][0] += 1
    torch.save(payload, shards[2])
    again = train(_config(tmp_path, teacher_file, "again", teacher_cache=str(cache), **short))
    stats = _cache_stats(again.output)
    assert stats["misses"] == 3 * 32 and stats["hits"] == 2 * 32  # shards of one batch of 32
    assert stats["rewritten_shards"] == 2
    assert not stale.exists() and len(sorted((cache / "epoch00000").glob("*.pt"))) == 5
    third = train(_config(tmp_path, teacher_file, "third", teacher_cache=str(cache), **short))
    assert _cache_stats(third.output) == {"hits": 160, "misses": 0}
    assert all(torch.equal(v, _weights(again.output)[k]) for k, v in _weights(third.output).items())


def test_a_cache_from_another_machine_kind_is_used_and_its_agreement_reported(tmp_path, teacher_file):
    cache = tmp_path / "cache"
    short = dict(epochs=1, train_subset=64, model_ema=False)
    train(_config(tmp_path, teacher_file, "fill", teacher_cache=str(cache), **short))
    for shard in (cache / "epoch00000").glob("*.pt"):  # as if an AVX2 machine had filled it
        payload = torch.load(shard, weights_only=True)
        assert payload["machine"] == f"cpu:{torch.backends.cpu.get_cpu_capability()}"
        payload["machine"] = "cpu:AVX2-elsewhere"
        torch.save(payload, shard)
    run = train(_config(tmp_path, teacher_file, "read", teacher_cache=str(cache), **short))
    stats = _cache_stats(run.output)
    assert stats["misses"] == 0 and stats["made_on"] == ["cpu:AVX2-elsewhere"]
    assert stats["checked_samples"] == stats["hits"] == 64 and stats["argmax_agreement"] == 100.0


def test_a_cache_cut_into_other_shards_is_refused(tmp_path, teacher_file, monkeypatch):
    cache = str(tmp_path / "cache")
    short = dict(epochs=1, train_subset=64, model_ema=False)
    train(_config(tmp_path, teacher_file, "a", teacher_cache=cache, **short))
    monkeypatch.setattr("deit.distill.cache.DEFAULT_SHARD_BATCHES", 1)
    with pytest.raises(TeacherCacheMismatchError, match=r"shard_size: 2048 in the cache, 32 in this run"):
        train(_config(tmp_path, teacher_file, "b", teacher_cache=cache, **short))


def test_soft_targets_from_the_cache_and_data_loader_workers(tmp_path, teacher_file):
    """Soft distillation through the cache, read back by a run whose views come from 2
    DataLoader worker processes: the same views, the same targets, the same weights."""
    short = dict(epochs=1, train_subset=64, model_ema=False, distillation_type="soft")
    filled = train(_config(tmp_path, teacher_file, "fill", teacher_cache=str(tmp_path / "cache"), **short))
    read = train(_config(tmp_path, teacher_file, "read", teacher_cache=str(tmp_path / "cache"), num_workers=2,
                         **short))
    assert _cache_stats(filled.output) == {"hits": 0, "misses": 64}
    assert _cache_stats(read.output) == {"hits": 64, "misses": 0}
    a, b = _weights(filled.output), _weights(read.output)
    assert all(torch.equal(a[k], b[k]) for k in a)
    identity = json.loads((tmp_path / "cache" / "cache.json").read_text())["identity"]
    assert identity["targets"] == {"kind": "soft", "tau": 3.0, "topk": 10}


def test_teacher_cache_needs_distillation():
    with pytest.raises(ValueError, match="teacher_cache.*distillation_type"):
        TrainConfig(dataset="digits", teacher_cache="somewhere").validate()


@pytest.mark.slow
def test_torchrun_two_processes_fill_and_read_their_shares(tmp_path, teacher_file):
    cache = tmp_path / "cache"
    flags = ["--recipe", "paper", "--dataset", "digits", "--model", "deit_pico_distilled_patch4_32", "--image-size",
             "16", "--teacher-model", "resnet8_32", "--teacher-checkpoint", str(teacher_file), "--distillation-type",
             "hard", "--epochs", "1", "--batch-size", "16", "--train-subset", "128", "--no-model-ema",
             "--no-progress", "--teacher-cache", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*args: str, port: int) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 f"--master_port={port}", "-m", "deit", *args], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    torchrun("train", *flags, "--output", str(tmp_path / "fill"), port=29541)
    assert _cache_stats(tmp_path / "fill") == {"hits": 0, "misses": 128}  # both ranks' views
    assert len(list((cache / "epoch00000").glob("rank00[01]-of-002-*.pt"))) == 2
    torchrun("train", *flags, "--output", str(tmp_path / "read"), port=29542)
    assert _cache_stats(tmp_path / "read") == {"hits": 128, "misses": 0}
    a, b = _weights(tmp_path / "fill"), _weights(tmp_path / "read")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # one process filling the shares of two, ahead: the same files a 2-process run reads
    from deit.cli import main

    ahead = tmp_path / "ahead"
    assert main(["cache-teacher", *[f if f != str(cache) else str(ahead) for f in flags], "--world-size", "2"]) == 0
    torchrun("train", *[f if f != str(cache) else str(ahead) for f in flags], "--output", str(tmp_path / "ahead-read"),
             port=29543)
    assert _cache_stats(tmp_path / "ahead-read") == {"hits": 128, "misses": 0}
