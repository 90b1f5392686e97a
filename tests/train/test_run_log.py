"""The epoch log: ``metrics.csv`` read back by the csv module, rows of an interrupted
attempt dropped on resume, and every file replaced atomically (the previous table survives
a failed write)."""
from __future__ import annotations

import csv
import errno
from pathlib import Path

import pytest

from deit.train.run_log import RunLog


def rows(directory: Path) -> list[dict[str, str]]:
    with open(directory / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_rows_are_read_back_and_resume_drops_the_interrupted_epochs(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    for epoch in range(3):
        log.log_epoch(epoch, {"train_loss": 2.0 - epoch, "val_acc1": 10.0 * epoch, "note": "text is left out"})
    assert [(r["epoch"], float(r["train_loss"]), float(r["val_acc1"])) for r in rows(tmp_path)] == \
        [("0", 2.0, 0.0), ("1", 1.0, 10.0), ("2", 0.0, 20.0)]
    assert "note" not in rows(tmp_path)[0]

    resumed = RunLog(tmp_path, tensorboard=False, resume_after_epoch=0)  # last.pth held epoch 0
    assert [r["epoch"] for r in rows(tmp_path)] == ["0"]
    resumed.log_epoch(1, {"train_loss": 0.5, "val_acc1": 50.0})
    assert [(r["epoch"], r["train_loss"]) for r in rows(tmp_path)] == [("0", "2.0"), ("1", "0.5")]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind
    RunLog(tmp_path, tensorboard=False)  # a fresh run in that directory starts a new table
    assert not (tmp_path / "metrics.csv").exists()


def test_a_failed_write_keeps_the_previous_table(tmp_path, monkeypatch):
    log = RunLog(tmp_path, tensorboard=False)
    log.log_epoch(0, {"train_loss": 1.5})
    before = (tmp_path / "metrics.csv").read_bytes()

    def disk_full(self, data):
        with open(self, "wb") as f:
            f.write(data[:5])  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="could not write .*metrics.csv .*No space left.*previous metrics.csv is intact"):
        log.log_epoch(1, {"train_loss": 1.0})
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_curves_are_a_png_written_in_one_piece(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    for epoch in range(2):
        log.log_epoch(epoch, {"train_loss": 1.0 / (epoch + 1), "val_loss": 1.2, "val_acc1": 40.0 + epoch})
    path = log.plot(title="pico on digits")
    assert path == tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv"]


def test_plots_leave_pyplot_and_its_backend_alone(tmp_path):
    """A notebook user's backend and open figures are not ours to change."""
    import matplotlib
    import matplotlib.pyplot as plt
    import torch

    from deit.cli.demo import plot_learning_curves
    from deit.deploy.predict import plot_confusion_matrix

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        log = RunLog(tmp_path / "run", tensorboard=False)
        for epoch in range(2):
            log.log_epoch(epoch, {"train_loss": 1.0, "val_acc1": 40.0 + epoch, "images_seen": 64 * (epoch + 1),
                                  "elapsed_s": 2.0 * (epoch + 1)})
        assert log.plot() is not None
        plot_learning_curves({"run": tmp_path / "run"}, tmp_path / "curves.png")
        plot_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"], tmp_path / "confusion.png", "t")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
        assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("curves.png", "confusion.png"))
    finally:
        matplotlib.use(before)
