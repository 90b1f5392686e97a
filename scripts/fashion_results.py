"""Run the Fashion-MNIST runs of ``docs/RESULTS.md`` that are missing, then rebuild its tables.

    python scripts/fashion_results.py                          # every row, seeds 0 1 2; long rows: seed 0
    python scripts/fashion_results.py --seeds 0 student_hard   # some rows and seeds (and their teachers)
    python scripts/fashion_results.py --dry-run                # what is done, interrupted, still to run

A row is a YAML file ``configs/fashion/<row>.yaml``; a run is a row and a seed. The seed is not
in the YAML because the paths depend on it: each run is

    deit train --config configs/fashion/<row>.yaml --seed K --output runs/fashion/<row>/seedK
        [--teacher-checkpoint runs/fashion/<teacher row>/seedK/best.pth]

with, for a student, the ``best.pth`` of its teacher row (:data:`TEACHER_ROW`) of the same
seed. Runs go seed by seed, teachers before their students, each alone in a subprocess (two
training processes on 2 cores oversubscribe OpenMP). The long rows (:data:`LONG_ROWS`) run
once, seed :data:`LONG_SEED`, after all the others.

Resumable across sessions: a run whose ``summary.json`` exists is done and skipped; one with
``last.pth`` but no ``summary.json`` was interrupted and continues with ``--resume``; delete a
run's folder to run it again. Paths are relative to the repository root. Then the page is
rebuilt by ``scripts/results.py``.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SEEDS = (0, 1, 2)
SEEDED_ROWS = (  # dependency order: every teacher row before its students
    "teacher_resnet", "teacher_resnet_matched", "teacher_vit",
    "student_none", "student_soft", "student_hard", "student_hard_matched_cnn_teacher", "student_hard_vit_teacher",
)
LONG_ROWS = ("teacher_resnet_long", "student_hard_long")  # one seed, outside the per-run budget
LONG_SEED = 0
ROWS = SEEDED_ROWS + LONG_ROWS
TEACHER_ROW = {  # student row -> the row whose best.pth of the same seed is its teacher
    "student_soft": "teacher_resnet",
    "student_hard": "teacher_resnet",
    "student_hard_matched_cnn_teacher": "teacher_resnet_matched",
    "student_hard_vit_teacher": "teacher_vit",
    "student_hard_long": "teacher_resnet_long",
}


@dataclass(frozen=True)
class Run:
    """One row trained with one seed; ``runs`` and ``configs`` as given (relative to the repository)."""
    row: str
    seed: int
    runs: Path = Path("runs/fashion")
    configs: Path = Path("configs/fashion")

    @property
    def output(self) -> Path:
        return self.runs / self.row / f"seed{self.seed}"

    @property
    def teacher_checkpoint(self) -> Path | None:
        teacher = TEACHER_ROW.get(self.row)
        return None if teacher is None else self.runs / teacher / f"seed{self.seed}" / "best.pth"

    def train_args(self) -> list[str]:
        """The ``deit`` arguments of the run: ``train --config … --seed K --output …``."""
        args = ["train", "--config", str(self.configs / f"{self.row}.yaml"), "--seed", str(self.seed),
                "--output", str(self.output)]
        if self.teacher_checkpoint is not None:
            args += ["--teacher-checkpoint", str(self.teacher_checkpoint)]
        return args

    def state(self) -> str:
        """``done`` (summary.json), ``interrupted`` (last.pth only) or ``missing``."""
        folder = REPO / self.output
        if (folder / "summary.json").is_file():
            return "done"
        return "interrupted" if (folder / "last.pth").is_file() else "missing"

    def command(self) -> list[str]:
        """What runs: this Python's ``deit``, ``--resume`` added to an interrupted run."""
        resume = ["--resume"] if self.state() == "interrupted" else []
        return [sys.executable, "-m", "deit", *self.train_args(), *resume]


def plan(rows: list[str], seeds: list[int], runs: Path = Path("runs/fashion"),
         configs: Path = Path("configs/fashion")) -> list[Run]:
    """Every run of ``rows`` and of the teacher rows they need, in the order they must run."""
    wanted = set(rows) | {TEACHER_ROW[row] for row in rows if row in TEACHER_ROW}
    ordered = [row for row in ROWS if row in wanted]
    seeded = [Run(row, seed, runs, configs) for seed in dict.fromkeys(seeds) for row in ordered
              if row not in LONG_ROWS]
    return seeded + [Run(row, LONG_SEED, runs, configs) for row in ordered if row in LONG_ROWS]


def run_all(todo: list[Run], dry_run: bool = False) -> None:
    """Run the runs not done yet, one after the other; stop at the first that fails."""
    for number, run in enumerate(todo, 1):
        state = run.state()
        label = f"[{number}/{len(todo)}] {run.row} seed {run.seed}"
        if state == "done":
            print(f"{label}: done ({run.output / 'summary.json'}), skipped", flush=True)
            continue
        command = run.command()
        print(f"{label}: {'resumed' if state == 'interrupted' else 'new'}\n$ {shlex.join(command)}", flush=True)
        if dry_run:
            continue
        code = subprocess.run(command, cwd=REPO).returncode
        if code != 0:
            raise SystemExit(f"{run.row} seed {run.seed} failed (exit code {code}): {shlex.join(command)}\n"
                             "Fix the cause and run this script again: finished runs are skipped, this one resumes "
                             "from its last.pth if it wrote one.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("rows", nargs="*", metavar="ROW",
                        help=f"rows to run (their teacher rows too); default: all of {', '.join(ROWS)}")
    parser.add_argument("--seeds", nargs="+", default=[str(seed) for seed in SEEDS], metavar="K",
                        help=f"seeds of the seeded rows (default: {' '.join(map(str, SEEDS))}); the long rows "
                             f"always run seed {LONG_SEED} only")
    parser.add_argument("--runs", type=Path, default=Path("runs/fashion"),
                        help="folder of the runs, relative to the repository root (default: runs/fashion)")
    parser.add_argument("--configs", type=Path, default=Path("configs/fashion"),
                        help="folder of the row YAMLs, relative to the repository root (default: configs/fashion)")
    parser.add_argument("--page", type=Path, default=Path("docs/RESULTS.md"),
                        help="page whose tables are rebuilt, relative to the repository root "
                             "(default: docs/RESULTS.md)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands, run nothing")
    args = parser.parse_args(argv)
    # `--seeds 0 1 student_hard`: argparse gives --seeds every word; the first non-number starts the rows
    words = args.seeds
    count = next((i for i, word in enumerate(words) if not word.isdigit()), len(words))
    if count == 0:
        parser.error(f"--seeds needs at least one seed (a number >= 0), got {words[0]!r}")
    seeds, rows = [int(word) for word in words[:count]], [*words[count:], *args.rows]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; expected some of: {', '.join(ROWS)} "
                     f"(the YAML files of {args.configs})")
    todo = plan(rows or list(ROWS), seeds, args.runs, args.configs)
    if any(run.row in LONG_ROWS for run in todo) and seeds != [LONG_SEED]:
        print(f"note: the long rows ({', '.join(LONG_ROWS)}) run seed {LONG_SEED} only", flush=True)
    run_all(todo, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    rebuild = [sys.executable, str(REPO / "scripts" / "results.py"), str(args.runs), "--configs", str(args.configs),
               "--output", str(args.page)]
    print(f"tables of {args.page}\n$ {shlex.join(rebuild)}", flush=True)
    return subprocess.run(rebuild, cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
