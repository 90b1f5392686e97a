"""Per-run records: ``metrics.csv`` (one row per epoch), TensorBoard events and a PNG of
the training curves. Only the main process writes (see :mod:`deit.train.distributed`); files are
replaced atomically (:func:`deit.core.fileio.atomic_write`), so a crash leaves the previous table."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Mapping

from deit.core.figures import new_figure
from deit.core.fileio import atomic_write


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as written by :class:`RunLog`, values as text ("" where an
    epoch has no value, e.g. no evaluation)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """Append-only epoch log that survives resume: rows after the resumed epoch are dropped
    (they belong to the interrupted attempt), earlier rows are kept untouched."""

    def __init__(self, directory: str | Path, *, enabled: bool = True, resume_after_epoch: int | None = None,
                 tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self.csv_path = self.directory / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self._writer = None
        if not enabled:
            return
        if self.csv_path.exists() and resume_after_epoch is not None:
            self.rows = [r for r in read_metrics(self.csv_path) if int(r["epoch"]) <= resume_after_epoch]
            self._rewrite()
        elif self.csv_path.exists():
            self.csv_path.unlink()  # a fresh run in a directory without checkpoints
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_after_epoch is None else resume_after_epoch + 1
                self._writer = SummaryWriter(str(self.directory / "tensorboard"), purge_step=purge)
            except ImportError:  # tensorboard is optional
                self._writer = None

    def _rewrite(self) -> None:
        fieldnames: list[str] = []
        for row in self.rows:
            fieldnames += [k for k in row if k not in fieldnames]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(self.rows)
        data = table.getvalue().encode()  # bytes: the csv module's own "\r\n" line ends, untranslated
        atomic_write(self.csv_path, lambda tmp: tmp.write_bytes(data))

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"epoch": epoch, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        self._rewrite()
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, epoch)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def plot(self, path: str | Path | None = None, title: str = "") -> Path | None:
        """Loss and accuracy curves per epoch as a PNG."""
        if not self.enabled or not self.rows:
            return None
        path = Path(path) if path else self.directory / "curves.png"

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [(int(r["epoch"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig = new_figure(figsize=(11, 4))
        ax_loss, ax_acc = fig.subplots(1, 2)
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
            xs, ys = series(key)
            if xs:
                ax_loss.plot(xs, ys, marker="o", label=label)
        for key, label in (("val_acc1", "top-1 (fusion / single head)"), ("val_cls_acc1", "top-1 cls head"),
                           ("val_dist_acc1", "top-1 dist head"), ("ema_acc1", "top-1 EMA")):
            xs, ys = series(key)
            if xs:
                ax_acc.plot(xs, ys, marker="o", label=label)
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("validation accuracy (%)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle(title)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        return path
