"""The main job (``deit demo``) on a tiny schedule: every stage runs and the table is right."""
from __future__ import annotations

import pytest

from deit import demo
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
    tiny = demo.Schedule("tiny (test)", 256, 1, 1, dict(demo.LIGHT, warmup_epochs=0, eval_interval=1000,
                                                        val_subset=512))
    monkeypatch.setattr(demo, "QUICK", tiny)
    results = demo.run_demo(output=tmp_path, progress=False)
    out = capsys.readouterr().out
    assert set(results) == {"teacher", "distilled", "control"}
    for line in ("teacher convnext_atto_32", "DeiT (no distillation) deit_pico_patch4_32",
                 "DeiT⚗ (hard distillation) deit_pico_distilled_patch4_32", "tiny (test) schedule"):
        assert line in out
    distilled = results["distilled"].final
    assert distilled["train_distillation_loss"] > 0 and results["control"].final["train_distillation_loss"] == 0
    assert f"{distilled['val_acc1']:.2f}" in out and f"{distilled['val_dist_acc1']:.2f}" in out
    assert (tmp_path / "results.md").read_text().startswith("| model |")
    for run in ("teacher", "deit_distilled", "deit_control"):
        assert (tmp_path / run / "best.pth").is_file() and (tmp_path / run / "curves.png").is_file()


def test_table_lists_every_head():
    from deit.train import TrainResult

    def result(**final):
        return TrainResult(output=None, final=final, train_images_per_s=100.0, wall_time_s=10.0)

    table = demo.format_table({
        "teacher": result(val_acc1=90.0),
        "control": result(val_acc1=80.0, val_teacher_agreement=85.0),
        "distilled": result(val_acc1=84.0, val_cls_acc1=83.5, val_dist_acc1=83.0, val_dist_teacher_agreement=91.0),
    })
    assert "| 84.00 | 83.50 | 83.00 | 91.0 |" in table and "| 90.00 |" in table
    assert "control agreement with the teacher: 85.0%" in table
