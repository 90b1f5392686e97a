"""Build ``docs/RESULTS.md`` from the Fashion-MNIST runs of ``scripts/fashion_results.sh``.

``python scripts/results.py runs/fashion --output docs/RESULTS.md`` reads each run's
``summary.json``, ``config.yaml`` and ``curves.png`` (written by ``deit train``), copies the
curves next to the page and checks the paper's orderings one by one:

* Table 3: hard distillation > soft distillation ≈ no distillation;
* Table 3: the fusion of the two heads ≥ each head alone;
* Table 2: a convnet teacher gives a better student than a transformer teacher;
* the target: DeiT⚗ fusion ≥ 92 % and ≥ 1.0 point above the no-distillation control.

Every check is reported as it came out, held or not. A tool of this repository, not of the
library: it needs only PyYAML and the files the runs wrote.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RUNS = ("teacher_convnext", "student_none", "student_soft", "student_hard", "student_hard_deit_teacher")
LABELS = {
    "teacher_convnext": "ConvNeXt teacher",
    "student_none": "DeiT, no distillation (control)",
    "student_soft": "DeiT⚗ soft distillation (ConvNeXt teacher)",
    "student_hard": "DeiT⚗ hard distillation (ConvNeXt teacher)",
    "student_hard_deit_teacher": "DeiT⚗ hard distillation (DeiT teacher)",
}
SOFT_EQUALS_NONE_POINTS = 1.0  # "≈": within one point of top-1
TARGET_ACC, TARGET_GAIN = 92.0, 1.0


@dataclass
class Run:
    name: str
    config: dict[str, Any]
    summary: dict[str, Any]

    @property
    def final(self) -> dict[str, float]:
        return self.summary.get("final", {})

    @property
    def top1(self) -> float:
        return float(self.final["val_acc1"])

    def head(self, head: str) -> float | None:
        value = self.final.get(f"val_{head}_acc1")
        return None if value is None else float(value)


def load_runs(root: Path) -> dict[str, Run]:
    runs = {}
    for name in RUNS:
        directory = root / name
        if not (directory / "summary.json").exists():
            continue
        config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
        runs[name] = Run(name, config, json.loads((directory / "summary.json").read_text()))
    return runs


def check_orderings(runs: dict[str, Run]) -> list[tuple[str, bool | None, str]]:
    """``(claim, held, evidence)``; ``held`` is None when a run is missing."""
    def get(name: str) -> Run | None:
        return runs.get(name)

    checks: list[tuple[str, bool | None, str]] = []
    none, soft, hard, deit_t = (get(n) for n in ("student_none", "student_soft", "student_hard",
                                                 "student_hard_deit_teacher"))
    if hard and soft:
        checks.append(("Table 3: hard distillation > soft distillation (fusion top-1)", hard.top1 > soft.top1,
                       f"{hard.top1:.2f} vs {soft.top1:.2f}"))
    if soft and none:
        diff = soft.top1 - none.top1
        checks.append((f"Table 3: soft distillation ≈ no distillation (within {SOFT_EQUALS_NONE_POINTS:.1f} point)",
                       abs(diff) <= SOFT_EQUALS_NONE_POINTS, f"{soft.top1:.2f} vs {none.top1:.2f} ({diff:+.2f})"))
    if hard and none:
        checks.append(("Table 3: hard distillation > no distillation", hard.top1 > none.top1,
                       f"{hard.top1:.2f} vs {none.top1:.2f}"))
    for run in (r for r in (soft, hard, deit_t) if r):
        cls, dist = run.head("cls"), run.head("dist")
        if cls is not None and dist is not None:
            checks.append((f"Table 3: fusion ≥ class head and ≥ distillation head ({LABELS[run.name]})",
                           run.top1 >= cls and run.top1 >= dist,
                           f"fusion {run.top1:.2f}, cls {cls:.2f}, dist {dist:.2f}"))
    if hard and deit_t:
        checks.append(("Table 2: convnet teacher > transformer teacher (student fusion top-1)",
                       hard.top1 > deit_t.top1, f"{hard.top1:.2f} vs {deit_t.top1:.2f}"))
    if hard and none:
        checks.append((f"target: DeiT⚗ fusion ≥ {TARGET_ACC:.0f} % and ≥ {TARGET_GAIN:.1f} point above the control",
                       hard.top1 >= TARGET_ACC and hard.top1 - none.top1 >= TARGET_GAIN,
                       f"{hard.top1:.2f} %, {hard.top1 - none.top1:+.2f} points"))
    return checks


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def results_table(runs: dict[str, Run], curves_dir: str) -> str:
    lines = ["| run | model | teacher | epochs | test top-1 (fusion) | cls head | dist head | dist head = teacher "
             "| train img/s | wall time | curves |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        teacher = run.config.get("teacher_model") if run.config.get("distillation_type", "none") != "none" else ""
        lines.append(
            f"| {LABELS[name]} | `{run.config.get('model')}` | {teacher or ''} | {run.config.get('epochs')} | "
            f"**{run.top1:.2f}** | {_fmt(run.head('cls'))} | {_fmt(run.head('dist'))} | "
            f"{_fmt(run.final.get('val_dist_teacher_agreement') or run.final.get('val_teacher_agreement'), 1)} | "
            f"{run.summary.get('train_images_per_s', float('nan')):.0f} | "
            f"{run.summary.get('wall_time_s', 0) / 60:.1f} min"
            f" | [png]({curves_dir}/{name}.png) |")
    return "\n".join(lines)


def checks_table(checks: list[tuple[str, bool | None, str]]) -> str:
    lines = ["| claim | held? | numbers |", "|---|---|---|"]
    for claim, held, evidence in checks:
        lines.append(f"| {claim} | {'yes' if held else 'NO'} | {evidence} |")
    return "\n".join(lines)


def copy_curves(runs: dict[str, Run], root: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in runs:
        source = root / name / "curves.png"
        if source.exists():
            shutil.copyfile(source, dest / f"{name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding the runs (runs/fashion)")
    parser.add_argument("--output", type=Path, help="markdown file whose generated part is rewritten")
    args = parser.parse_args(argv)
    runs = load_runs(args.root)
    if not runs:
        raise SystemExit(f"no finished runs (summary.json) under {args.root}; expected some of {', '.join(RUNS)}")
    curves = Path("results")
    text = "## Results (generated by `python scripts/results.py`)\n\n" + results_table(runs, str(curves)) + \
        "\n\n### The paper's claims, one by one\n\n" + checks_table(check_orderings(runs)) + "\n"
    if args.output is None:
        print(text)
        return 0
    copy_curves(runs, args.root, args.output.parent / curves)
    marker_start, marker_end = "<!-- results:start -->", "<!-- results:end -->"
    page = args.output.read_text() if args.output.exists() else f"{marker_start}\n{marker_end}\n"
    if marker_start not in page or marker_end not in page:
        raise SystemExit(f"{args.output} lacks the {marker_start} / {marker_end} markers around the generated part")
    head, rest = page.split(marker_start, 1)
    tail = rest.split(marker_end, 1)[1]
    args.output.write_text(f"{head}{marker_start}\n{text}{marker_end}{tail}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
