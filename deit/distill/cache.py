"""A teacher-output cache: the frozen teacher's outputs for exactly the views the student sees.

In the paper's setup the teacher (RegNetY-16GF) costs about twelve DeiT-Ti forwards, so a
distilled epoch mostly re-runs a frozen network. TinyViT's fast distillation (Wu et al.
2022, §3.2) stores the teacher's outputs once and replays each sample's augmentation when
the student trains. Here the replay is :mod:`deit.data.replay`: every view is a function
of ``(seed, epoch, position)``, so a cached output is looked up by the batch's keys.

What is stored, per view (one row per sample, in the order of the process's share of the
epoch):

* ``hard`` distillation: the teacher's argmax (1 byte per sample up to 256 classes);
* ``soft``: the top-``k`` logits, their class indices and ``logsumexp(z / τ)`` at the
  run's τ. The target is rebuilt as TinyViT does: the ``k`` probabilities exactly,
  the remaining mass spread evenly over the other classes; with ``k`` = the number of
  classes it is the teacher's distribution itself.

Either way :meth:`TeacherCache.targets` returns pseudo-logits that the loss of
:mod:`deit.distill.losses` uses unchanged: a one-hot row whose argmax is the teacher's (hard), or
``τ · log p̂`` whose softmax at τ is the rebuilt distribution ``p̂`` (soft). A miss runs
the live teacher and returns the same encoding, so a run is the same whether its targets
came from the disk or not.

Layout of the directory::

    cache.json                                   what the cache was made from (its identity)
    epoch00003/rank000-of-002-shard00001.pt      rows [S·1, S·2) of rank 0's share of epoch 3

A shard holds ``shard_batches`` batches; it is written once, atomically (temporary file,
fsync, rename) when its last row is known, with a SHA-256 of its rows, so a killed run
leaves either whole shards or none: an absent shard is a miss (computed and written), a
damaged one is reported, recomputed and replaced, never read as valid.

``cache.json`` records the identity (teacher weights, data set fingerprint, transform and
Mixup settings, seed, batch size, world size, the targets' kind, τ and k, the shard size,
the versions of the libraries that make the views and run the teacher). A different identity is
refused with the keys that differ. Each shard records the machine kind that computed it.
Exactness is promised on the machine kind that made a shard: an argmax near a tie can flip
between CPU kernels (AVX2 / AVX512) or GPUs, so the first batches read from shards of
another kind are also run live and the argmax agreement is reported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deit.core.errors import ConfigError, DeitError
from deit.core.fileio import atomic_write, write_text_atomic
from deit.models.teacher_output import teacher_logits

logger = logging.getLogger("deit")

CACHE_FORMAT = 1
IDENTITY_FILE = "cache.json"
TARGET_KINDS = ("hard", "soft")
DEFAULT_TOPK = 10
DEFAULT_SHARD_BATCHES = 64
MISMATCH_HINTS = {
    "dataset_fingerprint": "the training images differ: a folder counts file names, sizes and modification times, "
                           "so a copy that did not keep the times differs too",
    "teacher_weights_sha256": "another teacher checkpoint",
    "samples_per_epoch": "--train-subset, --accum-steps, --batch-size or the number of images change the batches "
                         "an epoch trains on",
    "shard_size": "another version of deit cuts the cache into other shards",
    "versions": "the augmentation or numerics libraries changed, and with them the views or the teacher's outputs",
}
"""Hints appended to a refused identity key: what usually changes it."""
STALE_WRITE_S = 600.0
"""A temporary shard file older than this is a write killed mid-way (a live write takes well under a second)."""
CHECK_BATCHES = 8
"""Batches run live beside the cache on another machine kind, to measure argmax agreement."""


class TeacherCacheMismatchError(DeitError, ValueError):
    """The cache directory was made for other settings than this run's."""


def device_kind(device: torch.device) -> str:
    """The kind of processor whose kernels computed the outputs: ``cpu:AVX512`` or the GPU's name."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"{device.type}:{torch.backends.cpu.get_cpu_capability()}"


def _tensors_digest(tensors: dict[str, torch.Tensor], prefix: bytes = b"") -> str:
    """SHA-256 of named tensors: names, dtypes, shapes and values, in name order."""
    digest = hashlib.sha256(prefix)
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu()
        data = tensor.contiguous().reshape(-1)  # (numel,): a 0-d tensor cannot be viewed as bytes
        digest.update(f"{name}\0{data.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, values), the
    non-persistent buffers of an input re-normalisation included."""
    return _tensors_digest(dict([*module.named_parameters(), *module.named_buffers()]),
                           prefix=type(module).__name__.encode())


def _identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _index_dtype(num_classes: int) -> torch.dtype:
    return torch.uint8 if num_classes <= 256 else torch.int16 if num_classes <= 32767 else torch.int32


@dataclass
class CacheStats:
    """What ``summary.json`` reports as ``teacher_cache``: samples whose targets came from
    the disk (hits) or from the live teacher (misses), and on another machine kind the
    argmax agreement of the cache with the live teacher over the checked samples."""

    hits: int = 0
    misses: int = 0
    rewritten_shards: int = 0
    checked: int = 0
    agreed: int = 0
    foreign: set[str] = field(default_factory=set)  # machine kinds of shards read, other than this one
    running_on: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hits": self.hits, "misses": self.misses}
        if self.rewritten_shards:
            out["rewritten_shards"] = self.rewritten_shards
        if self.foreign:
            out.update(made_on=sorted(self.foreign), running_on=self.running_on, checked_samples=self.checked,
                       argmax_agreement=100.0 * self.agreed / self.checked if self.checked else None)
        return out


@dataclass
class _Shard:
    rows: dict[str, torch.Tensor]
    filled: torch.Tensor  # (n,) bool
    from_disk: bool = False
    machine: str = ""  # the kind of processor that computed the rows


@dataclass
class TeacherCache:
    """The cache of one process of one run (see the module docstring).

    Args:
        directory: the cache directory (created with its ``cache.json`` when new).
        identity: what the cached outputs depend on (:func:`deit.train.run.teacher_cache_identity`);
            must equal the directory's, else :class:`TeacherCacheMismatchError`.
        teacher: the frozen teacher, run on misses (and to check another machine kind).
        num_classes: K.
        kind: ``"hard"`` or ``"soft"``; ``tau`` and ``topk`` for soft.
        batch_size: samples per batch of this process; ``samples_per_epoch``: rows of this
            process's share of an epoch; ``world_size`` / ``rank``: which share.
        machine: :func:`device_kind` of the device computing misses.
        shard_batches: batches per shard file (None: :data:`DEFAULT_SHARD_BATCHES`).
    """

    directory: Path
    identity: dict[str, Any]
    teacher: nn.Module | None
    num_classes: int
    kind: str
    batch_size: int
    samples_per_epoch: int
    world_size: int = 1
    rank: int = 0
    tau: float = 1.0
    topk: int = DEFAULT_TOPK
    machine: str = ""
    shard_batches: int | None = None  # None: DEFAULT_SHARD_BATCHES
    stats: CacheStats = field(default_factory=CacheStats, init=False)
    _open: dict[tuple[int, int], _Shard] = field(default_factory=dict, init=False, repr=False)
    _checks_left: int = field(default=CHECK_BATCHES, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"teacher cache kind={self.kind!r} is invalid; expected one of {TARGET_KINDS} "
                              "(a cache stores the targets of hard or soft distillation)")
        self.directory = Path(self.directory)
        self.topk = min(int(self.topk), self.num_classes)
        if self.topk < 1:
            raise ConfigError(f"teacher_cache_topk={self.topk} is invalid; expected k >= 1")
        self.shard_batches = self.shard_batches or DEFAULT_SHARD_BATCHES
        self.shard_size = self.shard_batches * self.batch_size
        self.identity = {**self.identity, "shard_size": self.shard_size}  # which rows a shard file holds
        self.digest = _identity_digest(self.identity)
        self._open_identity()
        self.remove_stale_writes()
        self.stats.running_on = self.machine

    # --- identity ---------------------------------------------------------------------
    def _open_identity(self) -> None:
        path = self.directory / IDENTITY_FILE
        if not path.exists():
            record = {"format": CACHE_FORMAT, "identity": self.identity, "created_on": self.machine}
            write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True))
            return
        try:
            record = json.loads(path.read_text())
            saved = record["identity"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"teacher cache {path} is unreadable ({err}); expected the {IDENTITY_FILE} written "
                              "by deit. Use a new --teacher-cache directory") from None
        if record.get("format") != CACHE_FORMAT:
            raise TeacherCacheMismatchError(f"teacher cache {self.directory} has format {record.get('format')!r}; "
                                            f"this deit reads format {CACHE_FORMAT}. Use a new --teacher-cache "
                                            "directory")
        differ = [f"{key}: {saved.get(key)!r} in the cache, {self.identity.get(key)!r} in this run"
                  + (f" ({MISMATCH_HINTS[key]})" if key in MISMATCH_HINTS else "")
                  for key in sorted(set(saved) | set(self.identity)) if saved.get(key) != self.identity.get(key)]
        if differ:
            raise TeacherCacheMismatchError(
                f"teacher cache {self.directory} was made from other settings than this run's, so its outputs are "
                f"not the teacher's for this run's views: {'; '.join(differ)}. Use another --teacher-cache "
                f"directory, or the settings recorded in {path}")

    # --- files ------------------------------------------------------------------------
    def shard_path(self, epoch: int, shard: int) -> Path:
        return (self.directory / f"epoch{epoch:05d}" /
                f"rank{self.rank:03d}-of-{self.world_size:03d}-shard{shard:05d}.pt")

    def _shard_rows(self, shard: int) -> int:
        return min(self.shard_size, self.samples_per_epoch - shard * self.shard_size)

    def _empty_rows(self, n: int) -> dict[str, torch.Tensor]:
        index = _index_dtype(self.num_classes)
        if self.kind == "hard":
            return {"argmax": torch.zeros(n, dtype=index)}
        return {"topk_logits": torch.zeros(n, self.topk), "topk_index": torch.zeros(n, self.topk, dtype=index),
                "lse": torch.zeros(n)}

    def _shard_header(self, epoch: int, shard: int) -> dict[str, Any]:
        """What a shard file says about itself: whose rows, which ones."""
        return {"format": CACHE_FORMAT, "identity_digest": self.digest, "epoch": epoch, "rank": self.rank,
                "world_size": self.world_size, "shard": shard, "first_row": shard * self.shard_size,
                "num_rows": self._shard_rows(shard)}

    def _load_shard(self, epoch: int, shard: int) -> tuple[_Shard | None, str | None]:
        """The shard's rows, or ``None`` with the reason it cannot be used (``None`` reason: absent)."""
        path = self.shard_path(epoch, shard)
        if not path.exists():
            return None, None
        expected = self._shard_header(epoch, shard)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            rows = payload["rows"]
            wrong = [key for key, value in expected.items() if payload.get(key) != value]
            if wrong:
                return None, f"it holds other rows or settings ({', '.join(f'{k} {payload.get(k)!r}' for k in wrong)})"
            if _tensors_digest(rows) != payload.get("sha256"):
                return None, "its checksum does not match its rows"
            n = expected["num_rows"]
            if any(t.shape[0] != n for t in rows.values()) or set(rows) != set(self._empty_rows(0)):
                return None, f"it does not hold the expected {n} rows"
            machine = str(payload["machine"])
        except Exception as err:  # truncated or foreign file: torch raises many kinds
            return None, f"it cannot be read ({type(err).__name__}: {err})"
        return _Shard(rows=rows, filled=torch.ones(len(next(iter(rows.values()))), dtype=torch.bool),
                      from_disk=True, machine=machine), None

    def _read_shard(self, epoch: int, shard: int) -> _Shard | None:
        entry, problem = self._load_shard(epoch, shard)
        if problem is not None:
            logger.warning("teacher cache shard %s is damaged (%s): recomputing it with the live teacher",
                           self.shard_path(epoch, shard), problem)
            self.stats.rewritten_shards += 1
        if entry is not None and entry.machine != self.machine and entry.machine not in self.stats.foreign:
            logger.warning("teacher cache %s holds outputs computed on %s and this run is on %s: they may differ "
                           "where the teacher's top classes nearly tie; the first %d batches from there are also "
                           "run live and the argmax agreement is reported in summary.json", self.directory,
                           entry.machine, self.machine, CHECK_BATCHES)
            self.stats.foreign.add(entry.machine)
        return entry

    def _write_shard(self, epoch: int, shard: int, rows: dict[str, torch.Tensor]) -> None:
        path = self.shard_path(epoch, shard)
        payload = {**self._shard_header(epoch, shard), "machine": self.machine, "rows": rows,
                   "sha256": _tensors_digest(rows)}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def has_epoch(self, epoch: int) -> bool:
        """Whether every shard of this process's share of ``epoch`` is on disk and readable."""
        shards = math.ceil(self.samples_per_epoch / self.shard_size)
        return all(self._load_shard(epoch, s)[0] is not None for s in range(shards))

    # --- targets ----------------------------------------------------------------------
    def encode(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored form of teacher logits (B, K)."""
        logits = logits.detach().float().cpu()  # (B, K)
        index = _index_dtype(self.num_classes)
        if self.kind == "hard":
            return {"argmax": logits.argmax(dim=1).to(index)}  # (B,)
        values, classes = logits.topk(self.topk, dim=1)  # (B, k), (B, k)
        return {"topk_logits": values, "topk_index": classes.to(index),
                "lse": torch.logsumexp(logits / self.tau, dim=1)}  # (B,)

    def decode(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pseudo-logits (B, K) for the loss: one-hot of the argmax (hard), or ``τ · log p̂``
        with p̂ the top-k probabilities and the rest of the mass spread evenly (soft)."""
        if self.kind == "hard":
            return nn.functional.one_hot(rows["argmax"].long(), self.num_classes).float()  # (B, K)
        log_top = rows["topk_logits"] / self.tau - rows["lse"][:, None]  # (B, k) exact log-probabilities at τ
        others = self.num_classes - self.topk
        batch = log_top.shape[0]
        if others:
            rest = (1.0 - log_top.exp().sum(dim=1)).clamp_min(1e-30) / others  # (B,) mass of each other class
            log_p = rest.log()[:, None].expand(batch, self.num_classes).clone()  # (B, K)
        else:
            log_p = torch.empty(batch, self.num_classes)
        log_p.scatter_(1, rows["topk_index"].long(), log_top)  # (B, K)
        return self.tau * log_p  # (B, K): softmax(· / τ) = p̂

    def targets(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The teacher's targets for a batch of views ``images`` (B, C, H, W) named by their
        (B, 2) ``(epoch, position)`` keys, as pseudo-logits (B, K) on ``images``' device:
        from the disk when the shard is there, else from the live teacher (and stored)."""
        epoch = int(keys[0, 0])
        local = (keys[:, 1] // self.world_size).tolist()  # rows in this process's share of the epoch
        shard, first = divmod(local[0], self.shard_size)
        if (local[-1] // self.shard_size) != shard:
            raise ConfigError(f"a batch spans two teacher-cache shards (rows {local[0]}..{local[-1]}); the shard "
                              f"size {self.shard_size} must be a multiple of the batch size {self.batch_size}")
        rows_of = slice(first, first + len(local))
        entry = self._open.get((epoch, shard))
        if entry is None:
            entry = self._read_shard(epoch, shard) or \
                _Shard(rows=self._empty_rows(self._shard_rows(shard)),
                       filled=torch.zeros(self._shard_rows(shard), dtype=torch.bool))
            self._drop_finished(epoch, shard)
            self._open[(epoch, shard)] = entry
        if bool(entry.filled[rows_of].all()):
            batch_rows = {name: t[rows_of] for name, t in entry.rows.items()}
            self.stats.hits += len(local)
            if entry.from_disk and entry.machine != self.machine and self._checks_left > 0 \
                    and self.teacher is not None:
                self._check_live(images, batch_rows)
        else:
            if self.teacher is None:
                raise ConfigError(f"teacher cache {self.directory} has no outputs for epoch {epoch} (shard "
                                  f"{self.shard_path(epoch, shard).name}) and no live teacher computes them")
            batch_rows = self.encode(teacher_logits(self.teacher, images, self.num_classes))
            for name, t in batch_rows.items():
                entry.rows[name][rows_of] = t
            entry.filled[rows_of] = True
            self.stats.misses += len(local)
            if bool(entry.filled.all()) and not entry.from_disk:
                self._write_shard(epoch, shard, entry.rows)
                entry.from_disk, entry.machine = True, self.machine
        return self.decode(batch_rows).to(images.device)

    def _check_live(self, images: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        live = self.encode(teacher_logits(self.teacher, images, self.num_classes))
        key = "argmax" if self.kind == "hard" else "topk_index"
        cached, fresh = rows[key], live[key]
        if key == "topk_index":
            cached, fresh = cached[:, 0], fresh[:, 0]
        self.stats.checked += int(cached.numel())
        self.stats.agreed += int((cached == fresh).sum())
        self._checks_left -= 1

    def release(self) -> None:
        """Forget the shards held in memory; they are read from disk again when needed
        (a shard being filled is kept: its rows are not on disk yet)."""
        for key in [k for k, entry in self._open.items() if entry.from_disk]:
            del self._open[key]

    def _drop_finished(self, epoch: int, shard: int) -> None:
        """Forget shards before ``(epoch, shard)``: batches come in order, so they are done."""
        for key in [k for k in self._open if k < (epoch, shard)]:
            del self._open[key]

    def remove_stale_writes(self, older_than_s: float = STALE_WRITE_S) -> int:
        """Delete this process's temporary files left by a killed write (older than
        ``older_than_s``, so that a machine filling other epochs of the same share keeps its
        write in progress); returns how many."""
        import time

        count, now = 0, time.time()
        for stale in self.directory.glob(f"epoch*/.rank{self.rank:03d}-of-{self.world_size:03d}-*.tmp"):
            try:
                if now - stale.stat().st_mtime > older_than_s:
                    stale.unlink()
                    count += 1
            except FileNotFoundError:
                continue
        if count:
            logger.info("teacher cache %s: removed %d partial write(s) of an interrupted run", self.directory, count)
        return count

__all__ = ["CACHE_FORMAT", "CacheStats", "DEFAULT_TOPK", "TARGET_KINDS", "TeacherCache",
           "TeacherCacheMismatchError", "device_kind", "module_fingerprint"]
