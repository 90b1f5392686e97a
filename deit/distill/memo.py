"""The teacher's outputs remembered per distinct view, for training views that repeat.

Hard distillation is argued on augmented views (Touvron et al. 2021, §4: the teacher's label
follows the crop). Where a recipe trains on whole images with at most a horizontal flip (the
``small-data`` recipe: ``scale: [1, 1]``, no RandAugment, colour jitter, erasing, Mixup or
CutMix), every view the student sees is one of two per image, so from the second epoch on
the frozen teacher mostly recomputes outputs it has already given. :class:`TeacherMemo`
keys each view by a digest of its pixels (BLAKE2b of the tensor's bytes, after the
transform and on the host) and runs the teacher only on views it has not seen; a batch
whose views are all known costs no teacher forward at all.

It serves the engine through the same call as the disk cache of :mod:`deit.distill.cache`,
``targets(images, keys)``, and returns the teacher's logits themselves, so the loss is the
one the live teacher gives (each view's logits are the ones computed in the batch that first
held it). Memory is ``distinct views x (classes x 4 + ENTRY_OVERHEAD_BYTES)`` bytes of host
memory per process (Fashion-MNIST: 120,000 views x 160 bytes = 19 MB); past ``max_bytes``
new views are computed live and not stored.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from deit.models.teacher_output import teacher_logits

DEFAULT_MAX_BYTES = 1 << 30


def views_repeat(settings: Mapping[str, Any]) -> bool:
    """Whether training settings make every view one of a few fixed ones per image: no
    random crop (``scale`` (1, 1)), no RandAugment, colour jitter, random erasing, Mixup or
    CutMix. A flip is allowed: it doubles the views, it does not make them new each epoch."""
    scale = tuple(settings.get("scale") or (0.0, 0.0))
    return (scale == (1.0, 1.0) and not settings.get("auto_augment") and not settings.get("color_jitter")
            and not settings.get("reprob") and not settings.get("mixup") and not settings.get("cutmix"))


def view_digests(images: torch.Tensor) -> list[bytes]:
    """One 16-byte BLAKE2b digest per view of ``images`` (B, C, H, W), of its exact bytes."""
    host = images.detach().to("cpu", copy=False).contiguous()
    flat = host.reshape(host.shape[0], -1).view(torch.uint8).numpy()  # (B, bytes per view)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


ENTRY_OVERHEAD_BYTES = 120
"""Host memory of one view's index entry besides its logits: the 16-byte digest as a Python
``bytes`` (49 bytes), its dict slot and the row number (measured with ``sys.getsizeof``)."""


@dataclass
class TeacherMemo:
    """The frozen ``teacher``'s logits (B, K) per distinct view (see the module docstring).

    The logits live in one growing (N, K) float32 table, indexed by digest; a view costs
    ``K * 4 + ENTRY_OVERHEAD_BYTES`` bytes of host memory, counted against ``max_bytes``."""

    teacher: nn.Module
    num_classes: int
    max_bytes: int = DEFAULT_MAX_BYTES
    hits: int = 0
    misses: int = 0
    _index: dict[bytes, int] = field(default_factory=dict, repr=False)
    _table: torch.Tensor = field(default_factory=lambda: torch.empty(0), repr=False)

    @property
    def bytes_per_view(self) -> int:
        return self.num_classes * 4 + ENTRY_OVERHEAD_BYTES

    @property
    def stored_bytes(self) -> int:
        return len(self._index) * self.bytes_per_view

    def _store(self, digests: list[bytes], logits: torch.Tensor) -> None:
        """Append the rows of ``logits`` (U, K) under ``digests``, as many as ``max_bytes`` allows."""
        room = max(0, (self.max_bytes - self.stored_bytes) // self.bytes_per_view)
        digests, logits = digests[:room], logits[:room]
        if not digests:
            return
        count = len(self._index)
        if count + len(digests) > self._table.shape[0]:  # grow by doubling: amortised O(1) per view
            capacity = max(2 * self._table.shape[0], count + len(digests), 1024)
            table = torch.empty(capacity, self.num_classes, dtype=torch.float32)
            if count:
                table[:count] = self._table[:count]
            self._table = table
        self._table[count:count + len(digests)] = logits
        self._index.update((d, count + i) for i, d in enumerate(digests))

    def targets(self, images: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits (B, K) for the views ``images`` (B, C, H, W), on their device;
        the teacher runs once, on the views not seen before (``keys`` is not needed: the
        pixels are the key)."""
        digests = view_digests(images)
        unseen = [i for i, d in enumerate(digests) if d not in self._index]
        out = torch.empty(len(digests), self.num_classes, dtype=torch.float32)  # (B, K)
        if unseen:
            index = torch.tensor(unseen, device=images.device)
            logits = teacher_logits(self.teacher, images.index_select(0, index), self.num_classes)  # (U, K)
            logits = logits.float().cpu()
            out[unseen] = logits
            first: dict[bytes, int] = {}  # a view twice in one batch is stored once
            for row, i in enumerate(unseen):
                first.setdefault(digests[i], row)
            self._store(list(first), logits[list(first.values())])
        missed = set(unseen)
        known = [i for i, d in enumerate(digests) if i not in missed]  # seen in an earlier batch
        if known:
            out[known] = self._table[[self._index[digests[i]] for i in known]]
        self.misses += len(unseen)
        self.hits += len(known)
        return out.to(images.device)

    def stats(self) -> dict[str, Any]:
        """Views served from memory and views the teacher ran on, for ``summary.json``."""
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "distinct_views": len(self._index),
                "teacher_forwards_saved": round(self.hits / total, 4) if total else 0.0}
