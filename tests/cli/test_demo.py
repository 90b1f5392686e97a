"""The main job (``deit demo``) on a tiny schedule: every stage runs, the table is right and
the learning curves are drawn."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from PIL import Image

from deit.cli import demo
from deit.data import DatasetNotFoundError, load_dataset


def _fashion_available() -> bool:
    try:
        load_dataset("fashion-mnist", "val")
    except DatasetNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_available(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_demo_pipeline_on_a_tiny_schedule(tmp_path, monkeypatch, capsys):
    # 256 training and 512 test images a run: every stage, seconds instead of a minute
    tiny = demo.Schedule("tiny (test)", 256, 256, 256, dict(recipe=demo.RECIPE, val_subset=512))
    monkeypatch.setattr(demo, "QUICK", tiny)
    results = demo.run_demo(output=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert set(results) == {"teacher", "distilled", "control"}
    for line in (f"teacher {demo.TEACHER}", f"DeiT (no distillation) {demo.CONTROL}",
                 f"DeiT⚗ ({demo.distillation_label()}) {demo.STUDENT}", "tiny (test) schedule"):
        assert line in out
    distilled = results["distilled"].final
    assert distilled["train_distillation_loss"] > 0 and results["control"].final["train_distillation_loss"] == 0
    assert f"{distilled['val_acc1']:.2f}" in out and f"{distilled['val_dist_acc1']:.2f}" in out
    assert (tmp_path / "results.md").read_text().startswith("| model |")
    for run in ("teacher", "deit_distilled", "deit_control"):
        assert (tmp_path / run / "best.pth").is_file() and (tmp_path / run / "curves.png").is_file()
    assert "DeiT⚗ − control: " in out and "points (fusion), same epochs and images" in out
    curves = tmp_path / "learning_curves.png"
    assert str(curves.resolve()) in out
    with Image.open(curves) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0


def test_table_lists_every_head():
    from deit.train.run import TrainResult

    def result(epochs=3, **final):
        return TrainResult(output=None, final=final, train_images_per_s=100.0, wall_time_s=10.0, epochs_run=epochs)

    table = demo.format_table({
        "teacher": result(val_acc1=90.0),
        "control": result(val_acc1=80.0, val_teacher_agreement=85.0, images_seen=3840),
        "distilled": result(val_acc1=84.0, val_cls_acc1=83.5, val_dist_acc1=83.0, val_dist_teacher_agreement=91.0,
                            images_seen=3840),
    })
    assert "| 84.00 | 83.50 | 83.00 | 91.0 |" in table and "| 90.00 |" in table
    assert "control agreement with the teacher: 85.0%" in table
    assert "DeiT⚗ − control: +4.00 points (fusion), same epochs and images" in table
    shorter = demo.format_table({"teacher": result(val_acc1=90.0), "control": result(val_acc1=86.5, images_seen=3840),
                                 "distilled": result(2, val_acc1=84.0, val_cls_acc1=83.5, val_dist_acc1=83.0,
                                                     val_dist_teacher_agreement=91.0, images_seen=2560)})
    assert "DeiT⚗ − control: -2.50 points (fusion), 2 epochs, 2560 images vs 3 epochs, 3840 images" in shorter


def _write_metrics(directory: Path, rows: list[dict[str, float | str]]) -> Path:
    directory.mkdir(parents=True)
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return directory


@pytest.fixture
def three_runs(tmp_path) -> dict[str, Path]:
    """Hand-written metrics.csv files: a teacher, a control, and a DeiT⚗ with both heads and
    an epoch without evaluation (its row has no val_acc1 and is skipped)."""
    teacher = _write_metrics(tmp_path / "teacher", [
        {"epoch": 0, "train_loss": 0.9, "images_seen": 15000, "elapsed_s": 70.0, "val_acc1": 84.1},
        {"epoch": 1, "train_loss": 0.6, "images_seen": 30000, "elapsed_s": 135.0, "val_acc1": 87.9}])
    control = _write_metrics(tmp_path / "deit_control", [
        {"epoch": e, "train_loss": 1.2 - 0.2 * e, "images_seen": 15000 * (e + 1), "elapsed_s": 40.0 * (e + 1),
         "val_acc1": acc} for e, acc in enumerate((71.3, 76.0, 78.2))])
    distilled = _write_metrics(tmp_path / "deit_distilled", [
        {"epoch": 0, "images_seen": 15000, "elapsed_s": 55.0, "val_acc1": 73.0, "val_cls_acc1": 72.1,
         "val_dist_acc1": 73.4},
        {"epoch": 1, "images_seen": 30000, "elapsed_s": 108.0, "val_acc1": "", "val_cls_acc1": "",
         "val_dist_acc1": ""},
        {"epoch": 2, "images_seen": 45000, "elapsed_s": 166.0, "val_acc1": 80.4, "val_cls_acc1": 79.5,
         "val_dist_acc1": 80.9}])
    return {f"teacher {demo.TEACHER}": teacher, f"DeiT control {demo.CONTROL}": control,
            f"DeiT⚗ {demo.STUDENT}": distilled}


def test_learning_curves_are_one_png_from_the_runs_metrics(three_runs, tmp_path):
    path = demo.plot_learning_curves(three_runs, tmp_path / "out" / "learning_curves.png", title="tiny (test)")
    assert path == tmp_path / "out" / "learning_curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width > image.height > 0  # two panels side by side
    assert [p.name for p in path.parent.iterdir()] == ["learning_curves.png"]  # no temporary file left behind


def test_learning_curves_name_a_run_without_metrics(three_runs, tmp_path):
    missing = tmp_path / "never_ran"
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing / "metrics.csv"))):
        demo.plot_learning_curves({**three_runs, "DeiT (missing)": missing}, tmp_path / "learning_curves.png")
    assert not (tmp_path / "learning_curves.png").exists()
