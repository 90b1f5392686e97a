"""docs/RESULTS.md and its runs: ``scripts/results.py`` (mean ± std per row over seeds, the
paper's claims decided by the stated rule) and ``scripts/fashion_results.py`` (which runs,
in which order, with which command; skip, resume). Runs are hand-written summary.json /
metrics.csv files; one slow test trains tiny runs through the runner."""
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "results.py"
RUNNER = REPO / "scripts" / "fashion_results.py"
_spec = importlib.util.spec_from_file_location("results_script", SCRIPT)
results = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # scripts/ is no package
_spec.loader.exec_module(results)  # puts scripts/ on sys.path, for the runner it imports
import fashion_results as runner  # noqa: E402  the module results.py uses


def _run(root, row, seed, top1, cls=None, dist=None, *, model="deit_pico_distilled_patch7_28", epochs=4,
         elapsed_s=240.0, images_seen=240_000, summary_wall_s=None):
    """A finished run as ``deit train`` leaves it: summary.json, config.yaml, metrics.csv, curves.png."""
    d = root / row / f"seed{seed}"
    d.mkdir(parents=True)
    final = {"val_acc1": top1}
    if cls is not None:
        final.update(val_cls_acc1=cls, val_dist_acc1=dist, val_dist_teacher_agreement=90.0)
    wall = elapsed_s if summary_wall_s is None else summary_wall_s
    (d / "summary.json").write_text(json.dumps({"final": final, "wall_time_s": wall, "train_images_per_s": 300}))
    (d / "config.yaml").write_text(yaml.safe_dump({"model": model, "epochs": epochs, "seed": seed}))
    (d / "metrics.csv").write_text("epoch,val_acc1,images_seen,elapsed_s\n"
                                   f"0,50.0,{images_seen // 2},{elapsed_s / 2}\n1,{top1},{images_seen},{elapsed_s}\n")
    (d / "curves.png").write_bytes(b"\x89PNG fake")


def _seeds(root, row, values, **kwargs):
    for seed, value in enumerate(values):
        _run(root, row, seed, *(value if isinstance(value, tuple) else (value,)), **kwargs)


def _row_line(page, label):
    return next(line for line in page.splitlines() if line.startswith(f"| {label} |"))


def _claim(page, text):
    cells = next(line for line in page.splitlines() if line.startswith(f"| {text} (")).split(" | ")
    return cells[2].strip("*")


def _page(root):
    return results.build_page(results.load_runs(root), root, Path("configs/fashion"))


# --- statistics and the rule ----------------------------------------------------------------

def test_mean_and_sample_std_per_row(tmp_path):
    _seeds(tmp_path, "student_hard", [(84.0, 83.0, 83.5), (85.0, 84.0, 84.5), (86.0, 85.0, 85.5)],
           elapsed_s=180.0)
    line = _row_line(_page(tmp_path), results.LABELS["student_hard"])
    # mean 85, sample std (n - 1) 1.0; the population std would print 0.82
    assert "| 3 | **85.00 ± 1.00** | 84.00 ± 1.00 | 84.50 ± 1.00 | 90.00 ± 0.00 | 240,000 | 3.0 min |" in line
    assert results.Stat((84.0, 85.0, 86.0)).std == pytest.approx(1.0)
    assert str(results.Stat((84.0,))) == "84.00" and results.Stat((84.0,)).std is None


def test_wall_time_from_metrics_csv_across_resumes_and_the_budget(tmp_path):
    # summary.json's wall time counts only the last invocation of a resumed run; metrics.csv all of them
    _run(tmp_path, "teacher_resnet", 0, 88.0, model="resnet14_32", elapsed_s=420.0, summary_wall_s=60.0)
    _run(tmp_path, "teacher_resnet", 1, 88.0, model="resnet14_32", elapsed_s=300.0)
    line = _row_line(_page(tmp_path), results.LABELS["teacher_resnet"])
    assert "6.0 min (over the 5-min budget)" in line


def test_last_epoch_from_metrics_csv_when_summary_lacks_it(tmp_path):
    # `deit train --resume` of a run whose last epoch was saved writes a summary.json without "final" metrics
    _run(tmp_path, "student_none", 0, 81.0, model="deit_pico_patch7_28")
    (tmp_path / "student_none" / "seed0" / "summary.json").write_text(json.dumps({"final": {}}))
    assert "| 1 | **81.00** |" in _row_line(_page(tmp_path), results.LABELS["student_none"])


@pytest.mark.parametrize("a, b, expected", [
    ((90.0, 91.0, 92.0), (85.0, 86.0, 87.0), "holds"),      # Δ 5 > spread 1 + 1
    ((85.0, 86.0, 87.0), (90.0, 91.0, 92.0), "reversed"),   # -Δ 5 > 2
    ((86.0, 87.0, 88.0), (85.0, 86.0, 87.0), "tie"),        # Δ 1 <= 2
    ((87.0, 88.0, 89.0), (85.0, 86.0, 87.0), "tie"),        # Δ 2 = spread 2: not more than the spread
    ((87.0, 88.0, 89.0), (85.0, 85.0, 85.0), "holds"),      # Δ 3 > 1 + 0
    ((90.0,), (85.0, 86.0, 87.0), "1 seed: not decided"),
    ((90.0, 91.0), (85.0,), "1 seed: not decided"),
    ((), (85.0, 86.0), "not run yet"),
])
def test_verdict_rule(a, b, expected):
    assert results.verdict(results.Stat(a), results.Stat(b)) == expected


def test_claims_decided_on_constructed_runs(tmp_path):
    _seeds(tmp_path, "student_none", [80.0, 81.0, 82.0], model="deit_pico_patch7_28")
    _seeds(tmp_path, "student_soft", [(81.5, 81.0, 81.0), (82.0, 81.0, 81.0), (82.5, 81.0, 81.0)])
    # fusion 85 ± 1; class head 84 ± 0 (Δ 1 = spread 1: tie); distillation head 87 ± 0 (reversed)
    _seeds(tmp_path, "student_hard", [(84.0, 84.0, 87.0), (85.0, 84.0, 87.0), (86.0, 84.0, 87.0)])
    page = _page(tmp_path)
    assert _claim(page, "hard distillation > no distillation") == "holds"        # 85 vs 81: 4 > 2
    assert _claim(page, "soft distillation > no distillation") == "tie"          # 82 vs 81: 1 <= 1.5
    assert _claim(page, "hard distillation > soft distillation") == "holds"      # 85 vs 82: 3 > 1.5
    assert _claim(page, "hard distillation: fusion ≥ class head") == "tie"
    assert _claim(page, "hard distillation: fusion ≥ distillation head") == "reversed"
    line = next(l for l in page.splitlines() if l.startswith("| hard distillation > no distillation ("))
    assert "| 85.00 ± 1.00 (n=3) | 81.00 ± 1.00 (n=3) | +4.00 | 2.00 |" in line
    assert results.RULE in page and "Δ > spread" in results.RULE


def test_missing_rows_and_single_seeds(tmp_path):
    _run(tmp_path, "student_none", 0, 81.0, model="deit_pico_patch7_28")
    _seeds(tmp_path, "student_hard", [(84.0, 84.0, 84.0), (85.0, 84.0, 84.0)])
    page = _page(tmp_path)
    assert "| 1 | **81.00** |" in _row_line(page, results.LABELS["student_none"])
    for row in ("teacher_resnet", "teacher_vit", "student_soft", "student_hard_vit_teacher"):
        assert "| 0 | not run yet |" in _row_line(page, results.LABELS[row]), row
    assert _claim(page, "hard distillation > no distillation") == "1 seed: not decided"
    assert _claim(page, "hard distillation > soft distillation") == "not run yet"
    assert "(`teacher_resnet_matched` vs `teacher_vit`): not run yet." in page
    # a row without runs still shows what it trains and the command that runs it
    assert "| `resnet14_32` |  | 3 | 0 | not run yet |" in _row_line(page, results.LABELS["teacher_resnet"])
    assert ("`deit train --config configs/fashion/student_soft.yaml --seed 0 --output "
            f"{tmp_path}/student_soft/seed0 --teacher-checkpoint {tmp_path}/teacher_resnet/seed0/best.pth`") in page


def test_table2_teachers_side_by_side_and_matched(tmp_path):
    _seeds(tmp_path, "teacher_resnet_matched", [83.0, 84.0, 85.0], model="resnet14_32", epochs=1)
    _seeds(tmp_path, "teacher_vit", [82.0, 83.0, 84.0], model="deit_pico_patch4_32")
    _seeds(tmp_path, "student_hard_matched_cnn_teacher", [(85.0, 1, 1), (86.0, 1, 1), (87.0, 1, 1)])
    _seeds(tmp_path, "student_hard_vit_teacher", [(80.0, 1, 1), (81.0, 1, 1), (82.0, 1, 1)])
    page = _page(tmp_path)
    assert "| `teacher_resnet_matched` | " in page and "| 3 | 84.00 ± 1.00 |" in page
    assert "`teacher_resnet_matched` − `teacher_vit` = +1.00 points (means): **matched**" in page
    assert _claim(page, "CNN teacher > transformer teacher at matched teacher accuracy (students' fusion)") == "holds"

    (tmp_path / "teacher_vit" / "seed0" / "summary.json").write_text(json.dumps({"final": {"val_acc1": 78.0}}))
    page = _page(tmp_path)  # transformer teacher 81.67: 2.33 points below
    assert "= +2.33 points (means): **not matched**" in page
    assert _claim(page, "CNN teacher > transformer teacher at matched teacher accuracy (students' fusion)") == \
        "holds (teachers not matched)"


def test_long_run_one_seed_with_the_student_teacher_gap(tmp_path):
    _run(tmp_path, "teacher_resnet_long", 0, 91.0, model="resnet14_32", epochs=10)
    _run(tmp_path, "student_hard_long", 0, 89.5, 89.0, 89.25, epochs=40, elapsed_s=3600.0)
    page = _page(tmp_path)
    line = _row_line(page, results.LABELS["student_hard_long"])
    assert "| 40 | 0 | **89.50** | 89.00 | 89.25 | 90.00 | 91.00 | -1.50 |" in line
    assert line.endswith("| 60.0 min |")  # no budget note: the long rows are outside it
    assert "### Long run (one seed: seed 0; no spread, so no verdict)" in page


def test_page_is_rewritten_between_markers_and_curves_copied(tmp_path):
    _run(tmp_path / "runs", "student_none", 0, 88.0, model="deit_pico_patch7_28")
    page = tmp_path / "docs" / "RESULTS.md"
    page.parent.mkdir()
    page.write_text("# Results\nintro\n<!-- results:start -->\nSTALE TABLE\n<!-- results:end -->\nfooter\n")
    assert results.main([str(tmp_path / "runs"), "--output", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Results\nintro\n") and text.endswith("footer\n") and "STALE" not in text
    assert "**88.00**" in text and "([curves](results/student_none.png))" in text
    assert (tmp_path / "docs" / "results" / "student_none.png").exists()


def test_script_runs_as_documented(tmp_path):
    """``python scripts/results.py RUNS --output PAGE``, as scripts/fashion_results.py calls it."""
    _run(tmp_path / "runs", "student_none", 0, 88.0, model="deit_pico_patch7_28")
    page = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "runs"), "--output", str(page)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "generated by `python scripts/results.py`" in page.read_text() and "**88.00**" in page.read_text()


# --- the runner -------------------------------------------------------------------------------

def test_commands_substitute_the_seed_and_the_teacher_of_the_same_seed():
    assert runner.Run("teacher_resnet", 2).train_args() == [
        "train", "--config", "configs/fashion/teacher_resnet.yaml", "--seed", "2",
        "--output", "runs/fashion/teacher_resnet/seed2"]
    assert runner.Run("student_hard_vit_teacher", 1).train_args()[-2:] == [
        "--teacher-checkpoint", "runs/fashion/teacher_vit/seed1/best.pth"]
    for student, teacher in runner.TEACHER_ROW.items():
        assert runner.ROWS.index(teacher) < runner.ROWS.index(student)
        config = yaml.safe_load((REPO / "configs" / "fashion" / f"{student}.yaml").read_text())
        teacher_config = yaml.safe_load((REPO / "configs" / "fashion" / f"{teacher}.yaml").read_text())
        assert config["teacher_model"] == teacher_config["model"], student
    assert {p.stem for p in (REPO / "configs" / "fashion").glob("*.yaml")} == set(runner.ROWS)


def test_plan_orders_teachers_first_seed_by_seed_and_long_rows_once():
    todo = runner.plan(["student_hard_vit_teacher", "student_hard_long"], [0, 1])
    assert [(r.row, r.seed) for r in todo] == [
        ("teacher_vit", 0), ("student_hard_vit_teacher", 0), ("teacher_vit", 1), ("student_hard_vit_teacher", 1),
        ("teacher_resnet_long", 0), ("student_hard_long", 0)]


class FakeSubprocess:
    """Stands in for ``subprocess.run`` in the runner: records the commands, trains nothing."""

    def __init__(self, fail_on=None):
        self.commands, self.fail_on = [], fail_on

    def __call__(self, command, cwd=None, **kwargs):
        self.commands.append(command)
        failed = self.fail_on is not None and self.fail_on in " ".join(command)
        return subprocess.CompletedProcess(command, 1 if failed else 0)


def test_runner_skips_done_runs_resumes_interrupted_ones(tmp_path, monkeypatch, capsys):
    runs, page = tmp_path / "runs", tmp_path / "RESULTS.md"
    _run(runs, "teacher_resnet", 0, 88.0, model="resnet14_32")  # done: summary.json
    (runs / "student_hard" / "seed0").mkdir(parents=True)
    (runs / "student_hard" / "seed0" / "last.pth").write_bytes(b"")  # interrupted: last.pth only
    fake = FakeSubprocess()
    monkeypatch.setattr(runner.subprocess, "run", fake)
    assert runner.main(["--seeds", "0", "1", "student_hard", "--runs", str(runs), "--page", str(page)]) == 0
    config = "configs/fashion/student_hard.yaml"
    deit = [sys.executable, "-m", "deit", "train"]
    assert fake.commands[:3] == [
        [*deit, "--config", config, "--seed", "0", "--output", f"{runs}/student_hard/seed0",
         "--teacher-checkpoint", f"{runs}/teacher_resnet/seed0/best.pth", "--resume"],
        [*deit, "--config", "configs/fashion/teacher_resnet.yaml", "--seed", "1", "--output",
         f"{runs}/teacher_resnet/seed1"],
        [*deit, "--config", config, "--seed", "1", "--output", f"{runs}/student_hard/seed1",
         "--teacher-checkpoint", f"{runs}/teacher_resnet/seed1/best.pth"]]
    assert fake.commands[3] == [sys.executable, str(SCRIPT), str(runs), "--configs", "configs/fashion",
                                "--output", str(page)]
    assert len(fake.commands) == 4
    out = capsys.readouterr().out
    assert "teacher_resnet seed 0: done" in out and "skipped" in out
    assert all(f"$ {shlex.join(command)}" in out for command in fake.commands)  # each printed before it runs


def test_runner_stops_at_the_first_failed_run(tmp_path, monkeypatch):
    fake = FakeSubprocess(fail_on="teacher_vit/seed0")
    monkeypatch.setattr(runner.subprocess, "run", fake)
    with pytest.raises(SystemExit, match="(?s)teacher_vit seed 0 failed .*run this script again"):
        runner.main(["student_hard_vit_teacher", "--seeds", "0", "--runs", str(tmp_path / "runs")])
    assert len(fake.commands) == 1


def test_runner_rejects_unknown_rows_and_seeds(capsys):
    for argv in (["student_harder"], ["--seeds", "x"]):
        with pytest.raises(SystemExit):
            runner.main(argv)
    err = capsys.readouterr().err
    assert "unknown row(s) student_harder" in err and "--seeds needs at least one seed" in err


@pytest.mark.slow
def test_runner_end_to_end_on_tiny_runs(tmp_path):
    """The transformer-teacher chain, seed 0, on 256 images for 1 epoch: teacher then student
    (a ViT teacher at 28 px), the page; a second call skips the finished run and resumes the
    one without summary.json."""
    configs, runs, page = tmp_path / "configs", tmp_path / "runs", tmp_path / "RESULTS.md"
    configs.mkdir()
    for path in (REPO / "configs" / "fashion").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        config.update(train_subset=256, val_subset=256, epochs=1, warmup_epochs=0, batch_size=64)
        (configs / path.name).write_text(yaml.safe_dump(config))
    page.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    argv = [sys.executable, str(RUNNER), "--seeds", "0", "student_hard_vit_teacher", "--runs", str(runs),
            "--configs", str(configs), "--page", str(page)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("\n$ ") == 3  # two runs and the page, each command printed
    for row in ("teacher_vit", "student_hard_vit_teacher"):
        assert (runs / row / "seed0" / "summary.json").is_file(), row
    line = _row_line(page.read_text(), results.LABELS["student_hard_vit_teacher"])
    assert "| `deit_pico_patch4_32` (`teacher_vit`) | 1 | 1 | **" in line and "| 256 |" in line

    (runs / "student_hard_vit_teacher" / "seed0" / "summary.json").unlink()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "teacher_vit seed 0: done" in again.stdout and "student_hard_vit_teacher seed 0: resumed" in again.stdout
    assert "--resume" in again.stdout and (runs / "student_hard_vit_teacher" / "seed0" / "summary.json").is_file()
    assert "| 1 | **" in _row_line(page.read_text(), results.LABELS["student_hard_vit_teacher"])
