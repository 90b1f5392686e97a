"""Build ``docs/RESULTS.md`` from the Fashion-MNIST runs of ``scripts/fashion_results.py``.

``python scripts/results.py runs/fashion --output docs/RESULTS.md`` reads every run
``runs/fashion/<row>/seed<k>/`` that finished (``summary.json``: the last epoch's test top-1
of the fusion / class / distillation heads and the teacher agreement), its ``config.yaml``
(model, epochs, teacher) and the last row of its ``metrics.csv`` (``elapsed_s`` and
``images_seen``: they count every invocation of a resumed run, ``summary.json``'s wall time
only the last one). Between the page's markers it writes:

* per row, the mean ± sample standard deviation over the seeds present (n given), the
  wall time and the exact command of one seed; a row without runs is "not run yet";
* the two teachers of the paper's Table 2 comparison side by side, "matched" or not;
* the claims of the paper's Tables 2 and 3, each decided by :func:`verdict`;
* the long runs (one seed), with the student - teacher gap.

The rows, their teachers and the commands come from ``scripts/fashion_results.py``. A tool of
this repository, not of the library: it needs only PyYAML and the files the runs wrote.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is no package: the runner's row table
from fashion_results import LONG_ROWS, LONG_SEED, REPO, ROWS, SEEDED_ROWS, SEEDS, TEACHER_ROW, Run  # noqa: E402

LABELS = {
    "teacher_resnet": "CNN teacher",
    "teacher_resnet_matched": "CNN teacher, matched to the transformer teacher",
    "teacher_vit": "transformer teacher (plain ViT)",
    "student_none": "DeiT, no distillation (control)",
    "student_soft": "DeiT⚗ soft distillation, CNN teacher",
    "student_hard": "DeiT⚗ hard distillation, CNN teacher",
    "student_hard_matched_cnn_teacher": "DeiT⚗ hard distillation, matched CNN teacher",
    "student_hard_vit_teacher": "DeiT⚗ hard distillation, transformer teacher",
    "teacher_resnet_long": "CNN teacher, long",
    "student_hard_long": "DeiT⚗ hard distillation, long CNN teacher",
}
HEADS = {"fusion": "val_acc1", "cls": "val_cls_acc1", "dist": "val_dist_acc1"}  # summary.json "final" keys
BUDGET_S = 5 * 60  # per seeded run, on 2 cores
MATCH_POINTS = 1.0  # two teachers "match" when their mean top-1 differ by at most this
MATCHED_TEACHERS = ("teacher_resnet_matched", "teacher_vit")  # the paper's Table 2 comparison: CNN, transformer

HOLDS, REVERSED, TIE, ONE_SEED, NOT_RUN = "holds", "reversed", "tie", "1 seed: not decided", "not run yet"
RULE = (
    "**How a claim is decided.** A claim \"A > B\" (or \"A ≥ B\") compares the per-seed test top-1 of two sets "
    "of runs. Δ = mean(A) − mean(B) and spread = std(A) + std(B), where std is the sample standard deviation "
    "over the seeds (n − 1 in the denominator). **holds**: Δ > spread; **reversed**: −Δ > spread; **tie**: "
    "|Δ| ≤ spread. With fewer than 2 seeds on either side: **1 seed: not decided**; without any run on a side: "
    "**not run yet**. For a \"≥\" claim a tie does not contradict the paper; it only shows no gain beyond the "
    "seeds' spread.")


@dataclass(frozen=True)
class Claim:
    text: str
    paper: str
    a: tuple[str, str]  # (row, head of HEADS)
    b: tuple[str, str]
    teachers_matched: bool = False  # the claim assumes MATCHED_TEACHERS of about equal top-1


CLAIMS = (
    Claim("hard distillation > no distillation", "Table 3: yes",
          ("student_hard", "fusion"), ("student_none", "fusion")),
    Claim("soft distillation > no distillation", "Table 3: no gain",
          ("student_soft", "fusion"), ("student_none", "fusion")),
    Claim("hard distillation > soft distillation", "Table 3: yes",
          ("student_hard", "fusion"), ("student_soft", "fusion")),
    Claim("hard distillation: fusion ≥ class head", "Table 3: yes",
          ("student_hard", "fusion"), ("student_hard", "cls")),
    Claim("hard distillation: fusion ≥ distillation head", "Table 3: yes",
          ("student_hard", "fusion"), ("student_hard", "dist")),
    Claim("CNN teacher > transformer teacher at matched teacher accuracy (students' fusion)", "Table 2: yes",
          ("student_hard_matched_cnn_teacher", "fusion"), ("student_hard_vit_teacher", "fusion"),
          teachers_matched=True),
)


# --- the runs ------------------------------------------------------------------------------

@dataclass
class SeedRun:
    seed: int
    summary: dict[str, Any]
    config: dict[str, Any]
    last_epoch: dict[str, str]  # the last row of metrics.csv ({} without one)

    def metric(self, key: str) -> float | None:
        """The last epoch's ``key``: summary.json's, else metrics.csv's (a run resumed after
        its last epoch's checkpoint writes a summary without the epoch's metrics)."""
        value = self.summary.get("final", {}).get(key)
        if value is None:
            value = self.last_epoch.get(key) or None
        return None if value is None else float(value)

    @property
    def wall_time_s(self) -> float:
        value = self.last_epoch.get("elapsed_s")
        return float(value) if value else float(self.summary.get("wall_time_s", "nan"))

    @property
    def images_seen(self) -> int | None:
        value = self.last_epoch.get("images_seen")
        return int(float(value)) if value else None


def _last_epoch(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def load_runs(root: Path) -> dict[str, list[SeedRun]]:
    """Every row of the runner, with its finished runs (``summary.json``) by seed; [] if none."""
    runs: dict[str, list[SeedRun]] = {}
    for row in ROWS:
        found = []
        for folder in (root / row).glob("seed*"):
            match = re.fullmatch(r"seed(\d+)", folder.name)
            if match is None or not (folder / "summary.json").is_file():
                continue
            config_path = folder / "config.yaml"
            config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
            found.append(SeedRun(int(match.group(1)), json.loads((folder / "summary.json").read_text()), config,
                                 _last_epoch(folder / "metrics.csv")))
        runs[row] = sorted(found, key=lambda run: run.seed)
    return runs


# --- statistics and the rule -----------------------------------------------------------------

@dataclass(frozen=True)
class Stat:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None below 2 values."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    def __str__(self) -> str:
        if not self.values:
            return ""
        return f"{self.mean:.2f}" if self.std is None else f"{self.mean:.2f} ± {self.std:.2f}"


def stat(runs: list[SeedRun], key: str) -> Stat:
    return Stat(tuple(v for v in (run.metric(key) for run in runs) if v is not None))


def verdict(a: Stat, b: Stat) -> str:
    """Claim "A > B": holds if mean(A) - mean(B) > std(A) + std(B), reversed if the opposite
    difference exceeds it, tie otherwise (:data:`RULE`); undecided below 2 seeds a side."""
    if not a.n or not b.n:
        return NOT_RUN
    if a.n < 2 or b.n < 2:
        return ONE_SEED
    delta, spread = a.mean - b.mean, a.std + b.std
    return HOLDS if delta > spread else REVERSED if -delta > spread else TIE


def teacher_match(runs: dict[str, list[SeedRun]]) -> tuple[str, float | None]:
    """("matched" | "not matched" | "not run yet", CNN - transformer teacher mean top-1)."""
    cnn, vit = (stat(runs[row], HEADS["fusion"]) for row in MATCHED_TEACHERS)
    if not cnn.n or not vit.n:
        return NOT_RUN, None
    delta = cnn.mean - vit.mean
    return ("matched" if abs(delta) <= MATCH_POINTS else "not matched"), delta


# --- the page ---------------------------------------------------------------------------------

def row_config(row: str, runs: list[SeedRun], configs: Path) -> dict[str, Any]:
    """What the row trains: a run's resolved config.yaml, else the row's YAML file (``configs``
    relative to the repository, as the runner's)."""
    if runs:
        return runs[0].config
    path = REPO / configs / f"{row}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def shown_seed(row: str, runs: list[SeedRun]) -> int:
    return runs[0].seed if runs else LONG_SEED if row in LONG_ROWS else SEEDS[0]


def _teacher(row: str, config: dict[str, Any]) -> str:
    if row not in TEACHER_ROW:
        return ""
    return f"`{config.get('teacher_model', '?')}` (`{TEACHER_ROW[row]}`)"


def _images(runs: list[SeedRun]) -> str:
    seen = {run.images_seen for run in runs if run.images_seen is not None}
    return f"{seen.pop():,}" if len(seen) == 1 else (f"{statistics.fmean(seen):,.0f} (mean)" if seen else "")


def _wall(row: str, runs: list[SeedRun]) -> str:
    if not runs:
        return ""
    mean_s = statistics.fmean(run.wall_time_s for run in runs)
    over = " (over the 5-min budget)" if row in SEEDED_ROWS and mean_s > BUDGET_S else ""
    return f"{mean_s / 60:.1f} min{over}"


def _agreement(runs: list[SeedRun]) -> str:
    dist = stat(runs, "val_dist_teacher_agreement")
    return str(dist if dist.n else stat(runs, "val_teacher_agreement"))


def _row_start(row: str, config: dict[str, Any]) -> str:
    return f"| {LABELS[row]} | `{config.get('model', '?')}` | {_teacher(row, config)} | {config.get('epochs', '?')}"


def results_table(runs: dict[str, list[SeedRun]], configs: Path) -> str:
    lines = ["| row | model | teacher (row) | epochs | n | test top-1 (fusion) | class head | distillation head "
             "| dist. head = teacher | images seen | wall time (mean) |", "|---" * 11 + "|"]
    for row in SEEDED_ROWS:
        found, config = runs[row], row_config(row, runs[row], configs)
        start = _row_start(row, config)
        if not found:
            lines.append(f"{start} | 0 | {NOT_RUN} | | | | | |")
            continue
        fusion, cls, dist = (stat(found, HEADS[head]) for head in ("fusion", "cls", "dist"))
        lines.append(f"{start} | {len(found)} | **{fusion}** | {cls} | {dist} | {_agreement(found)} | "
                     f"{_images(found)} | {_wall(row, found)} |")
    return "\n".join(lines)


def teachers_table(runs: dict[str, list[SeedRun]], configs: Path) -> str:
    lines = ["| row | teacher | model | epochs | n | test top-1 |", "|---|---|---|---|---|---|"]
    for row in ("teacher_resnet", *MATCHED_TEACHERS):
        config = row_config(row, runs[row], configs)
        top1 = stat(runs[row], HEADS["fusion"])
        lines.append(f"| `{row}` | {LABELS[row]} | `{config.get('model', '?')}` | {config.get('epochs', '?')} | "
                     f"{top1.n} | {top1 if top1.n else NOT_RUN} |")
    match, delta = teacher_match(runs)
    cnn, vit = MATCHED_TEACHERS
    if delta is None:
        lines.append(f"\nTeachers of the Table 2 comparison (`{cnn}` vs `{vit}`): {NOT_RUN}.")
    else:
        lines.append(f"\nTeachers of the Table 2 comparison: `{cnn}` − `{vit}` = {delta:+.2f} points (means): "
                     f"**{match}** (matched: within {MATCH_POINTS:.0f} point)."
                     + ("" if match == "matched" else " The student comparison then measures teacher accuracy too, "
                                                      "not only the teacher's architecture."))
    return "\n".join(lines)


def claims_table(runs: dict[str, list[SeedRun]]) -> str:
    lines = ["| claim: A vs B | paper | here | A | B | Δ = A − B | spread |", "|---|---|---|---|---|---|---|"]
    match, _ = teacher_match(runs)
    for claim in CLAIMS:
        a, b = (stat(runs[row], HEADS[head]) for row, head in (claim.a, claim.b))
        result = verdict(a, b)
        if claim.teachers_matched and match == "not matched":
            result += " (teachers not matched)"
        delta = f"{a.mean - b.mean:+.2f}" if a.n and b.n else ""
        spread = f"{a.std + b.std:.2f}" if a.std is not None and b.std is not None else ""
        sides = [f"{stat_} (n={stat_.n})" if stat_.n else NOT_RUN for stat_ in (a, b)]
        names = " vs ".join(f"`{row}` {head}" for row, head in (claim.a, claim.b))
        lines.append(f"| {claim.text} ({names}) | {claim.paper} | **{result}** | {sides[0]} | {sides[1]} | "
                     f"{delta} | {spread} |")
    return "\n".join(lines)


def long_table(runs: dict[str, list[SeedRun]], configs: Path) -> str:
    lines = ["| row | model | teacher (row) | epochs | seed | test top-1 (fusion) | class head | distillation head | "
             "dist. head = teacher | teacher top-1 | student − teacher | images seen | wall time |",
             "|---" * 13 + "|"]
    for row in LONG_ROWS:
        found, config = runs[row], row_config(row, runs[row], configs)
        start = _row_start(row, config)
        if not found:
            lines.append(f"{start} | {LONG_SEED} | {NOT_RUN} | | | | | | | |")
            continue
        run = found[0]
        fusion, cls, dist = (stat([run], HEADS[head]) for head in ("fusion", "cls", "dist"))
        teacher_top1, gap = "", ""
        if row in TEACHER_ROW:
            teacher = [t for t in runs[TEACHER_ROW[row]] if t.seed == run.seed]
            teacher_stat = stat(teacher, HEADS["fusion"])
            teacher_top1 = str(teacher_stat) if teacher_stat.n else NOT_RUN
            gap = f"{fusion.mean - teacher_stat.mean:+.2f}" if teacher_stat.n else ""
        lines.append(f"{start} | {run.seed} | **{fusion}** | {cls} | {dist} | {_agreement([run])} | {teacher_top1} | "
                     f"{gap} | {_images([run])} | {_wall(row, [run])} |")
    return "\n".join(lines)


def commands_list(runs: dict[str, list[SeedRun]], root: Path, configs: Path, curves_dir: str | None) -> str:
    lines = []
    for row in ROWS:
        seed = shown_seed(row, runs[row])
        command = "deit " + shlex.join(Run(row, seed, root, configs).train_args())
        curves = f" ([curves]({curves_dir}/{row}.png))" if curves_dir and runs[row] else ""
        lines.append(f"- `{row}`, seed {seed}: `{command}`{curves}")
    return "\n".join(lines)


def build_page(runs: dict[str, list[SeedRun]], root: Path, configs: Path, curves_dir: str | None = None) -> str:
    seeds = " ".join(map(str, SEEDS))
    return "\n".join([
        "## Results (generated by `python scripts/results.py`)", "",
        f"Test top-1 (%) of the last epoch on the test set: mean ± std over the n seeds present "
        f"(std: sample standard deviation; a single value when n = 1). Seeds of `scripts/fashion_results.py`: "
        f"{seeds}. Wall time: the runs' `metrics.csv` (`elapsed_s` of the last epoch, across resumes).", "",
        results_table(runs, configs), "",
        "### Table 2 teachers, side by side", "",
        teachers_table(runs, configs), "",
        "### The paper's claims", "",
        RULE, "",
        claims_table(runs), "",
        f"### Long run (one seed: seed {LONG_SEED}; no spread, so no verdict)", "",
        long_table(runs, configs), "",
        "### Commands", "",
        "One seed per row; the other seeds differ only in `--seed` and the `seed<k>` folders "
        "(`scripts/fashion_results.py` runs them all).", "",
        commands_list(runs, root, configs, curves_dir), "",
    ])


def copy_curves(runs: dict[str, list[SeedRun]], root: Path, dest: Path) -> None:
    """Each row's curves.png of the seed its command shows, as ``dest/<row>.png``."""
    dest.mkdir(parents=True, exist_ok=True)
    for row, found in runs.items():
        source = root / row / f"seed{shown_seed(row, found)}" / "curves.png"
        if found and source.is_file():
            shutil.copyfile(source, dest / f"{row}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding the runs (runs/fashion)")
    parser.add_argument("--configs", type=Path, default=Path("configs/fashion"),
                        help="folder of the row YAMLs, for the commands shown (default: configs/fashion)")
    parser.add_argument("--output", type=Path, help="markdown file whose generated part is rewritten")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"note: {args.root} does not exist: every row is {NOT_RUN}", file=sys.stderr)
    runs = load_runs(args.root)
    curves = "results"
    text = build_page(runs, args.root, args.configs, curves if args.output is not None else None)
    if args.output is None:
        print(text)
        return 0
    marker_start, marker_end = "<!-- results:start -->", "<!-- results:end -->"
    page = args.output.read_text() if args.output.exists() else f"{marker_start}\n{marker_end}\n"
    if marker_start not in page or marker_end not in page:
        raise SystemExit(f"{args.output} lacks the {marker_start} / {marker_end} markers around the generated part")
    copy_curves(runs, args.root, args.output.parent / curves)
    head, rest = page.split(marker_start, 1)
    tail = rest.split(marker_end, 1)[1]
    args.output.write_text(f"{head}{marker_start}\n{text}{marker_end}{tail}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
